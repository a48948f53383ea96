"""ADM's evaluator numbers beside FID: Inception Score chunks, sFID features, precision/recall order, label modes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openvtp.errors import OpenVTPError
from openvtp.eval.fid import INCEPTION_POOL_PATH, InceptionFeatures, inception_score, spatial_features
from openvtp.generation.gfid import stored_statistics
from openvtp.generation.sample import fid_labels


def _adm_is(logits: np.ndarray, split_size: int) -> float:
    """ADM's evaluator formula, written out in numpy for contiguous chunks."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    preds = e / e.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def test_inception_score_uses_contiguous_chunks():
    gen = torch.Generator().manual_seed(0)
    # two halves of very different confidence: contiguous chunks keep them apart, a shuffle would mix them
    logits = torch.cat([torch.randn(6, 10, generator=gen) * 5, torch.randn(6, 10, generator=gen) * 0.1])
    logits = logits.double().numpy()
    mean, std = inception_score(logits, split_size=6)
    assert mean == pytest.approx(_adm_is(logits, 6), rel=1e-12)
    assert std > 0.5  # the two chunks score very differently
    assert inception_score(logits, split_size=5)[0] == pytest.approx(_adm_is(logits, 5), rel=1e-12)  # short last one
    assert inception_score(logits, split_size=100)[0] == pytest.approx(_adm_is(logits, 100), rel=1e-12)
    from torch_fidelity.metric_isc import isc_features_to_metric  # torch-fidelity shuffles: another number

    shuffled = isc_features_to_metric(torch.from_numpy(logits), splits=2)["inception_score_mean"]
    assert abs(shuffled - mean) > 1e-3
    with pytest.raises(OpenVTPError):
        inception_score(np.zeros((0, 10)))


def test_spatial_features_are_the_first_7_channels_in_nhwc_order():
    x = torch.randn(2, 192, 17, 17)
    f = spatial_features(x)
    assert f.shape == (2, 17 * 17 * 7)
    n, h, w, c = 1, 5, 11, 6
    assert f[n, (h * 17 + w) * 7 + c] == x[n, c, h, w]
    assert torch.equal(f.view(2, 17, 17, 7).permute(0, 3, 1, 2), x[:, :7])


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures("random", device="cpu", progress=False)


def test_one_forward_gives_pool_logits_and_mixed_6_conv(inception):
    images = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    model = inception.model
    called, mixed_6d_input = [], []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: called.append(name))
             for name, m in model.named_children()]
    hooks.append(model.Mixed_6d.register_forward_pre_hook(lambda m, args: mixed_6d_input.append(args[0].clone())))
    try:
        out = inception.extract_all(images)
    finally:
        for h in hooks:
            h.remove()
    assert called == list(INCEPTION_POOL_PATH)  # the pytorch-fid pipeline runs the same layers in the same order
    with torch.inference_mode():
        # TF's mixed_6/conv is the 1x1 branch of Mixed_6d (conv, batch norm, ReLU) on the block's input
        expected = spatial_features(model.Mixed_6d.branch1x1(mixed_6d_input[0])).double()
        logits = out["pool"].float() @ model.fc.weight.T  # unbiased logits: ADM's softmax input has no bias
    assert out["pool"].shape == (1, 2048) and out["spatial"].shape == (1, 2023) and (out["spatial"] >= 0).all()
    assert torch.allclose(out["spatial"], expected, rtol=1e-5, atol=1e-5) and (expected == 0).any()
    assert torch.allclose(out["logits"].float(), logits, rtol=1e-4, atol=1e-4)


def test_pytorch_fid_input_pipeline(inception):
    seen = []

    class First(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x

    stub = torch.nn.Module()  # the real layers are checked above; here only what enters the first one matters
    for name in INCEPTION_POOL_PATH:
        setattr(stub, name, torch.nn.Identity())
    stub.Conv2d_1a_3x3, stub.AvgPool = First(), torch.nn.AdaptiveAvgPool2d(1)
    real, inception.model = inception.model, stub
    try:
        images = torch.randint(0, 256, (2, 3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
        feats = inception.pool_features_pytorch_fid(images)
    finally:
        inception.model = real
    # pytorch-fid: float [0, 1], torch's bilinear resize to 299 (not TF1's), then 2x - 1 (not (x - 128) / 128)
    expected = F.interpolate(images.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    assert torch.allclose(seen[0], expected, atol=1e-6)
    assert feats.dtype == torch.float64 and torch.allclose(feats, expected.mean((2, 3)).double(), atol=1e-6)


def test_precision_recall_argument_order():
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    gen = torch.Generator().manual_seed(3)
    real = torch.randn(200, 8, generator=gen)
    fake = real[:1] + 0.01 * torch.randn(20, 8, generator=gen)  # realistic, but all near one real point
    precision, recall = calculate_precision_recall_part(fake, real, neighborhood=3)
    assert precision > 0.9 and recall < 0.5  # torch-fidelity 0.3 returned these swapped


def test_fid_labels_balanced_and_random():
    balanced = fid_labels("balanced", 23, 5, seed=0)
    assert torch.bincount(balanced, minlength=5).tolist() == [5, 5, 5, 4, 4]
    random = fid_labels("random", 1000, 5, seed=0)
    assert torch.equal(random, fid_labels("random", 1000, 5, seed=0))
    assert not torch.equal(random, fid_labels("random", 1000, 5, seed=1))
    counts = torch.bincount(random, minlength=5)
    assert random.min() >= 0 and random.max() < 5 and len(set(counts.tolist())) > 1 and counts.min() > 150
    with pytest.raises(OpenVTPError, match="unknown FID labels"):
        fid_labels("stratified", 4, 2, seed=0)


def test_stored_statistics_reads_adm_spatial_stats(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, mu=np.zeros(3), sigma=np.eye(3), mu_s=np.ones(2), sigma_s=2 * np.eye(2))
    stats = stored_statistics(path)
    assert set(stats) == {"pool", "spatial"} and stats["spatial"][1][0, 0] == 2
    np.savez(tmp_path / "plain.npz", mu=np.zeros(3), sigma=np.eye(3))
    assert set(stored_statistics(tmp_path / "plain.npz")) == {"pool"}
