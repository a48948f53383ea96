"""Procedural scenes, bundled photos and the mixture: determinism, held-out pairs, captions."""
import re

import pytest
import torch

from openvtp.data.mixture import Mixture
from openvtp.demo.photos import NaturalPhotos, photo_list
from openvtp.demo.scenes import (
    COLOURS,
    SHAPES,
    UNSEEN_IDS,
    UNSEEN_PAIRS,
    CaptionedScenes,
    colour_prompts,
    render_scene,
    shape_prompts,
)
from openvtp.errors import OpenVTPError


def _same(a, b):
    return torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"] and a["key"] == b["key"]


def test_scenes_deterministic_and_distinct():
    a, b = CaptionedScenes(seed=3), CaptionedScenes(seed=3)
    for i in (0, 1, 777):
        assert _same(a[i], b[i])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], CaptionedScenes(seed=4)[0]["image"])
    # the held-out split is a different stream, not the train images again
    h = CaptionedScenes("heldout", seed=3, heldout_pairs="all")
    assert not any(torch.equal(a[i]["image"], h[i]["image"]) for i in range(20))


def test_sample_format():
    s = CaptionedScenes(size=64)[5]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 64, 64)
    assert isinstance(s["caption"], str) and isinstance(s["key"], str)
    assert s["label"] == s["shape"] and 0 <= s["shape"] < len(SHAPES) and 0 <= s["colour"] < len(COLOURS)


def test_unseen_pairs_design():
    shapes = {s for s, _ in UNSEEN_PAIRS}
    colours = {c for _, c in UNSEEN_PAIRS}
    n_all = len(SHAPES) * len(COLOURS)
    assert 0.15 <= len(UNSEEN_PAIRS) / n_all <= 0.25
    assert shapes <= set(SHAPES) and colours <= set(COLOURS)
    for s in SHAPES:  # every shape keeps most training partners
        assert sum(1 for p in UNSEEN_PAIRS if p[0] == s) <= 2
    for c in COLOURS:
        assert sum(1 for p in UNSEEN_PAIRS if p[1] == c) <= 2


def test_unseen_pairs_never_in_train_and_only_in_heldout():
    # Scan pair choice cheaply at 16 px (the pair does not depend on the size).
    train = CaptionedScenes("train", size=16, length=3000)
    seen = set()
    for i in range(len(train)):
        s = train[i]
        seen.add((s["shape"], s["colour"]))
    assert not seen & UNSEEN_IDS
    assert len(seen) == len(SHAPES) * len(COLOURS) - len(UNSEEN_IDS)  # all seen pairs occur
    held = CaptionedScenes("heldout", size=16, length=300)
    pairs = {(held[i]["shape"], held[i]["colour"]) for i in range(len(held))}
    assert pairs == set(UNSEEN_IDS)
    held_all = CaptionedScenes("heldout", size=16, length=600, heldout_pairs="all")
    pairs = {(held_all[i]["shape"], held_all[i]["colour"]) for i in range(len(held_all))}
    assert pairs & UNSEEN_IDS and pairs - UNSEEN_IDS


def test_captions_name_colour_and_shape():
    ds = CaptionedScenes(size=16, length=400)
    counts = {1: r"\b(a|an|one|a single)\b", 2: r"\b(two|a pair of)\b", 3: r"\bthree\b"}
    wordings = set()
    for i in range(len(ds)):
        s = ds[i]
        cap = s["caption"]
        assert re.search(rf"\b{COLOURS[s['colour']]}\b", cap), cap
        assert re.search(rf"\b{SHAPES[s['shape']]}(s|es)?\b", cap), cap
        assert re.search(counts[s["count"]], cap), cap
        other = [c for c in COLOURS if c != COLOURS[s["colour"]]]
        assert not any(re.search(rf"\b{c}\b", cap) for c in other), cap
        wordings.add(re.sub(r"\b(%s)\b" % "|".join(COLOURS + SHAPES), "X", cap))
    assert len(wordings) > 30  # varied wordings, not one template


@pytest.mark.parametrize("size", [32, (48, 80), (96, 40), 128])
def test_other_sizes(size):
    h, w = (size, size) if isinstance(size, int) else size
    s = CaptionedScenes(size=size, seed=1)[2]
    assert s["image"].shape == (3, h, w)
    assert s["image"].float().std() > 5  # not blank
    assert torch.equal(s["image"], render_scene(1, "train", 2, size)["image"])


def test_object_colour_dominates_its_pixels():
    """The named colour is present: some pixels lie close to the canonical RGB."""
    from openvtp.demo.scenes import COLOUR_RGB

    ds = CaptionedScenes(size=64, length=40)
    for i in range(len(ds)):
        s = ds[i]
        px = s["image"].permute(1, 2, 0).reshape(-1, 3).float()
        d = (px - torch.from_numpy(COLOUR_RGB[s["colour"]])).norm(dim=1)
        assert (d < 25).sum() >= 20, (i, s["caption"])


def test_prompts_and_errors():
    names, templates = shape_prompts()
    assert names == list(SHAPES) and all("{}" in t for t in templates)
    names, templates = colour_prompts()
    assert names == list(COLOURS) and all("{}" in t for t in templates)
    with pytest.raises(OpenVTPError):
        CaptionedScenes("val")
    with pytest.raises(OpenVTPError):
        CaptionedScenes(size=8)
    with pytest.raises(IndexError):
        CaptionedScenes(length=5)[5]


def test_photos():
    photos = photo_list()
    assert len(photos) >= 10
    for name, arr, caption in photos:
        assert arr.dtype.name == "uint8" and arr.ndim == 3 and arr.shape[2] == 3 and caption
    ds = NaturalPhotos(size=(40, 56), length=50, seed=2)
    a, b = ds[7], NaturalPhotos(size=(40, 56), length=50, seed=2)[7]
    assert _same(a, b) and a["image"].shape == (3, 40, 56)
    assert a["caption"] == photos[a["label"]][2]
    assert not torch.equal(ds[0]["image"], NaturalPhotos(size=(40, 56), length=50, split="heldout", seed=2)[0]["image"])


def test_mixture():
    scenes = CaptionedScenes(size=16, length=100)
    photos = NaturalPhotos(size=16, length=100)
    mix = Mixture([scenes, photos], weights=[0.8, 0.2], seed=1, length=500, keys=("image", "caption", "key"))
    again = Mixture([scenes, photos], weights=[0.8, 0.2], seed=1, length=500, keys=("image", "caption", "key"))
    for i in (0, 13, 499):
        assert _same(mix[i], again[i]) and mix[i]["source"] == again[i]["source"]
    sources = [mix.locate(i)[0] for i in range(len(mix))]
    assert 0.72 < sources.count(0) / len(sources) < 0.88
    assert set(mix[0]) == {"image", "caption", "key", "source"}
    torch.utils.data.default_collate([mix[i] for i in range(8)])  # mixed sources collate
    only = Mixture([scenes, photos], weights=[0, 1], length=50)
    assert all(only.locate(i)[0] == 1 for i in range(50))
    with pytest.raises(OpenVTPError):
        Mixture([scenes, photos], weights=[1.0])


def test_colour_groups_give_hard_negative_batches():
    grouped = CaptionedScenes(size=16, length=400, group_size=50, colours_per_group=2)
    for g in range(4):
        colours = {grouped[i]["colour"] for i in range(g * 50, (g + 1) * 50)}
        assert len(colours) <= 2
        assert len({grouped[i]["shape"] for i in range(g * 50, (g + 1) * 50)}) >= 4  # shapes still vary
    assert len({grouped[i]["colour"] for i in range(400)}) >= 5  # groups differ
    assert all((s["shape"], s["colour"]) not in UNSEEN_IDS for s in (grouped[i] for i in range(400)))
    plain = CaptionedScenes(size=16, length=10)
    assert torch.equal(plain[3]["image"], CaptionedScenes(size=16, length=10, group_size=5)[3]["image"])


def test_shape_twins_are_minimal_pairs():
    twins = CaptionedScenes(size=32, length=64, shape_twins=True)
    plain = CaptionedScenes(size=32, length=64)
    for k in range(0, 64, 2):
        first, twin = twins[k], twins[k + 1]
        assert _same(first, plain[k])  # originals are the plain dataset's items
        assert twin["colour"] == first["colour"] and twin["count"] == first["count"]
        assert twin["shape"] != first["shape"] and (twin["shape"], twin["colour"]) not in UNSEEN_IDS
        # the caption wording is the original's; only the shape noun differs
        diff = [(a, b) for a, b in zip(first["caption"].split(), twin["caption"].split()) if a != b]
        assert len(first["caption"].split()) == len(twin["caption"].split()) and len(diff) == 1
        assert diff[0][1].rstrip("s").replace("crosse", "cross") == SHAPES[twin["shape"]]
        changed = (first["image"] != twin["image"]).any(0)
        assert 0 < changed.float().mean() < 0.5  # the objects changed, the background did not
    assert twins[1]["key"].endswith("-twin") and _same(twins[1], CaptionedScenes(size=32, length=64, shape_twins=True)[1])
