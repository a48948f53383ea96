"""LightningDiT, flow-matching loss, ODE samplers, generation configs: small and fast."""
import math

import pytest
import torch

from openvtp.config.load import load_config, preset_names
from openvtp.errors import OpenVTPError
from openvtp.generation.config import GenerationConfig, SampleConfig, validate
from openvtp.generation.latents import load_latent_stats
from openvtp.generation.sample import (balanced_labels, integrate, sample_noise, timestep_grid, velocity_fn)
from openvtp.losses.flow import FlowMatchingLoss, interpolate, sample_timesteps
from openvtp.models.dit import DIT_PRESETS, LightningDiT, RotaryEmbedding2D, build_dit


def tiny_dit(patch_size=1, **kw) -> LightningDiT:
    args = dict(input_size=4, patch_size=patch_size, in_channels=6, hidden_size=32, depth=2, num_heads=2,
                num_classes=5)
    return LightningDiT(**{**args, **kw})


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Move every weight off DiT's init (adaLN-zero would make any two outputs trivially equal)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def inputs(b=3, c=6, s=4):
    return torch.randn(b, c, s, s), torch.rand(b), torch.tensor([0, 4, 2][:b])


@pytest.mark.parametrize("patch_size", [1, 2])
def test_dit_forward_shapes(patch_size):
    model = randomise(tiny_dit(patch_size))
    x, t, y = inputs()
    out = model(x, t, y)
    assert out.shape == x.shape
    assert model.pos_embed.shape == (1, (4 // patch_size) ** 2, 32)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_learn_sigma_returns_input_channels():
    model = randomise(tiny_dit(learn_sigma=True))
    assert model.out_channels == 12
    x, t, y = inputs()
    assert model(x, t, y).shape == x.shape


def test_adaln_zero_initial_output_is_zero():
    model = tiny_dit()
    x, t, y = inputs()
    assert torch.equal(model(x, t, y), torch.zeros_like(x))
    for block in model.blocks:  # the blocks start as the identity
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
    with torch.no_grad():
        model.final_layer.linear.bias.fill_(0.5)
    assert torch.allclose(model(x, t, y), torch.full_like(x, 0.5))


def test_size_presets_match_lightningdit():
    assert {k: DIT_PRESETS[f"dit-{k}-1"]["hidden_size"] for k in ("s", "b", "l", "xl")} == \
        {"s": 384, "b": 768, "l": 1024, "xl": 1152}
    assert (DIT_PRESETS["dit-xl-1"]["depth"], DIT_PRESETS["dit-xl-1"]["num_heads"]) == (28, 16)
    assert (DIT_PRESETS["dit-l-2"]["depth"], DIT_PRESETS["dit-l-2"]["num_heads"]) == (24, 16)
    assert DIT_PRESETS["dit-b-2"]["patch_size"] == 2
    model = build_dit("dit-tiny-2", input_size=8, in_channels=4, num_classes=3)
    assert model.patch_size == 2
    with pytest.raises(OpenVTPError):
        build_dit("dit-huge-1")


def test_cfg_scale_one_equals_conditional_output():
    model = randomise(tiny_dit()).eval()
    x, t, y = inputs()
    cond = model(x, t, y)
    assert torch.allclose(model.forward_with_cfg(x, t, y, 1.0), cond, atol=1e-5)
    uncond = model(x, t, torch.full_like(y, model.null_class))
    assert not torch.allclose(cond, uncond, atol=1e-3)
    guided = model.forward_with_cfg(x, t, y, 3.0)
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-4)
    # LightningDiT's released behaviour: only the first 3 channels guided
    three = model.forward_with_cfg(x, t, y, 3.0, guided_channels=3)
    assert torch.allclose(three[:, :3], guided[:, :3], atol=1e-5)
    assert torch.allclose(three[:, 3:], cond[:, 3:], atol=1e-5)
    # guidance interval: no guidance for samples whose t lies outside it
    t2 = torch.tensor([0.1, 0.5, 0.9])
    cond2, guided2 = model(x, t2, y), model.forward_with_cfg(x, t2, y, 3.0)
    inside = model.forward_with_cfg(x, t2, y, 3.0, interval=(0.3, 1.0))
    assert torch.allclose(inside[0], cond2[0], atol=1e-5) and torch.allclose(inside[1:], guided2[1:], atol=1e-5)


def test_rope_depends_on_relative_position_only():
    rope = RotaryEmbedding2D(head_dim=8, h=4, w=4)
    q, k = torch.randn(8), torch.randn(8)
    grid = lambda v: rope(v.expand(1, 1, 16, 8))[0, 0].view(4, 4, 8)  # noqa: E731
    rq, rk = grid(q), grid(k)
    assert torch.allclose(rq.norm(dim=-1), q.norm().expand(4, 4), atol=1e-5)  # rotations keep the norm
    d1 = rq[0, 1] @ rk[2, 3]  # offset (2, 2)
    d2 = rq[1, 0] @ rk[3, 2]  # same offset elsewhere
    d3 = rq[0, 0] @ rk[3, 1]  # another offset
    assert torch.allclose(d1, d2, atol=1e-5) and not torch.allclose(d1, d3, atol=1e-3)


# ---------------------------------------------------------------------------- flow loss


class Scaled(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x, t, y):
        return self.k * x


def test_interpolation_endpoints():
    x1, noise = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    xt, ut = interpolate(x1, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(xt[0], noise[0]) and torch.equal(xt[1], x1[1])
    assert torch.equal(ut, x1 - noise)


def test_flow_loss_hand_case():
    # x1 = 2, noise = 0, t = 0.5: x_t = 1, target velocity u = 2
    x1, noise, t, y = torch.full((2, 3, 2, 2), 2.0), torch.zeros(2, 3, 2, 2), torch.full((2,), 0.5), torch.zeros(2)
    loss = FlowMatchingLoss(cos_weight=0.5)
    same = loss(Scaled(1.0), x1, y, t=t, noise=noise)  # predicts 1: error 1, same direction
    assert same["flow_loss"].item() == pytest.approx(1.0) and same["cos_loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert same["loss"].item() == pytest.approx(1.0)
    opposite = loss(Scaled(-1.0), x1, y, t=t, noise=noise)  # predicts -1: error 3, opposite direction
    assert opposite["flow_loss"].item() == pytest.approx(9.0) and opposite["cos_loss"].item() == pytest.approx(2.0)
    assert opposite["loss"].item() == pytest.approx(9.0 + 0.5 * 2.0)


def test_timestep_sampling():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, "logit_normal", -0.75, 1.0, g)
    assert 0 < t.min() and t.max() < 1
    assert t.median().item() == pytest.approx(1 / (1 + math.exp(0.75)), abs=0.01)  # sigmoid(mu)
    u = sample_timesteps(20000, "uniform", generator=g)
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------------------- samplers


def test_timestep_grid_shift():
    assert torch.allclose(timestep_grid(5), torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    g = timestep_grid(251, 0.075)
    assert g[0] == 0 and g[-1] == pytest.approx(1.0) and (g.diff() > 0).all()
    assert g[125].item() == pytest.approx(0.075 * 0.5 / (1 - 0.925 * 0.5), rel=1e-3)
    assert (g < 0.5).float().mean() > 0.9  # most steps at the noisy end


@pytest.mark.parametrize("method", ["euler", "heun", "dopri5"])
@pytest.mark.parametrize("shift", [0.0, 0.075])
def test_constant_velocity_lands_exactly(method, shift):
    x0 = torch.randn(3, 2)
    c = torch.tensor([1.5, -2.0])
    x1 = integrate(lambda x, t: c.expand_as(x), x0, method, num_steps=7, shift=shift)
    assert torch.allclose(x1, x0 + c, atol=1e-5)


def test_samplers_on_linear_odes():
    x0, n = torch.ones(4), 11  # 10 intervals of h = 0.1
    h = 1 / (n - 1)
    grow = lambda x, t: x  # noqa: E731  x(1) = e x0
    assert torch.allclose(integrate(grow, x0, "euler", n), x0 * (1 + h) ** (n - 1))
    assert torch.allclose(integrate(grow, x0, "heun", n), x0 * (1 + h + h * h / 2) ** (n - 1))
    assert torch.allclose(integrate(grow, x0, "dopri5", n, rtol=1e-7, atol=1e-9), x0 * math.e, atol=1e-5)
    ramp = lambda x, t: (2 * t)[:, None].expand_as(x)  # noqa: E731  x(1) = x0 + 1
    x0 = torch.zeros(4, 1)
    assert torch.allclose(integrate(ramp, x0, "heun", n), x0 + 1, atol=1e-6)  # trapezoid: exact for linear v(t)
    assert torch.allclose(integrate(ramp, x0, "euler", n), x0 + 1 - h, atol=1e-6)  # left Riemann sum


def test_velocity_fn_guides_only_when_asked():
    model = randomise(tiny_dit()).eval()
    x, t, y = inputs()
    with torch.no_grad():
        plain = velocity_fn(model, y, SampleConfig(cfg_scale=1.0))(x, t)
        guided = velocity_fn(model, y, SampleConfig(cfg_scale=2.0))(x, t)
    assert torch.allclose(plain, model(x, t, y)) and not torch.allclose(plain, guided, atol=1e-3)


def test_balanced_labels_and_noise():
    labels = balanced_labels(23, 5)
    assert torch.bincount(labels).tolist() == [5, 5, 5, 4, 4]
    together = sample_noise([3, 7, 9], (2, 4, 4), seed=1)
    assert torch.equal(together[1], sample_noise([7], (2, 4, 4), seed=1)[0])  # batch-independent
    assert not torch.equal(together[1], sample_noise([7], (2, 4, 4), seed=2)[0])


# ---------------------------------------------------------------------------- configs and stats


def test_presets_load_and_validate():
    names = preset_names("dit-")
    assert {"dit-xl-1-vtp", "dit-b-1-ablation", "dit-demo"} <= set(names)
    for name in names:
        validate(load_config(GenerationConfig, name))
    xl = load_config(GenerationConfig, "dit-xl-1-vtp")
    assert (xl.model.arch, xl.train.steps, xl.train.batch, xl.sample.num_steps) == ("dit-xl-1", 100000, 1024, 250)
    assert (xl.sample.timestep_shift, xl.sample.cfg_scale, xl.optim.lr, xl.optim.beta2) == (0.075, 1.0, 2e-4, 0.95)
    b = load_config(GenerationConfig, "dit-b-1-ablation", ["sample.num_steps=20"])
    assert (b.model.arch, b.sample.method, b.sample.num_samples, b.sample.num_steps) == ("dit-b-1", "dopri5", 10000, 20)


@pytest.mark.parametrize("override", [
    "model.patch_size=3", "model.arch=dit-huge-1", "sample.method=rk4", "train.batch=0",
    "sample.cfg_interval_start=0.8", "model.num_heads=5", "flow.timestep_sampling=cosine",
])
def test_impossible_values_fail(override):
    cfg = load_config(GenerationConfig, "dit-demo", [override, "sample.cfg_interval_end=0.5"]
                      if "interval" in override else [override])
    with pytest.raises(OpenVTPError):
        validate(cfg)


def test_unknown_key_fails():
    with pytest.raises(OpenVTPError):
        load_config(GenerationConfig, "dit-demo", ["train.stepz=3"])


def test_released_stats_layout_loads_with_weights_only(tmp_path):
    stats = {"mean": torch.randn(1, 8, 1, 1), "std": torch.rand(1, 8, 1, 1) + 0.5}
    torch.save(stats, tmp_path / "latents_stats.pt")
    raw = torch.load(tmp_path / "latents_stats.pt", weights_only=True)
    assert set(raw) == {"mean", "std"}
    loaded = load_latent_stats(tmp_path)
    assert torch.equal(loaded["mean"], stats["mean"]) and torch.equal(loaded["std"], stats["std"])
    torch.save({"mean": torch.zeros(8), "std": torch.ones(8)}, tmp_path / "bad.pt")
    with pytest.raises(OpenVTPError):
        load_latent_stats(tmp_path / "bad.pt")
