"""RoPE with fewer passes computes the released op sequence's bits, forward and backward.

The reference below is the released formulation, op by op (bf16 cast, rotate_half by chunk, neg and
cat, two products and a sum in bf16, the class token concatenated back, cast to float). Equality is
checked on the bit patterns, so even the signs of zeros must match.
"""
import pytest
import torch
import torch.nn.functional as F

from openvtp.models.layers import Attention, RopeEmbedding, apply_rope, apply_rope_qkv


def released_rope(x, sin, cos):
    dtype = x.dtype
    x = x.to(sin.dtype)
    prefix = x.shape[-2] - sin.shape[-2]
    rot = x[..., prefix:, :]
    x1, x2 = rot.chunk(2, dim=-1)
    rot = rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    if prefix:
        rot = torch.cat((x[..., :prefix, :], rot), dim=-2)
    return rot.to(dtype)


def released_attention(attn, x, sin, cos):
    B, N, C = x.shape
    q, k, v = attn.qkv(x).view(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = released_rope(q, sin, cos), released_rope(k, sin, cos)
    return attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


def bits(t):
    return t.detach().view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize("prefix", [0, 1])
def test_apply_rope_matches_the_released_ops_bit_for_bit(prefix):
    sin, cos = RopeEmbedding(16)(3, 5)
    x = torch.randn(2, 3, prefix + 15, 16) * 3
    x[0, 0, 0, :4] = 0.0
    x[0, 0, 0, 4:8] = -0.0  # signed zeros must survive as the released ops leave them
    x.requires_grad_(True)
    ref = released_rope(x, sin, cos)
    g = torch.randn_like(ref)
    g[1, 1, :, :3] = -0.0
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    out = apply_rope(x, sin, cos)
    (gx,) = torch.autograd.grad(out, x, g)
    assert torch.equal(bits(out), bits(ref))
    assert torch.equal(bits(gx), bits(gx_ref))


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
