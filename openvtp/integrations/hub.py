"""`openvtp push`: a tokenizer as a Hub repository (openvtp format at the root, diffusers format in `diffusers/`)
with a model card made from what its run folder recorded (config.yaml, summary.json) and evaluation results."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from openvtp.errors import OpenVTPError

LICENSE = "apache-2.0"
DIFFUSERS_SUBFOLDER = "diffusers"
CITATION = """@misc{vtp2025,
  title         = {Towards Scalable Pre-training of Visual Tokenizers for Generation},
  year          = {2025},
  eprint        = {2512.13687},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2512.13687}
}"""
SUMMARY_FIGURES = {  # summary.json "heldout" key -> (metric type, readable name)
    "psnr_decoder_finetuned": ("psnr", "reconstruction PSNR after decoder fine-tuning (dB)"),
    "psnr": ("psnr", "reconstruction PSNR (dB)"),
    "zeroshot_shape": ("accuracy", "zero-shot shape accuracy (%)"),
    "zeroshot_colour": ("accuracy", "zero-shot colour accuracy (%)"),
    "knn_shape": ("accuracy", "kNN shape accuracy (%)"),
}
TASK_TYPES = {"zeroshot": "zero-shot-image-classification", "linprobe": "image-classification",
              "knn": "image-classification", "retrieval": "zero-shot-image-classification",
              "recon": "image-to-image"}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OpenVTPError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise OpenVTPError(f"{path}: expected a JSON object")
    return data


def run_records(model_dir: Path) -> list[tuple[Path, dict, str | None]]:
    """(folder, summary.json, config.yaml text) of the run that wrote the tokenizer folder and of the run above it
    (a demo's decoder stage sits in <demo>/decoder/tokenizer), nearest first; folders without either are left out."""
    found = []
    for folder in (model_dir.parent, model_dir.parent.parent):
        summary = folder / "summary.json"
        config = folder / "config.yaml"
        if summary.is_file() or config.is_file():
            found.append((folder, _read_json(summary) if summary.is_file() else {},
                          config.read_text() if config.is_file() else None))
    return found


def summary_results(summaries: list[dict], model_name: str) -> list:
    """EvalResults from summary.json "heldout" figures. The outer run's summary wins: a demo's summary.json holds
    both PSNRs (pre-trained and fine-tuned decoder), its decoder stage's only the second, under the same key."""
    from huggingface_hub import EvalResult

    held: dict[str, float] = {}
    for s in reversed(summaries):
        for k, v in (s.get("heldout") or {}).items():
            held.setdefault(k, v)
    out = []
    for key, (metric, name) in SUMMARY_FIGURES.items():
        if key == "psnr" and "psnr_decoder_finetuned" in held:
            name = "reconstruction PSNR with the pre-trained decoder (dB)"
        if isinstance(held.get(key), (int, float)):
            task = "image-to-image" if metric == "psnr" else "zero-shot-image-classification" \
                if key.startswith("zeroshot") else "image-classification"
            out.append(EvalResult(task_type=task, dataset_type="openvtp-embedded-scenes",
                                  dataset_name="openvtp embedded scenes (held-out shape/colour pairs)",
                                  dataset_split="heldout", metric_type=metric, metric_name=name,
                                  metric_value=round(float(held[key]), 4)))
    return out


def results_file_results(path: Path) -> list:
    """EvalResults from an `openvtp eval` results.json: every computed metric of every model and task."""
    from huggingface_hub import EvalResult

    payload = _read_json(path)
    results = payload.get("results")
    if not isinstance(results, dict):
        raise OpenVTPError(f"{path}: not an openvtp results.json (no 'results' object)")
    out = []
    for entries in results.values():
        for e in entries:
            if "skipped" in e or not isinstance(e.get("metrics"), dict):
                continue
            protocol = e.get("protocol") or {}
            dataset = str(protocol.get("dataset", "unknown"))
            for metric, value in e["metrics"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out.append(EvalResult(task_type=TASK_TYPES.get(e.get("task"), "image-feature-extraction"),
                                          dataset_type=dataset, dataset_name=dataset,
                                          dataset_split=protocol.get("split"), metric_type=metric,
                                          metric_name=f"{e['name']} {metric}", metric_value=float(value)))
    return out


def _training_section(model, records: list[tuple[Path, dict, str | None]]) -> str:
    from omegaconf import OmegaConf

    from openvtp.models.factory import preset_of

    preset = preset_of(model.config)
    lines = [f"Architecture: preset `{preset}`." if preset else "Architecture: a custom config (config.json).", ""]
    if not records:
        return "\n".join(lines + ["No training record (summary.json, config.yaml) was found next to this checkpoint."])
    for folder, summary, config_text in records:
        cfg = OmegaConf.create(config_text) if config_text else OmegaConf.create({})
        stage = ("decoder fine-tuning" if "gan" in cfg else "pre-training, then decoder fine-tuning"
                 if "decoder_finetune" in summary else "pre-training")
        lines.append(f"### {folder.name} ({stage})\n")
        if summary:
            lines.append(f"- steps: {summary.get('steps', '?')} (complete: {summary.get('complete', '?')})")
            if summary.get("objectives"):
                lines.append("- loss weights: " + ", ".join(f"{k} {v}" for k, v in summary["objectives"].items()))
        if config_text:
            data = OmegaConf.select(cfg, "data")
            if data is not None:
                lines.append(f"- data: {OmegaConf.select(cfg, 'data.source', default='?')} "
                             f"({OmegaConf.select(cfg, 'data.path', default='') or 'no path'})")
            weights = {k.split(".")[-1].removesuffix("_weight") if k.startswith("loss.") else k.split(".")[0]:
                       OmegaConf.select(cfg, k) for k in ("clip.weight", "ssl.weight", "recon.weight",
                                                          "loss.l1_weight", "loss.lpips_weight", "gan.weight")}
            weights = {k: v for k, v in weights.items() if v is not None}
            if weights and not summary.get("objectives"):
                lines.append("- loss weights: " + ", ".join(f"{k} {v}" for k, v in weights.items()))
            lines.append("\n<details><summary>config.yaml</summary>\n\n```yaml\n" + config_text.rstrip()
                         + "\n```\n</details>")
        lines.append("")
    return "\n".join(lines)


def _figures_table(results: list) -> str:
    if not results:
        return "No evaluation figures were given (`openvtp push ... --results results.json`)."
    rows = ["| dataset | split | metric | value |", "|---|---|---|---|"]
    rows += [f"| {r.dataset_name} | {r.dataset_split or ''} | {r.metric_name or r.metric_type} | {r.metric_value:g} |"
             for r in results]
    return "\n".join(rows)


def make_card(model, model_dir: Path | None, repo_id: str, results_files: list[Path], has_diffusers: bool):
    """The `huggingface_hub.ModelCard` for a tokenizer: card data (library, licence, tags, model-index) and text."""
    from huggingface_hub import ModelCard, ModelCardData

    cfg = model.config
    records = run_records(model_dir) if model_dir is not None else []
    results = summary_results([s for _, s, _ in records], repo_id)
    for path in results_files:
        results += results_file_results(path)
    name = repo_id.split("/")[-1]
    data = ModelCardData(library_name="openvtp", license=LICENSE, pipeline_tag="image-feature-extraction",
                         tags=["openvtp", "vtp", "visual-tokenizer", "autoencoder", "image-generation",
                               *(["diffusers"] if has_diffusers else [])],
                         model_name=name, eval_results=results or None)
    latent = f"{cfg.vision_feature_bottleneck} channels at stride {cfg.vision_patch_size}"
    parts = ["trunk (ViT encoder)", *(["pixel decoder"] if cfg.train_reconstruction else []),
             *(["CLIP text tower"] if cfg.train_clip else [])]
    diffusers_usage = f"""
### diffusers

The `{DIFFUSERS_SUBFOLDER}/` folder holds the encoder, bottleneck and pixel decoder as a diffusers autoencoder
(`AutoencoderVTP`, images in [-1, 1]); its code is in the folder, so openvtp need not be installed:

```python
from diffusers import AutoModel

vae = AutoModel.from_pretrained("{repo_id}", subfolder="{DIFFUSERS_SUBFOLDER}", trust_remote_code=True)
latents = vae.encode(images).latent          # (B, {cfg.vision_feature_bottleneck}, H/{cfg.vision_patch_size}, W/{cfg.vision_patch_size})
images = vae.decode(latents).sample
```
""" if has_diffusers else ""
    text = f"""---
{data.to_yaml()}
---

# {name}

A VTP visual tokenizer (arXiv 2512.13687) in the openvtp format: a ViT auto-encoder whose latents
({latent}) are made for latent diffusion, pre-trained with contrastive, self-supervised and reconstruction
objectives. Parts: {", ".join(parts)}; image size {cfg.image_size}; encoder {cfg.vision_embed_dim}/{cfg.vision_depth}/{cfg.vision_num_heads}
(width/depth/heads){f", decoder {cfg.decoder_embed_dim}/{cfg.decoder_depth}/{cfg.decoder_num_heads}" if cfg.train_reconstruction else ""}.

## Training

{_training_section(model, records)}

## Evaluation

{_figures_table(results)}

## Usage

### openvtp

```python
import openvtp

model = openvtp.create_model("{repo_id}")    # or openvtp.VTPModel.from_pretrained("{repo_id}")
latents = model.encode(images)               # images in [0, 1], (B, 3, H, W)
recon = model.decode(latents)
```

```bash
openvtp reconstruct {repo_id} photo.png --out recon
```
{diffusers_usage}
## Licence

Apache-2.0.

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(text)


def stage_folder(model, model_dir: Path | None, out: Path, repo_id: str, results_files: list[Path],
                 latents_stats: dict | None) -> Path:
    """Write what `push` uploads into `out`: openvtp format, `diffusers/` (when the model has a pixel decoder),
    README.md."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / ".openvtp")
    for f in (out / ".openvtp").iterdir():
        f.replace(out / f.name)
    (out / ".openvtp").rmdir()
    has_diffusers = model.config.train_reconstruction
    if has_diffusers:
        from .diffusers_export import save_diffusers

        save_diffusers(model, out / DIFFUSERS_SUBFOLDER, latents_stats)
    elif (out / DIFFUSERS_SUBFOLDER).exists():
        shutil.rmtree(out / DIFFUSERS_SUBFOLDER)
    make_card(model, model_dir, repo_id, results_files, has_diffusers).save(out / "README.md")
    return out


def upload(folder: Path, repo_id: str, private: bool) -> str:
    """Create (or reuse) the model repository and upload `folder`; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message="Upload VTP tokenizer with openvtp")
    except (HfHubHTTPError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OpenVTPError(f"cannot upload to {repo_id} (logged in? `hf auth login` or HF_TOKEN): {reason}") from None
    return str(getattr(info, "commit_url", info))
