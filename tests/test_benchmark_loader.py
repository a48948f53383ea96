"""benchmarks/loader.py: both loaders build the same batch (keys and shapes), and a tiny run reports every row."""
import importlib.util
import json
import sys
from pathlib import Path

import torch

from openvtp.train.data import build_loader, finish_views

from .conftest import REPO


def load_benchmark():
    spec = importlib.util.spec_from_file_location("loader_benchmark", REPO / "benchmarks" / "loader.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["loader_benchmark"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_anchor_builds_openvtps_batch(tmp_path):
    bench = load_benchmark()
    pattern, kb = bench.write_data(tmp_path, 8, 120, 90)
    assert 1 < kb < 50
    cfg = bench.recipe_config("vtp-s", pattern, 8, 0, "sample")
    ours = finish_views(next(iter(build_loader(cfg, 0, 1, 0))), torch.device("cpu"))
    anchor = next(iter(bench.anchor_loader(cfg, pattern, 0)))
    shapes = {k: tuple(v.shape) for k, v in ours.items() if k not in ("step", "skipped")}
    assert shapes == {k: tuple(v.shape) for k, v in anchor.items()}
    assert shapes["ssl_globals"] == (2, 2, 3, 224, 224) and shapes["ssl_locals"] == (8, 2, 3, 96, 96)
    masked = anchor["ssl_masks"].any(1).sum()
    assert masked == ours["ssl_masks"].any(1).sum() == 2  # half the 4 global crops, as DINOv2's collate


def test_a_tiny_run_reports_every_path(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "loader.json"
    bench.main(["--recipe", "vtp-s", "--workers", "1", "--batch", "8", "--steps", "1", "--warmup", "1",
                "--images", "16", "--size", "96x72", "--repeat", "1", "--gpu-rate", "500", "--out", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["openvtp sample", "openvtp batch", "openvtp device", "openvtp device/torch",
                                        "anchor"]
    assert all(r["per_core"] > 0 and r["workers"] == 1 for r in rows)
    device, sample = rows[2], rows[0]
    assert device["batch_mb"] < sample["batch_mb"] / 3  # uint8 geometry instead of float views
    assert "loader cores one GPU needs at 500 images/s" in printed and "finishing a batch's views" in printed
