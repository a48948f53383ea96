"""DinoHead: shapes, cosine logits, invariance to the scale of the prototypes."""

import torch

from openvtp.models.heads import DinoHead


def test_dino_head_shape_and_init():
    head = DinoHead(in_dim=32, out_dim=10, hidden_dim=64, bottleneck_dim=16)
    out = head(torch.randn(2, 5, 32))
    assert out.shape == (2, 5, 10)
    assert out.abs().max() <= 1 + 1e-5  # unit bottleneck against unit prototypes: cosines
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(64, 32), (64, 64), (16, 64), (10, 16)]
    assert all(m.bias is None or (m.bias == 0).all() for m in linears)
    assert head.last_layer.bias is None
    assert linears[0].weight.std().item() < 0.03


def test_dino_head_prototype_scale_does_not_matter():
    torch.manual_seed(0)
    head = DinoHead(in_dim=8, out_dim=6, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(3, 8)
    before = head(x)
    with torch.no_grad():
        head.last_layer.weight.mul_(torch.tensor([[0.1], [3.0], [7.0], [1.0], [0.5], [100.0]]))
    assert torch.allclose(head(x), before, atol=1e-6)
    with torch.no_grad():  # a direction change does matter, so the check above can fail
        head.last_layer.weight[0] = -head.last_layer.weight[0]
    assert not torch.allclose(head(x), before, atol=1e-3)


def test_dino_head_single_layer_and_gradients():
    head = DinoHead(in_dim=8, out_dim=5, bottleneck_dim=4, nlayers=1)
    head(torch.randn(4, 8)).sum().backward()
    assert all(p.grad is not None for p in head.parameters())
