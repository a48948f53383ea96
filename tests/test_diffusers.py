"""AutoencoderVTP in diffusers: latents equal to VTPModel's, save/load, the exported module bundled from openvtp's
source and loaded by trust_remote_code without openvtp, a DiT pipeline end to end, a training step;
`openvtp export`, `openvtp push` (offline), create_model / list_models."""
import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import diffusers  # noqa: F401
except ImportError:
    pytest.skip("diffusers is not installed (pip install 'openvtp[diffusers]')", allow_module_level=True)

import openvtp
from openvtp.errors import OpenVTPError
from openvtp.integrations import bundle as bundle_mod
from openvtp.integrations.bundle import BundleError, bundle
from openvtp.integrations.diffusers_export import (DIFFUSERS_WEIGHTS, MODULE_FILE, diffusers_config, module_source,
                                                   save_diffusers, to_diffusers)
from openvtp.integrations.diffusers_vtp import VTP_L_DECODER, VTP_L_ENCODER, AutoencoderVTP
from openvtp.models import VTPConfig, VTPModel, layers
from openvtp.models.pixel_decoder import PixelDecoder
from openvtp.models.vit import VisionTrunk

REPO = Path(__file__).resolve().parents[1]


def run(*args, ok=True, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "openvtp", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd or REPO)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def vtp():
    torch.manual_seed(0)
    return VTPModel(VTPConfig.preset("vtp-tiny")).eval()


@pytest.fixture
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture
def demo_run(tmp_path, vtp):
    """A demo run's layout: <run>/decoder/tokenizer, <run>/decoder/{summary.json,config.yaml}, <run>/summary.json."""
    root = tmp_path / "demo"
    vtp.save_pretrained(root / "decoder" / "tokenizer")
    (root / "summary.json").write_text(json.dumps({
        "complete": True, "steps": 10, "objectives": {"clip": 1.0, "rec": 1.0}, "decoder_finetune": {"steps": 5},
        "heldout": {"zeroshot_shape": 61.5, "zeroshot_colour": 40.0, "psnr": 18.25, "psnr_decoder_finetuned": 20.5}}))
    (root / "decoder" / "summary.json").write_text(json.dumps({"complete": True, "steps": 5, "heldout": {"psnr": 20.5}}))
    (root / "decoder" / "config.yaml").write_text("data:\n  source: embedded\nloss:\n  l1_weight: 1.0\n"
                                                  "  lpips_weight: 0.5\ngan:\n  weight: 0.25\n")
    return root / "decoder" / "tokenizer"


def test_latents_bit_identical_and_pixels_in_minus_one_one(vtp, images):
    ae = to_diffusers(vtp)
    with torch.no_grad():
        z = ae.encode(images).latent
        assert torch.equal(z, vtp.encode((images + 1) / 2))
        assert z.shape == (2, 8, 4, 4)
        (z_tuple,) = ae.encode(images, return_dict=False)
        assert torch.equal(z_tuple, z)
        out = ae.decode(z).sample
        assert torch.equal(out, vtp.decode(z) * 2 - 1)
        assert out.min() >= -1 and out.max() <= 1
        assert torch.equal(ae.decode(z, return_dict=False)[0], out)
        assert torch.equal(ae(images).sample, out)


def test_slicing_tiling_and_latent_normalisation(vtp, images):
    ae = to_diffusers(vtp, {"mean": torch.arange(8.0).view(1, 8, 1, 1), "std": torch.full((1, 8, 1, 1), 2.0)})
    with torch.no_grad():
        whole = ae.encode(images).latent
        decoded = ae.decode(whole).sample
        ae.enable_slicing()
        torch.testing.assert_close(ae.encode(images).latent, whole)
        torch.testing.assert_close(ae.decode(whole).sample, decoded)
    with pytest.raises(NotImplementedError, match="tiling"):
        ae.enable_tiling()
    assert ae.config.latents_mean == list(range(8)) and ae.config.latents_std == [2.0] * 8
    n = ae.normalize_latents(whole)
    torch.testing.assert_close(n, (whole - torch.arange(8.0).view(1, 8, 1, 1)) / 2)
    torch.testing.assert_close(ae.denormalize_latents(n), whole)


def test_save_and_from_pretrained_with_subfolder(tmp_path, vtp, images):
    folder = save_diffusers(vtp, tmp_path / "repo" / "diffusers")
    assert {p.name for p in folder.iterdir()} == {"config.json", DIFFUSERS_WEIGHTS, MODULE_FILE.name}
    assert (folder / MODULE_FILE.name).read_text() == module_source()
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "diffusers_vtp.AutoencoderVTP"}
    assert config["encoder_config"]["depth"] == 2 and config["decoder_config"]["norm_layer"] == "layernorm"
    ae = AutoencoderVTP.from_pretrained(tmp_path / "repo", subfolder="diffusers").eval()
    assert ae.encoder.rope_embed.periods.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(ae.encode(images).latent, vtp.encode((images + 1) / 2))


def test_tower_settings_default_to_vtp_l_and_unknown_ones_fail():
    cfg = diffusers_config(VTPConfig.preset("vtp-l"))
    assert cfg["encoder_config"] == VTP_L_ENCODER and cfg["decoder_config"] == VTP_L_DECODER
    with torch.device("meta"):
        ae = AutoencoderVTP(decoder_config={"depth": 3})
        assert ae.config.decoder_config == {**VTP_L_DECODER, "depth": 3} and len(ae.decoder.blocks) == 3
        with pytest.raises(ValueError, match="mlp_ratio"):
            AutoencoderVTP(decoder_config={"mlp_ratio": 2.0})


def test_exported_module_is_openvtp_source_and_imports_only_torch_and_diffusers():
    source = module_source()
    tree = ast.parse(source)
    roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert roots <= {"__future__", "math", "types", "typing", "torch", "diffusers"}, roots
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    # no second copy: the layers, trunk and decoder are openvtp's own classes, verbatim
    for obj in (layers.RMSNorm, layers.make_norm, layers.SwiGLU, layers.Mlp, layers.make_ffn, layers.RopeEmbedding,
                layers.apply_rope, layers.apply_rope_qkv, layers.Attention, layers.LayerScale, layers.Block,
                VisionTrunk, PixelDecoder, AutoencoderVTP):
        assert inspect.getsource(obj) in source, obj.__name__
    defined = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
    assert len(defined) == len(set(defined))


def test_bundle_refuses_what_it_cannot_keep_equal(tmp_path, monkeypatch):
    pkg = tmp_path / "openvtp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text('"""Base."""\nimport math\n\nTAU = 2 * math.pi\n')
    (pkg / "ok.py").write_text("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
                               "from .base import TAU\nif TYPE_CHECKING:\n    from .missing import X\n\n"
                               "def turns(x: X):\n    return x / TAU\n")
    monkeypatch.setattr(bundle_mod, "PACKAGE_DIR", pkg)
    ns = {}
    exec(bundle("openvtp.ok"), ns)
    assert ns["turns"](ns["TAU"]) == 1.0 and "TYPE_CHECKING" not in ns
    for name, text, match in (("alias", "from .base import TAU as T\n", "own name"),
                              ("module", "from . import base\n", "imports the module"),
                              ("nested", "def f():\n    from .base import TAU\n", "inside a function"),
                              ("twice", "from .base import TAU\nTAU = 6.28\n", "defined by both"),
                              ("shadow", "from .base import TAU\nmath = None\n", "binds math"),
                              ("absent", "from .base import PI\n", "does not define")):
        (pkg / f"{name}.py").write_text(text)
        with pytest.raises(BundleError, match=match):
            bundle(f"openvtp.{name}")


def test_automodel_trust_remote_code_without_openvtp(tmp_path, vtp, images):
    """Loaded in a process where `import openvtp` fails, from a folder outside the repository."""
    folder = save_diffusers(vtp, tmp_path / "export")
    with torch.no_grad():
        z = vtp.encode((images + 1) / 2)
        torch.save((images, z, vtp.decode(z) * 2 - 1), tmp_path / "expected.pt")
    script = (
        "import os, sys, torch\n"
        "sys.modules['openvtp'] = None\n"
        "from diffusers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()\n"
        f"x, z, out = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    assert torch.equal(m.encode(x).latent, z)\n"
        "    assert torch.equal(m.decode(z).sample, out)\n"
        "assert not [p for p in sys.path if os.path.isdir(os.path.join(p or '.', 'openvtp'))], sys.path\n"
        "assert not [k for k in sys.modules if k.startswith('openvtp.')]\n"
        "assert type(m).__module__.startswith('diffusers_modules'), type(m).__module__\n"
        "print(type(m).__name__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "AutoencoderVTP"


def tiny_dit(channels: int, size: int):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=channels,
                                 out_channels=2 * channels, num_layers=1, sample_size=size, patch_size=2,
                                 num_embeds_ada_norm=1000).eval()


def test_dit_pipeline_generates_an_image(vtp):
    from diffusers import DDIMScheduler, DiTPipeline

    ae = to_diffusers(vtp)
    pipe = DiTPipeline(transformer=tiny_dit(ae.config.latent_channels, 4), vae=ae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[3, 7], guidance_scale=2.0, num_inference_steps=3,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (2, 64, 64, 3)
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0
    pil = pipe(class_labels=[1], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert pil[0].size == (64, 64)


def test_diffusers_training_step_on_vtp_latents(vtp, images):
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    ae = to_diffusers(vtp)
    ae.requires_grad_(False)
    dit = tiny_dit(ae.config.latent_channels, 4).train()
    scheduler = DDPMScheduler(num_train_timesteps=100)
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-3)
    with torch.no_grad():
        latents = ae.normalize_latents(ae.encode(images).latent)
    noise = torch.randn_like(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
    noisy = scheduler.add_noise(latents, noise, t)
    pred = dit(noisy, timestep=t, class_labels=torch.tensor([1, 2])).sample
    loss = F.mse_loss(pred[:, :latents.shape[1]], noise)
    before = [p.detach().clone() for p in dit.parameters()]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, dit.parameters()))


def test_no_decoder_is_an_openvtp_error():
    model = VTPModel(VTPConfig.preset("vtp-tiny", train_reconstruction=False))
    with pytest.raises(OpenVTPError, match="pixel decoder"):
        to_diffusers(model)


def test_cli_export_both_formats_give_equal_latents(tmp_path, vtp, images):
    src = tmp_path / "tok"
    vtp.save_pretrained(src)
    stats = {"mean": torch.zeros(1, 8, 1, 1), "std": torch.ones(1, 8, 1, 1) * 3}
    torch.save(stats, tmp_path / "latents_stats.pt")
    run("export", str(src), "--format", "diffusers", "--out", str(tmp_path / "d"),
        "--latents-stats", str(tmp_path / "latents_stats.pt"))
    run("export", str(src), "--format", "openvtp", "--out", str(tmp_path / "o"))
    ae = AutoencoderVTP.from_pretrained(tmp_path / "d").eval()
    assert ae.config.latents_std == [3.0] * 8
    back = VTPModel.from_pretrained(tmp_path / "o")
    with torch.no_grad():
        assert torch.equal(ae.encode(images).latent, back.encode((images + 1) / 2))
    bad = run("export", str(src), "--format", "onnx", "--out", str(tmp_path / "x"), ok=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_cli_push_dry_run_writes_folder_and_card(tmp_path, demo_run):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"results": {"tok": [
        {"task": "recon", "name": "recon", "metrics": {"psnr": 21.5, "ssim": 0.75},
         "protocol": {"dataset": "folder-x", "split": "val"}},
        {"task": "zeroshot", "name": "zeroshot", "skipped": "no text tower"}]}}))
    out = tmp_path / "card"
    run("push", str(demo_run), "you/openvtp-demo", "--dry-run", "--out", str(out), "--results", str(results))
    assert {p.name for p in out.iterdir()} == {"README.md", "config.json", "model.safetensors", "diffusers"}
    assert (out / "diffusers" / DIFFUSERS_WEIGHTS).is_file()
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "openvtp" and data["license"] == "apache-2.0"
    assert {"openvtp", "diffusers"} <= set(data["tags"])
    values = {(m["name"], m["value"]) for r in data["model-index"][0]["results"] for m in r["metrics"]}
    assert ("zero-shot shape accuracy (%)", 61.5) in values
    assert ("reconstruction PSNR after decoder fine-tuning (dB)", 20.5) in values
    assert ("reconstruction PSNR with the pre-trained decoder (dB)", 18.25) in values
    assert ("recon psnr", 21.5) in values
    text = card.text
    for needle in ("preset `vtp-tiny`", "lpips 0.5", "clip 1.0", "trust_remote_code=True", "2512.13687",
                   "openvtp.create_model"):
        assert needle in text, needle


def test_push_uploads_the_staged_folder(tmp_path, demo_run, monkeypatch):
    import huggingface_hub

    from openvtp.cli import main

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls["create"] = (repo_id, kw["private"])

        def upload_folder(self, folder_path, repo_id, **kw):
            calls["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*"))
            calls["repo"] = repo_id
            return "https://huggingface.co/you/x/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["push", str(demo_run), "you/x", "--private"]) == 0
    assert calls["create"] == ("you/x", True) and calls["repo"] == "you/x"
    assert {"README.md", "config.json", "model.safetensors", "diffusers/config.json",
            f"diffusers/{DIFFUSERS_WEIGHTS}", "diffusers/diffusers_vtp.py"} <= set(calls["files"])


def test_push_errors(tmp_path, demo_run):
    p = run("push", str(demo_run), "not-a-repo-id", "--dry-run", "--out", str(tmp_path / "c"), ok=False)
    assert p.returncode != 0 and "owner/name" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run("push", str(demo_run), "you/x", "--dry-run", ok=False)
    assert p.returncode != 0 and "--out" in p.stderr


def test_create_model_and_list_models(tmp_path, vtp):
    names = openvtp.list_models()
    assert "vtp-tiny" in names and "MiniMaxAI/VTP-Large-f16d64" in names
    assert openvtp.list_models(pretrained=True) == ["MiniMaxAI/VTP-Large-f16d64"]
    model = openvtp.create_model("vtp-tiny", vision_feature_bottleneck=16)
    assert model.config.vision_feature_bottleneck == 16
    vtp.save_pretrained(tmp_path / "tok")
    loaded = openvtp.create_model("vtp-tiny", pretrained=tmp_path / "tok")
    assert torch.equal(loaded.trunk.cls_token, vtp.trunk.cls_token)
    assert torch.equal(openvtp.create_model(str(tmp_path / "tok")).trunk.cls_token, vtp.trunk.cls_token)
    with pytest.raises(OpenVTPError, match="vtp-tiny, not vtp-s"):
        openvtp.create_model("vtp-s", pretrained=tmp_path / "tok")


def test_help_imports_neither_torch_nor_diffusers():
    code = ("import sys\nfrom openvtp.cli import build_parser\nbuild_parser()\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, "
            "[m for m in ('torch', 'diffusers') if m in sys.modules]")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
