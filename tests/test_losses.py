"""Hand-worked cases for the CLIP, DINO, Sinkhorn-Knopp, iBOT, KoLeo and GAN losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from openvtp.losses import (
    ClipLoss,
    DINOLoss,
    IBOTPatchLoss,
    KoLeoLoss,
    PatchDiscriminator,
    adaptive_weight,
    gan_start_factor,
    gather_features,
    generator_adv_loss,
    hinge_d_loss,
    sinkhorn_knopp,
)


def sp(x: float) -> float:
    """log(1 + e^x): two-way cross-entropy of the wrong class's margin."""
    return math.log1p(math.exp(x))


# --- CLIP ---------------------------------------------------------------------------------------


def test_clip_loss_2x2_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 2 * img @ txt.T = [[2, 1.2], [0, 1.6]]
    # image->text rows: margins -0.8, -1.6; text->image columns: [2, 0] -> -2, [1.2, 1.6] -> -0.4
    expected = (sp(-0.8) + sp(-1.6) + sp(-2.0) + sp(-0.4)) / 4
    loss = ClipLoss()(img, txt, torch.tensor(2.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_clip_loss_is_symmetric_in_the_two_directions():
    img, txt = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    loss = ClipLoss()
    assert loss(img, txt, torch.tensor(10.0)).item() == pytest.approx(loss(txt, img, torch.tensor(10.0)).item())


def test_gather_features_is_identity_without_distributed():
    x = torch.randn(3, 4)
    assert gather_features(x) is x


# --- Sinkhorn-Knopp -------------------------------------------------------------------------------


def test_sinkhorn_one_iteration_by_hand():
    # exp(logits) = [[3, 1], [1, 1]]; prototype step -> [[3/8, 1/8], [1/4, 1/4]] (K x N);
    # sample step -> sample 0: [3/5, 2/5], sample 1: [1/3, 2/3]
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    q = sinkhorn_knopp(logits, temp=1.0, n_iterations=1)
    assert torch.allclose(q, torch.tensor([[0.6, 0.4], [1 / 3, 2 / 3]]), atol=1e-6)


def test_sinkhorn_rows_sum_to_one_and_columns_balance():
    torch.manual_seed(0)
    n, k = 8, 4
    logits = torch.randn(n, k) + torch.tensor([2.0, 0.0, 0.0, 0.0])  # prototype 0 would take most samples
    q3 = sinkhorn_knopp(logits, temp=0.5, n_iterations=3)
    assert torch.allclose(q3.sum(dim=1), torch.ones(n), atol=1e-5)
    # converged: every prototype gets N/K of the mass
    q_inf = sinkhorn_knopp(logits, temp=0.5, n_iterations=300)
    assert torch.allclose(q_inf.sum(dim=0), torch.full((k,), n / k), atol=1e-3)
    # 3 iterations already undo most of a softmax's preference for prototype 0
    softmax_gap = (F.softmax(logits / 0.5, dim=-1).sum(0) - n / k).abs().max()
    assert (q3.sum(0) - n / k).abs().max() < 0.5 * softmax_gap


def test_sinkhorn_constant_logits_give_uniform():
    q = sinkhorn_knopp(torch.full((6, 5), 0.7), temp=0.04)
    assert torch.allclose(q, torch.full((6, 5), 0.2))


def test_sinkhorn_is_stable_for_large_logits():
    q = sinkhorn_knopp(torch.tensor([[100.0, 0.0], [0.0, 100.0]]), temp=0.04)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(2))


# --- DINO ---------------------------------------------------------------------------------------


def _dino_hand_case():
    # student crops: global 0, global 1, local; teacher crops: global 0, global 1 (B = 1, K = 2)
    s = [torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([[0.0, math.log(3.0)]])]
    t = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])]
    return s, t


def test_dino_loss_pairs_and_value_by_hand():
    s, t = _dino_hand_case()
    loss = DINOLoss(out_dim=2, student_temp=1.0)
    # log-probs: s0 [log .5, log .5], s1 [log .75, log .25], s2 [log .25, log .75]
    ce = {
        (0, 0): math.log(2), (0, 1): math.log(2),
        (1, 0): -math.log(0.75), (1, 1): -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)),
        (2, 0): -math.log(0.25), (2, 1): -(0.5 * math.log(0.25) + 0.5 * math.log(0.75)),
    }
    off_diag = [(0, 1), (1, 0), (2, 0), (2, 1)]  # G*(G-1) + L*G = 2 + 2 pairs
    assert loss(s, t).item() == pytest.approx(sum(ce[p] for p in off_diag) / 4, rel=1e-6)
    assert loss(s, t, ignore_diagonal=False).item() == pytest.approx(sum(ce.values()) / 6, rel=1e-6)


def test_dino_loss_matches_explicit_pair_loop():
    torch.manual_seed(0)
    s = [torch.randn(3, 7) for _ in range(5)]  # 2 global + 3 local
    t = [F.softmax(torch.randn(3, 7), dim=-1) for _ in range(2)]
    ref, n = 0.0, 0
    for i, si in enumerate(s):
        for j, tj in enumerate(t):
            if i != j:
                ref += -(tj * F.log_softmax(si / 0.1, dim=-1)).sum(-1).mean()
                n += 1
    assert n == 2 * 1 + 3 * 2
    assert torch.allclose(DINOLoss(7)(s, t), ref / n)


def test_dino_center_update_and_softmax_centering():
    loss = DINOLoss(out_dim=2, center_momentum=0.9)
    assert "center" in loss.state_dict()
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    p = loss.softmax_center_teacher(logits, teacher_temp=1.0)  # centre still 0
    assert torch.allclose(p, F.softmax(logits, dim=-1))
    loss.update_center(logits)  # batch mean [2, 3] -> 0.1 * [2, 3]
    assert torch.allclose(loss.center, torch.tensor([[0.2, 0.3]]))
    p = loss.softmax_center_teacher(torch.tensor([[0.2, 1.3]]), teacher_temp=0.5)
    assert torch.allclose(p, F.softmax(torch.tensor([[0.0, 2.0]]), dim=-1))


def test_dino_gradient_reaches_students_only():
    s = [torch.randn(2, 4, requires_grad=True) for _ in range(3)]
    t = [F.softmax(torch.randn(2, 4), dim=-1) for _ in range(2)]
    DINOLoss(4)(s, t).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)


# --- iBOT ---------------------------------------------------------------------------------------


def test_ibot_mask_weights():
    masks = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.allclose(IBOTPatchLoss.mask_weights(masks), torch.tensor([1.0, 0.25, 0.25, 0.25, 0.25]))


def test_ibot_each_image_counts_equally():
    # image A: 1 masked patch with CE log 2; image B: 4 masked patches with CE log(4/3) each
    masks = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)  # image C: no mask
    student = torch.tensor([[0.0, 0.0]] + [[math.log(3.0), 0.0]] * 4)
    teacher = torch.tensor([[1.0, 0.0]] * 5)
    loss = IBOTPatchLoss(out_dim=2, student_temp=1.0)
    value = loss(student, teacher, IBOTPatchLoss.mask_weights(masks)).item()
    assert value == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
    assert value != pytest.approx((math.log(2) + 4 * math.log(4 / 3)) / 5, rel=1e-3)  # not a plain patch mean


def test_ibot_no_masked_patch_gives_zero_with_graph():
    student = torch.zeros(0, 3, requires_grad=True)
    out = IBOTPatchLoss(3)(student, torch.zeros(0, 3), torch.zeros(0))
    assert out.item() == 0.0
    out.backward()


def test_ibot_sinkhorn_and_centering():
    loss = IBOTPatchLoss(out_dim=3)
    logits = torch.randn(5, 3)
    n = torch.tensor(5)
    q = loss.sinkhorn_knopp_teacher(logits, 0.07, n)
    assert n.item() == 5  # the caller's count is not modified
    assert torch.allclose(q, sinkhorn_knopp(logits, 0.07))
    loss.update_center(logits)
    assert torch.allclose(loss.center, 0.1 * logits.mean(0, keepdim=True))
    assert "center" in loss.state_dict()


# --- KoLeo --------------------------------------------------------------------------------------


def test_koleo_three_points_by_hand():
    # a = (1, 0), b at 60 degrees, c = (-1, 0): |ab| = 1, |bc| = sqrt(3), |ac| = 2
    # nearest neighbours: a -> b (1), b -> a (1), c -> b (sqrt 3)
    x = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [-1.0, 0.0]])
    expected = -(0 + 0 + 0.5 * math.log(3)) / 3
    koleo = KoLeoLoss()
    assert koleo(x).item() == pytest.approx(expected, abs=1e-6)
    assert koleo(x * torch.tensor([[5.0], [0.3], [2.0]])).item() == pytest.approx(expected, abs=1e-6)


def test_koleo_duplicates_stay_finite():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    out = KoLeoLoss()(x)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()


# --- GAN ----------------------------------------------------------------------------------------


def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = [0, 0.5, 2]
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = [0, 1, 2]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 1.0))
    assert generator_adv_loss(fake).item() == pytest.approx(1.0 / 3)


def test_adaptive_weight_matches_direct_autograd():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)

    def losses():
        y = layer(x)
        return (y - 1).abs().mean(), -(y**3).mean()

    rec, g = losses()
    w = adaptive_weight(rec, g, layer.weight)
    rec2, g2 = losses()
    gr = torch.autograd.grad(rec2, layer.weight, retain_graph=True)[0]
    gg = torch.autograd.grad(g2, layer.weight)[0]
    assert not w.requires_grad
    assert w.item() == pytest.approx((gr.norm() / (gg.norm() + 1e-4)).item(), rel=1e-6)
    rec.backward()  # the graph survives the call
    rec3, _ = losses()
    assert adaptive_weight(rec3, 1e-9 * layer(x).sum(), layer.weight, max_weight=7.0).item() == 7.0


def test_gan_start_factor():
    assert [gan_start_factor(s, 10) for s in (0, 9, 10, 11)] == [0.0, 0.0, 1.0, 1.0]


def test_patch_discriminator_shape_and_batch_independence():
    d = PatchDiscriminator(in_ch=3, base=16, n_layers=3)
    x = torch.randn(3, 3, 64, 64)
    out = d(x)
    assert out.shape == (3, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6
    assert torch.allclose(d(x[:1]), out[:1], atol=1e-5)  # GroupNorm: no batch statistics
