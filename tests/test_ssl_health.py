"""SSL health figures: collapse (uniform or onto one prototype) and learning give different readings."""
import math

import pytest
import torch
import torch.nn.functional as F

from openvtp.train.health import ssl_health

K, B, G, D = 16, 8, 2, 12


def _read(teacher, student_logits, features, dino=None):
    t = teacher.float()
    if dino is None:  # the mean cross-entropy of each student crop against the other crops' targets
        log_s = F.log_softmax(student_logits / 0.1, -1).view(G, B, K)
        dino = -(t.view(G, B, K).flip(0) * log_s).sum(-1).mean()
    return {k: float(v) for k, v in ssl_health(t, list(student_logits.chunk(G)), 0.1, dino, features, G).items()}


def test_uniform_collapse_sits_at_ln_k_with_nothing_to_learn():
    h = _read(torch.full((G * B, K), 1 / K), torch.zeros(G * B, K), torch.randn(G * B, D))
    assert h["ssl_teacher_entropy"] == pytest.approx(math.log(K))
    assert h["ssl_student_entropy"] == pytest.approx(math.log(K))
    assert h["ssl_dino_kl"] == pytest.approx(0.0, abs=1e-5)  # the loss is ln K, all of it target entropy


def test_one_prototype_collapse():
    h = _read(F.one_hot(torch.full((G * B,), 3), K), torch.zeros(G * B, K), torch.ones(G * B, D))
    assert h["ssl_teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert h["ssl_same_prototype"] == 1.0 and h["ssl_prototypes_used"] == 1.0
    assert h["ssl_cls_cosine"] == pytest.approx(1.0)


def test_learning_reads_sharp_consistent_and_spread():
    targets = F.one_hot(torch.arange(B).repeat(G), K).float()  # both crops of image b -> prototype b
    student = 3.0 * targets + 0.1 * torch.randn(G * B, K)  # close to the targets at temperature 0.1
    features = torch.eye(D)[:B].repeat(G, 1)  # orthogonal across images
    h = _read(targets, student, features)
    assert h["ssl_same_prototype"] == 1.0 and h["ssl_prototypes_used"] == B
    assert h["ssl_cls_cosine"] == pytest.approx(0.0, abs=1e-6)
    assert h["ssl_teacher_entropy"] < 0.1 and h["ssl_student_entropy"] < 0.1 and 0 <= h["ssl_dino_kl"] < 0.1
    crossed = _read(torch.cat([targets[:B], targets[B:].roll(1, 0)]), student, features)  # the two crops disagree
    assert crossed["ssl_same_prototype"] == 0.0
