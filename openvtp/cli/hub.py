"""Commands that hand a tokenizer to other tools: `export` (openvtp or diffusers format), `push` (the Hub)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from openvtp.errors import OpenVTPError

from .common import output_folder
from .model import load_model, model_arg

FORMATS = ("diffusers", "openvtp")


def read_stats(path: str | None):
    if path is None:
        return None
    from openvtp.generation.latents import load_latent_stats

    return load_latent_stats(path)


def local_dir(name: str) -> Path | None:
    path = Path(name)
    return path if path.is_dir() else None


def cmd_export(args) -> None:
    import json

    stats = read_stats(args.latents_stats)
    model = load_model(args.model, args.revision)
    out = output_folder(args.out, "--out")
    if args.format == "diffusers":
        from openvtp.integrations.diffusers_export import save_diffusers

        save_diffusers(model, out, stats)
    else:
        model.save_pretrained(out)
        if stats is not None:
            (out / "latents_stats.json").write_text(json.dumps(
                {k: v.flatten().tolist() for k, v in stats.items()}, indent=2) + "\n")
    print(f"{args.model} -> {out} ({args.format} format)")


def cmd_push(args) -> None:
    from openvtp.integrations.hub import stage_folder, upload

    if args.repo_id.count("/") != 1 or args.repo_id.startswith(("/", ".")):
        raise OpenVTPError(f"REPO_ID must be owner/name, got {args.repo_id!r}")
    results = [Path(r) for r in args.results]
    for r in results:
        if not r.is_file():
            raise OpenVTPError(f"--results {r}: no such file")
    if args.dry_run and args.out is None:
        raise OpenVTPError("--dry-run needs --out DIR (the folder it would upload)")
    stats = read_stats(args.latents_stats)
    model = load_model(args.model, args.revision)
    if args.out is not None:
        folder = stage_folder(model, local_dir(args.model), output_folder(args.out, "--out"), args.repo_id,
                              results, stats)
        if args.dry_run:
            print(f"dry run: {folder} holds what would be uploaded to {args.repo_id}")
            return
        print(f"uploaded: {upload(folder, args.repo_id, args.private)}")
        return
    with tempfile.TemporaryDirectory(prefix="openvtp-push-") as tmp:
        folder = stage_folder(model, local_dir(args.model), Path(tmp), args.repo_id, results, stats)
        print(f"uploaded: {upload(folder, args.repo_id, args.private)}")


def register(sub) -> None:
    p = sub.add_parser("export", help="write a tokenizer in the openvtp or diffusers (AutoencoderVTP) format")
    model_arg(p)
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="diffusers: config.json + diffusion_pytorch_model.safetensors + the model's code "
                        "(AutoModel.from_pretrained(..., trust_remote_code=True)); openvtp: config.json + "
                        "model.safetensors")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--latents-stats", default=None,
                   help="latents_stats.pt (or a folder with one, from extract-latents): per-channel "
                        "latents_mean / latents_std in the diffusers config")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("push", help="upload a tokenizer (openvtp format, diffusers/ subfolder, model card) "
                                    "to the Hugging Face Hub")
    model_arg(p)
    p.add_argument("repo_id", metavar="REPO_ID", help="owner/name of the model repository")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--results", action="append", default=[], metavar="RESULTS_JSON",
                   help="an `openvtp eval` results.json whose figures go into the card (repeatable)")
    p.add_argument("--latents-stats", default=None, help="latents_stats.pt for the diffusers config")
    p.add_argument("--dry-run", action="store_true", help="write the folder to --out and upload nothing")
    p.add_argument("--out", default=None, help="folder to stage the upload in (default: a temporary one)")
    p.set_defaults(func=cmd_push)
