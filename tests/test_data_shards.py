"""Webdataset shards: round trip, rank/worker splits, skipping bad samples, errors."""
import io
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from openvtp.data import shards
from openvtp.demo.scenes import CaptionedScenes
from openvtp.data.shards import ShardDataset, skipped_total, write_shards
from openvtp.errors import OpenVTPError


def _scenes(n, size=24):
    ds = CaptionedScenes(size=size, length=n)
    return [ds[i] for i in range(n)]


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    samples = _scenes(30)
    paths = write_shards(samples, str(root / "s-%03d.tar"), maxcount=7)
    return root, samples, paths


def test_round_trip(shard_set):
    root, samples, paths = shard_set
    assert len(paths) == 5  # 30 samples, 7 per shard
    got = list(ShardDataset(str(root / "s-{000..004}.tar"), shuffle_buffer=0))
    assert [g["key"] for g in got] == [s["key"] for s in samples]
    for g, s in zip(got, samples):
        assert torch.equal(g["image"], s["image"])  # png is lossless
        assert g["caption"] == s["caption"] and g["skipped"] == 0


@pytest.mark.parametrize("shuffle_buffer", [0, 8])
@pytest.mark.parametrize("world_size", [2, 7])  # 7 > 5 shards: falls back to a sample-level split
def test_ranks_disjoint_and_complete(shard_set, world_size, shuffle_buffer):
    _, samples, paths = shard_set
    keys = []
    for rank in range(world_size):
        ds = ShardDataset(paths, rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer, seed=5)
        part = [s["key"] for s in ds]
        assert part == [s["key"] for s in ds]  # same epoch, same order
        keys.append(part)
    flat = [k for part in keys for k in part]
    assert len(flat) == len(set(flat)) == len(samples)
    assert all(keys)


def test_shuffle_changes_with_epoch(shard_set):
    _, _, paths = shard_set
    ds = ShardDataset(paths, shuffle_buffer=10, seed=1)
    first = [s["key"] for s in ds]
    ds.set_epoch(1)
    second = [s["key"] for s in ds]
    assert sorted(first) == sorted(second) and first != second


def test_workers_split_and_resize(shard_set):
    _, samples, paths = shard_set
    ds = ShardDataset(paths, size=16, shuffle_buffer=0)
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    keys = []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 16, 16) and batch["image"].dtype == torch.uint8
        keys += batch["key"]
    assert sorted(keys) == sorted(s["key"] for s in samples)


def _raw_tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_bad_samples_are_skipped_and_counted(tmp_path):
    good = _scenes(4)
    bad = [
        {"key": "corrupt", "image": b"this is not a png", "caption": "a broken image"},
        {"key": "empty", "image": good[0]["image"], "caption": "   "},
        {"key": "nocap", "image": good[1]["image"], "caption": None},
    ]
    paths = write_shards([good[0], bad[0], good[1], bad[1], bad[2], good[2]], str(tmp_path / "a-%02d.tar"))
    _raw_tar(tmp_path / "b-00.tar", [("noimg.txt", b"a caption without an image"), ("latin.txt", b"\xff\xfe"),
                                     ("latin.png", b"x")])
    # a shard truncated inside its last image: the samples before it are used, the rest is a shard error
    whole = write_shards([good[3], _scenes(5)[4]], str(tmp_path / "whole-%d.tar"))[0]
    with tarfile.open(whole) as tf:
        cut = tf.getmembers()[-2].offset_data + 100
    (tmp_path / "c-00.tar").write_bytes(open(whole, "rb").read()[:cut])

    ds = ShardDataset([*paths, str(tmp_path / "b-00.tar"), str(tmp_path / "c-00.tar")], shuffle_buffer=0)
    got = list(ds)
    assert [g["key"] for g in got] == [good[0]["key"], good[1]["key"], good[2]["key"], good[3]["key"]]
    assert ds.skipped["bad_image"] == 1
    assert ds.skipped["empty_caption"] == 1
    assert ds.skipped["missing_caption"] == 1
    assert ds.skipped["missing_image"] == 1
    assert ds.skipped["bad_caption"] == 1
    assert ds.skipped["shard_error"] == 1
    # skips before each yielded sample, carried with it: sums to the skips before the last one
    assert [g["skipped"] for g in got[:3]] == [0, 1, 2]
    assert skipped_total(torch.utils.data.default_collate(got)) == sum(g["skipped"] for g in got)


def test_missing_shard_and_bad_args(tmp_path, shard_set):
    _, _, paths = shard_set
    with pytest.raises(OpenVTPError, match="nope-001.tar"):
        ShardDataset([paths[0], str(tmp_path / "nope-001.tar")])
    with pytest.raises(OpenVTPError, match="shard not found"):
        ShardDataset(str(tmp_path / "x-{0..2}.tar"))
    with pytest.raises(OpenVTPError):
        ShardDataset(paths, rank=2, world_size=2)
    with pytest.raises(OpenVTPError):
        write_shards([], str(tmp_path / "no-pattern.tar"))


def test_resample_is_endless_and_seeded(shard_set):
    _, samples, paths = shard_set
    take = lambda ds: [s["key"] for _, s in zip(range(80), ds)]  # noqa: E731
    a = take(ShardDataset(paths, resample=True, shuffle_buffer=4, seed=3))
    b = take(ShardDataset(paths, resample=True, shuffle_buffer=4, seed=3))
    assert a == b and len(a) == 80 > len(samples)


def test_resample_over_unreadable_shards_fails_instead_of_spinning(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "_MAX_SKIPS_IN_A_ROW", 200)
    (tmp_path / "junk-0.tar").write_bytes(b"\0garbage" * 100)
    ds = ShardDataset(str(tmp_path / "junk-0.tar"), resample=True)
    with pytest.raises(OpenVTPError, match="in a row were unreadable"):
        next(iter(ds))
    # shards that read fine but hold only bad samples: stops too
    bad = write_shards([{"key": f"k{i}", "image": b"junk", "caption": "x"} for i in range(50)], str(tmp_path / "b-%d.tar"))
    with pytest.raises(OpenVTPError, match="in a row were unreadable"):
        next(iter(ShardDataset(bad, resample=True, shuffle_buffer=1000)))
    # a big shuffle buffer over small shards is not mistaken for unreadable shards
    good = write_shards(_scenes(3), str(tmp_path / "g-%d.tar"))
    assert len([s for _, s in zip(range(20), ShardDataset(good, resample=True, shuffle_buffer=1000))]) == 20
    assert list(ShardDataset(str(tmp_path / "junk-0.tar"))) == []  # one pass: just empty


def test_skip_counts_reach_the_training_loop_from_workers(tmp_path):
    good = _scenes(8)
    bad = {"image": b"junk", "caption": "a broken one"}
    samples = [good[0], dict(bad, key="x0"), good[1], good[2], good[3], dict(bad, key="x1"), dict(bad, key="x2"),
               good[4], good[5], good[6], good[7]]
    paths = write_shards(samples, str(tmp_path / "w-%d.tar"), maxcount=4)  # bad ones land mid-shard
    loader = DataLoader(ShardDataset(paths, shuffle_buffer=3), batch_size=3, num_workers=2)
    total, n = 0, 0
    for batch in loader:
        total += skipped_total(batch)
        n += len(batch["key"])
    assert (n, total) == (8, 3)
