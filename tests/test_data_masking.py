"""Block masks: ratios within range, DINOv2 collate semantics, determinism, rank slicing."""
import torch

from openvtp.data.masking import batch_masks, block_mask, mask_ratios
from openvtp.data.views import sample_generator


def test_block_mask_ratios():
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        ratio = 0.1 + 0.4 * seed / 39
        m = block_mask(8, 8, ratio, gen)
        assert m.dtype == torch.bool and m.shape == (8, 8)
        n = int(m.sum())
        assert n <= round(ratio * 64) and n >= round(ratio * 64) - 6, (ratio, n)
    a = block_mask(14, 14, 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(a, block_mask(14, 14, 0.4, torch.Generator().manual_seed(1)))
    assert block_mask(8, 8, 0.0, torch.Generator()).sum() == 0


def test_batch_masks_dinov2_semantics():
    gen_for = lambda i: sample_generator(3, 10, i, stream=3)  # noqa: E731
    masks = batch_masks(16, 8, 8, (0.1, 0.5), 0.5, gen_for=gen_for)
    assert masks.shape == (16, 8, 8)
    frac = masks.flatten(1).float().mean(1)
    assert int((frac > 0).sum()) == 8  # exactly int(16 * 0.5) masked
    assert float(frac.max()) <= 0.5 and float(frac[frac > 0].min()) >= 0.05
    assert torch.equal(masks, batch_masks(16, 8, 8, (0.1, 0.5), 0.5, gen_for=gen_for))
    r = mask_ratios(10, (0.1, 0.5), 1.0, torch.Generator().manual_seed(0))
    assert (r.sort().values - torch.linspace(0.1, 0.5, 11)[:-1]).min() >= 0  # one per slice
    assert ((r >= 0.1) & (r <= 0.5)).all()
    # data-parallel: each rank's slice of a shared plan equals the single-process batch
    plan = mask_ratios(16, (0.1, 0.5), 0.5, sample_generator(3, 10, 0, stream=4))
    whole = batch_masks(16, 8, 8, gen_for=gen_for, ratios=plan)
    half = batch_masks(8, 8, 8, gen_for=lambda i: gen_for(i + 8), ratios=plan[8:])
    assert torch.equal(whole[8:], half)
