"""The fused q/k RoPE of eager attention computes the released op sequence's bits, forward and backward.

The reference is `apply_rope`, the released formulation op by op (bf16 cast, rotate_half by chunk, neg
and cat, two products and a sum in bf16, the class token concatenated back, cast to float). Equality is
checked on the bit patterns, so even the signs of zeros must match.
"""
import pytest
import torch
import torch.nn.functional as F

from openvtp.models.layers import Attention, RopeEmbedding, apply_rope, apply_rope_qkv


def released_attention(attn, x, sin, cos):
    B, N, C = x.shape
    q, k, v = attn.qkv(x).view(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
    return attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


def bits(t):
    return t.detach().view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize("prefix", [0, 1])
def test_fused_qkv_rope_matches_the_released_ops_bit_for_bit_even_signed_zeros(prefix):
    sin, cos = RopeEmbedding(16)(3, 5)
    qkv = torch.randn(2, prefix + 15, 3 * 3 * 16) * 3
    qkv[0, 0, :4] = 0.0
    qkv[0, 0, 4:8] = -0.0  # signed zeros must survive as the released ops leave them
    qkv.requires_grad_(True)
    q, k, v = qkv.view(2, prefix + 15, 3, 3, 16).permute(2, 0, 3, 1, 4)
    ref = torch.stack([apply_rope(q, sin, cos), apply_rope(k, sin, cos), v])
    g = torch.randn_like(ref)
    g[0, 1, 1, :, :3] = -0.0
    (g_ref,) = torch.autograd.grad(ref, qkv, g)
    out = torch.stack(apply_rope_qkv(qkv, sin, cos, num_heads=3))
    (g_out,) = torch.autograd.grad(out, qkv, g)
    assert torch.equal(bits(out), bits(ref))
    assert torch.equal(bits(g_out), bits(g_ref))


@pytest.mark.parametrize("prefix", [0, 1])
def test_attention_with_fused_qkv_rope_matches_the_released_ops_bit_for_bit(prefix):
    torch.manual_seed(1)
    attn = Attention(32, 2)
    sin, cos = RopeEmbedding(16)(4, 4)
    x = torch.randn(3, prefix + 16, 32, requires_grad=True)
    ref = released_attention(attn, x, sin, cos)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, *attn.parameters()], g)
    out = attn(x, (sin, cos))
    grads = torch.autograd.grad(out, [x, *attn.parameters()], g)
    assert torch.equal(bits(out), bits(ref))
    for a, b in zip(grads, ref_grads):
        assert torch.equal(bits(a), bits(b))
    with torch.inference_mode():
        assert torch.equal(bits(attn(x, (sin, cos))), bits(ref))


def test_q_and_k_alone_get_their_gradient():
    sin, cos = RopeEmbedding(8)(2, 2)
    qkv = torch.randn(1, 4, 3 * 16, requires_grad=True)
    q, k, v = apply_rope_qkv(qkv, sin, cos, num_heads=2)
    (g,) = torch.autograd.grad(q.sum(), qkv)
    assert g.view(1, 4, 3, 16)[:, :, 1:].abs().sum() == 0 and g.view(1, 4, 3, 16)[:, :, 0].abs().sum() > 0
