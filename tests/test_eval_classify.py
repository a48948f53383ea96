"""k-NN, linear probes, zero-shot classification and retrieval on hand-made features."""

import math

import pytest
import torch
import torch.nn.functional as F

from openvtp.errors import OpenVTPError
from openvtp.eval.knn import knn_classify
from openvtp.eval.linear_probe import (
    DINOV2_LRS,
    dinov2_feature_variants,
    linear_probe_dinov2,
    linear_probe_simple,
)
from openvtp.eval.retrieval import retrieval_recall
from openvtp.eval.zero_shot import (
    build_zero_shot_classifier,
    imagenet_classnames,
    imagenet_templates,
    read_lines,
    zero_shot_accuracy,
)


def blobs(n_per_class, classes=5, dim=32, spread=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=gen), labels


def test_knn_separable_clusters():
    train, train_y = blobs(40, seed=0)
    test, test_y = blobs(10, seed=0)  # same centres, fresh noise
    test = test + 0.01 * torch.randn_like(test)
    out = knn_classify(train, train_y, test, test_y, k=20, temperature=0.07)
    assert out["top1"] == 100.0 and out["top5"] == 100.0 and out["protocol"] == "knn"
    # scanning the train set in small blocks merges the running top-k exactly
    assert knn_classify(train, train_y, test, test_y, k=20, train_chunk=7, test_chunk=3) == out


def test_knn_votes_are_temperature_weighted():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    train_y = torch.tensor([0, 1, 1])
    test, test_y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    # class 0: exp(1 / T); class 1: 2 exp(0.8 / T). Sharp T trusts the closest, T = 1 the majority.
    assert knn_classify(train, train_y, test, test_y, k=3, temperature=0.07)["top1"] == 100.0
    assert 2 * math.exp(0.8) > math.exp(1.0)
    assert knn_classify(train, train_y, test, test_y, k=3, temperature=1.0)["top1"] == 0.0
    assert knn_classify(train, train_y, test, test_y, k=1, temperature=1.0)["top1"] == 100.0
    with pytest.raises(OpenVTPError):
        knn_classify(train, train_y, torch.zeros(1, 3), test_y)


def test_linear_probe_simple_on_blobs():
    train, train_y = blobs(100, seed=1, spread=2.0)
    test, test_y = blobs(40, seed=1, spread=2.0)
    out = linear_probe_simple(train, train_y, test, test_y, epochs=20, batch_size=64, lr=1e-2, device="cpu")
    assert out["protocol"] == "linear-simple" and out["top1"] > 90 and out["top5"] >= out["top1"]


def test_linear_probe_dinov2_on_blobs():
    train, train_y = blobs(100, seed=2, spread=2.0)
    test, test_y = blobs(40, seed=2, spread=2.0)
    variants_train = {"full": train, "half": train[:, :16]}
    variants_test = {"full": test, "half": test[:, :16]}
    out = linear_probe_dinov2(variants_train, train_y, variants_test, test_y, epochs=10, batch_size=64, device="cpu")
    assert out["protocol"] == "dinov2-linear" and out["top1"] > 90
    assert out["variant"] in variants_train and out["lr"] in DINOV2_LRS
    assert out["scaled_lr"] == pytest.approx(out["lr"] * 64 / 256)
    assert len(out["all_top1"]) == 2 * len(DINOV2_LRS) and max(out["all_top1"].values()) == out["top1"]
    # the smallest lr barely moves from the N(0, 0.01) init in a few steps: the sweep must matter
    assert out["all_top1"]["full@1e-05"] < out["top1"]
    with pytest.raises(OpenVTPError, match="variants"):
        linear_probe_dinov2(variants_train, train_y, {"full": test}, test_y)


def test_dinov2_feature_variants_layout():
    cls = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # (N, blocks, D)
    patch = -torch.ones(2, 3)
    v = dinov2_feature_variants(cls, patch)
    assert set(v) == {"cls1", "cls4", "cls1_avgpool", "cls4_avgpool"}
    torch.testing.assert_close(v["cls1"], cls[:, 3])
    torch.testing.assert_close(v["cls4"], cls.flatten(1))
    torch.testing.assert_close(v["cls4_avgpool"], torch.cat([cls.flatten(1), patch], 1))
    assert set(dinov2_feature_variants(cls[:, -1:])) == {"cls1"}


def test_zero_shot_with_fake_text_encoder():
    classnames = ["cat", "dog", "bird"]
    templates = ["a photo of a {}.", "a drawing of a {}."]

    def tokenize(texts):  # token = (class index, template index)
        return torch.tensor([[next(i for i, c in enumerate(classnames) if c in t), "drawing" in t] for t in texts])

    def encode(tokens):  # class one-hot plus a template-dependent direction, of template-dependent norm
        feats = F.one_hot(tokens[:, 0], 4).float()
        feats[:, 3] = torch.where(tokens[:, 1] == 1, 1.0, -1.0)
        return feats * torch.where(tokens[:, 1:] == 1, 3.0, 1.0)

    w = build_zero_shot_classifier(encode, classnames, templates, tokenize, batch=4)
    assert w.shape == (4, 3)
    # per class: the normalised (1, 0, 0, +-1) / sqrt(2) average to (1/sqrt(2), 0, 0, 0), renormalised -> one-hot
    # (averaging before normalising would weight the 3x longer "drawing" feature more and tilt towards +e3)
    torch.testing.assert_close(w, torch.eye(4)[:, :3])

    labels = torch.tensor([0, 1, 2, 2])
    images = F.normalize(F.one_hot(labels, 4).float() + 0.1, dim=1)
    assert zero_shot_accuracy(images, w, labels, topk=(1, 2)) == {"top1": 100.0, "top2": 100.0}
    assert zero_shot_accuracy(images.flip(0), w, labels, topk=(1,))["top1"] == 0.0
    with pytest.raises(OpenVTPError, match="exactly one"):
        build_zero_shot_classifier(encode, classnames, ["no slot"], tokenize)


def test_imagenet_metadata_and_read_lines(tmp_path):
    names, templates = imagenet_classnames(), imagenet_templates()
    assert len(names) == 1000 and names[0] == "tench"
    assert len(templates) == 80 and all(t.count("{}") == 1 for t in templates)
    assert templates[0].format("cat") == "a bad photo of a cat."
    path = tmp_path / "names.txt"
    path.write_text("cat\n\n  dog  \n")
    assert read_lines(path) == ["cat", "dog"]
    with pytest.raises(OpenVTPError, match="not found"):
        read_lines(tmp_path / "absent.txt")


def test_retrieval_two_captions_per_image():
    images = torch.eye(3)
    captions = torch.tensor(
        [[1.0, 0.1, 0.0], [0.2, 1.0, 0.0], [0.0, 1.0, 0.3], [0.1, 0.9, 0.2], [0.5, 0.0, 0.4], [0.0, 0.2, 1.0]]
    )
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    # t2i: captions 1 and 4 rank another image first; i2t: image 1's best caption (1) belongs to image 0
    expected = {"i2t_R@1": 200 / 3, "i2t_R@2": 100.0, "t2i_R@1": 400 / 6, "t2i_R@2": 100.0}
    for chunk in (1024, 2):
        out = retrieval_recall(images, captions, owner, ks=(1, 2), chunk=chunk)
        assert out == pytest.approx(expected)
    with pytest.raises(OpenVTPError, match="image_for_text"):
        retrieval_recall(images, captions, owner[:3])
