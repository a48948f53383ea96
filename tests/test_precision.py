"""`--precision auto|fp32|bf16`: checked before work, bf16 close to float32 on a tiny model, float32 untouched, and
the precision recorded by reconstruct, extract-latents and eval."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from openvtp.cli import main
from openvtp.errors import OpenVTPError
from openvtp.eval.suite import EvalOptions, evaluate
from openvtp.generation.latents import extract_latents
from openvtp.models import VTPConfig, VTPModel
from openvtp.runtime.precision import autocast, resolve

from .conftest import CONFORMANCE

MODEL = str(CONFORMANCE / "tiny-swiglu-rms")
# bf16 keeps 8 significant bits: on the tiny models the largest latent error is ~0.5% of the largest latent and
# reconstructions agree to ~60 dB (measured); the bounds leave a wide margin and still catch fp16 or a broken cast.
LATENT_REL_TOL = 0.03
RECON_PSNR_MIN = 45.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (-10 * torch.log10((a - b).pow(2).flatten(1).mean(1))).min().item()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return VTPModel(VTPConfig.preset("vtp-tiny")).eval()


def test_resolve_keeps_each_commands_auto():
    assert resolve("auto", "cpu", cuda_default="bf16") == "fp32"
    assert resolve("auto", torch.device("cuda", 1), cuda_default="bf16") == "bf16"
    assert resolve("auto", "cuda") == "fp32"  # reconstruct and extract-latents never used autocast
    assert resolve("bf16", "cpu") == "bf16" and resolve("fp32", "cuda:0", cuda_default="bf16") == "fp32"
    with pytest.raises(OpenVTPError, match="--precision must be one of auto, fp32, bf16, got 'fp16'"):
        resolve("fp16", "cpu")
    with pytest.raises(OpenVTPError, match="--precision"):
        EvalOptions(precision="half")


@pytest.mark.parametrize("argv", [
    ["reconstruct", MODEL, "x.png", "--out", "{tmp}/o", "--precision", "fp16"],
    ["extract-latents", MODEL, "--data", "embedded", "--out", "{tmp}/o", "--precision", "half"],
    ["eval", MODEL, "--data", "embedded", "--out", "{tmp}/o", "--precision", "bfloat16"],
])
def test_bad_precision_is_one_line_before_torch(tmp_path, argv):
    script = ("import sys, runpy\nsys.argv = ['openvtp', *sys.argv[1:]]\ntry:\n"
              "    runpy.run_module('openvtp', run_name='__main__')\nfinally:\n"
              "    print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2 and lines[1] == "no torch", proc.stderr
    assert "--precision: invalid choice" in lines[0] and "'auto', 'fp32', 'bf16'" in lines[0]
    assert not (tmp_path / "o").exists()


def test_bf16_within_tolerance_of_fp32_and_fp32_untouched(tiny):
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        z, rec = tiny.encode(x), tiny.decode(tiny.encode(x))
        with autocast("cpu", "fp32"):
            assert torch.equal(tiny.encode(x), z)  # fp32 is the model's own arithmetic, bit for bit
        with autocast("cpu", "bf16"):
            zb = tiny.encode(x).float()
            recb = tiny.decode(zb).float()
    err = ((zb - z).abs().max() / z.abs().max()).item()
    assert 0 < err < LATENT_REL_TOL  # > 0: the matmuls did run in bf16
    assert RECON_PSNR_MIN < psnr(recb, rec) < 100


def test_extract_latents_records_precision_and_refuses_to_mix(tiny, tmp_path):
    g = torch.Generator().manual_seed(1)
    data = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g), "label": i % 2}
            for i in range(6)]
    common = dict(batch_size=4, shard_size=6, stats_num=6, device="cpu", progress=False)
    out16 = extract_latents(tiny, data, tmp_path / "bf16", precision="bf16", **common)
    out32 = extract_latents(tiny, data, tmp_path / "fp32", **common)
    assert json.loads((out16 / "index.json").read_text())["precision"] == "bf16"
    assert json.loads((out16 / "latents_stats.json").read_text())["precision"] == "bf16"
    assert json.loads((out32 / "index.json").read_text())["precision"] == "fp32"  # auto: float32, as before
    from safetensors.torch import load_file

    z16, z32 = (load_file(o / "latents_00000.safetensors")["latents"] for o in (out16, out32))
    assert z16.dtype == z32.dtype == torch.float32
    assert 0 < ((z16 - z32).abs().max() / z32.abs().max()).item() < LATENT_REL_TOL
    with pytest.raises(OpenVTPError, match="encoded in bf16, not fp32; resume with --precision bf16"):
        extract_latents(tiny, data, out16, precision="fp32", **common)


def test_reconstruct_bf16_prints_its_precision(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    for precision in ("fp32", "bf16"):
        assert main(["reconstruct", MODEL, str(tmp_path / "p.png"), "--out", str(tmp_path / precision),
                     "--precision", precision]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'p.png'}: PSNR") and out[1] == "precision: bf16 autocast"
    fp32, bf16 = (np.asarray(Image.open(tmp_path / p / "p_recon.png")).astype(float) for p in ("fp32", "bf16"))
    assert 0 < np.abs(fp32 - bf16).max() <= 8  # 8-bit PNGs of reconstructions ~60 dB apart


def test_eval_records_precision_and_keeps_caches_apart(tmp_path):
    quiet = dict(tasks=("zeroshot", "recon"), limit=6, progress=False, fid_weights="none", lpips="none", grid=0)
    runs = {p: evaluate([MODEL], "embedded", EvalOptions(precision=p, **quiet), tmp_path)[0] for p in ("auto", "bf16")}
    for p, label in (("auto", "float32"), ("bf16", "bf16 autocast")):
        payload = runs[p]
        assert payload["precision"] == label and payload["options"]["precision"] == p
        for e in payload["results"]["tiny-swiglu-rms"]:
            assert e["protocol"]["precision"] == label, e["name"]
    assert "precision: bf16 autocast" in (tmp_path / "results.md").read_text()
    recon = {p: next(e for e in runs[p]["results"]["tiny-swiglu-rms"] if e["name"] == "recon")["metrics"]["psnr"]
             for p in runs}
    assert recon["auto"] != recon["bf16"] and recon["auto"] == pytest.approx(recon["bf16"], abs=0.5)
