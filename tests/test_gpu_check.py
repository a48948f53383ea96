"""benchmarks/gpu_check.py in its reduced mode (tiny sizes on the CPU, DDP and FSDP2 over gloo in a group of one)."""
import json
import math
import os
import subprocess
import sys

import pytest

from .conftest import REPO

TRAINING_FIELDS = ("s_per_step", "images_per_s", "flops_per_step", "tflops_per_s", "mfu", "max_rel_diff")


@pytest.mark.slow
def test_reduced_gpu_check_reports_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--reduced", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "reduced" and report["passed"] is True
    assert report["parts"].keys() == {"pretrain vtp-tiny", "dit", "codec vtp-tiny"}
    assert all(p["status"] == "ok" for p in report["parts"].values()), report["parts"]
    rows = {(r["part"], r["run"]): r for r in report["rows"]}
    assert set(rows) == {("pretrain vtp-tiny", "ddp bf16"), ("pretrain vtp-tiny", "fsdp bf16"),
                         ("dit dit-tiny-1", "bf16"), ("codec vtp-tiny 64px", "encode bf16"),
                         ("codec vtp-tiny 64px", "decode bf16")}
    # DDP and FSDP2 really wrap the task at world size 1
    assert rows["pretrain vtp-tiny", "ddp bf16"]["wrapped"] == "DistributedDataParallel"
    assert rows["pretrain vtp-tiny", "fsdp bf16"]["wrapped"].startswith("FSDP")
    for r in rows.values():
        fields = TRAINING_FIELDS if "check" in r else TRAINING_FIELDS[:-1]
        assert all(math.isfinite(r[f]) and r[f] > 0 for f in fields), r
        assert r["peak_mem_gib"] is None and r["mfu_nominal"] is None  # CPU: no CUDA memory, not an H200
    for key in (("pretrain vtp-tiny", "ddp bf16"), ("pretrain vtp-tiny", "fsdp bf16"), ("dit dit-tiny-1", "bf16")):
        r = rows[key]
        assert r["check"] == "PASS" and len(r["losses"]) == len(r["fp32_losses"]) == report["check_steps"] == 3
        assert r["losses"] != r["fp32_losses"]  # bf16 really ran: its losses differ from fp32's in the last digits
        assert r["max_rel_diff"] <= report["tolerance"]
    assert "PASSED" in proc.stdout and "fsdp bf16" in proc.stdout


def test_spent_budget_skips_every_part_loudly_and_fails(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = tmp_path / "gpu_check.json"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--reduced", "--budget-s", "1e-9", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main()
    assert exit_.value.code == 1
    report = json.loads(out.read_text())
    assert report["passed"] is False and report["rows"] == []
    assert [p["status"] for p in report["parts"].values()] == ["skipped"] * 3
    printed = capsys.readouterr().out
    assert printed.count("!!! SKIPPED") == 3 and "FAILED" in printed
