"""Commands on one tokenizer: `info`, `reconstruct`, `zeroshot`."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from openvtp.errors import OpenVTPError

from .common import output_folder, positive_int, precision_arg


def load_model(name: str, revision: str | None = None):
    from openvtp.models import VTPModel

    return VTPModel.from_pretrained(name, revision=revision)


def cmd_info(args) -> None:
    model = load_model(args.model, args.revision)
    cfg = model.config
    counts = model.param_counts()
    info = {
        "model": args.model,
        "vision": f"{cfg.vision_embed_dim}/{cfg.vision_depth}/{cfg.vision_num_heads} "
                  f"{cfg.vision_ffn_layer} {cfg.vision_norm_layer} patch {cfg.vision_patch_size}",
        "latent": f"{cfg.vision_feature_bottleneck} channels at stride {cfg.vision_patch_size}",
        "decoder": (f"{cfg.decoder_embed_dim}/{cfg.decoder_depth}/{cfg.decoder_num_heads}"
                    if cfg.train_reconstruction else "none"),
        "text": f"{cfg.text_embed_dim}/{cfg.text_depth}/{cfg.text_num_heads}" if cfg.train_clip else "none",
        "image_size": cfg.image_size,
        "params": counts,
        "config": cfg.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    for key in ("model", "vision", "latent", "decoder", "text", "image_size"):
        print(f"{key:>12}: {info[key]}")
    for part, n in counts.items():
        print(f"{'params ' + part:>20}: {n:>13,d}  ({n / 1e6:.1f}M)")


def recon_names(paths: list[str]) -> list[str]:
    """Output names `<stem>_recon.png`; images whose stems collide are named by their path below the folder
    they share (a/x.png, b/x.png -> a_x_recon.png, b_x_recon.png), so no result overwrites another."""
    full = [Path(p).resolve() for p in paths]
    twice = [p for p, n in Counter(full).items() if n > 1]
    if twice:
        raise OpenVTPError(f"image {twice[0]} is given twice")
    stems = Counter(p.stem for p in full)
    common = Path(os.path.commonpath([str(p.parent) for p in full]))
    names = [p.stem if stems[p.stem] == 1 else "_".join(p.relative_to(common).with_suffix("").parts) for p in full]
    clashes = Counter(names)  # a/x.png and a/x.jpg: keep the suffix too
    names = [n if clashes[n] == 1 else "_".join(p.relative_to(common).parts).replace(".", "_")
             for n, p in zip(names, full)]
    clashes = Counter(names)
    if len(clashes) < len(names):
        name = next(n for n, k in clashes.items() if k > 1)
        raise OpenVTPError(f"two images would both be written as {name}_recon.png; rename one")
    return [f"{n}_recon.png" for n in names]


def cmd_reconstruct(args) -> None:
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from openvtp.data.image_io import read_image, save_image
    from openvtp.runtime.precision import LABELS, autocast, resolve

    names = recon_names(args.images)
    model = load_model(args.model, args.revision)
    precision = resolve(args.precision, "cpu")
    size = model.config.resolution(args.size, args.model)
    images = [read_image(path, size, mode="crop") for path in args.images]  # read all first: fail before work
    out = output_folder(args.out, "--out")
    if precision != "fp32":
        print(f"precision: {LABELS[precision]}")
    for path, img, name in zip(args.images, images, names):
        x = img.float().div(255).unsqueeze(0)
        with torch.inference_mode(), autocast("cpu", precision):
            rec = model.decode(model.encode(x)).float()
        psnr = peak_signal_noise_ratio(rec, x, data_range=1.0).item()
        target = out / name
        save_image(torch.cat((x[0], rec[0]), dim=-1), target)
        print(f"{path}: PSNR {psnr:.2f} dB -> {target}")


def cmd_zeroshot(args) -> None:
    import torch

    from openvtp.data.image_io import read_image

    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if len(labels) < 2:
        raise OpenVTPError("--labels needs at least two comma-separated labels")
    model = load_model(args.model, args.revision)
    if not model.config.train_clip:
        raise OpenVTPError(f"{args.model} has no text tower: zero-shot needs train_clip=true")
    size = model.config.image_size
    img = read_image(args.image, size, mode="squash")  # the released zero-shot protocol squashes
    with torch.inference_mode():
        image_features = model.encode_image(img.float().div(255).unsqueeze(0))
        text_features = model.encode_text(labels)
        probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)[0]
    for label, prob in sorted(zip(labels, probs.tolist()), key=lambda t: -t[1]):
        print(f"{prob:7.2%}  {label}")


def model_arg(p) -> None:
    p.add_argument("model", help="checkpoint folder (config.json + model.safetensors) or hub id")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")


def register(sub) -> None:
    p = sub.add_parser("info", help="config summary and parameter counts")
    model_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("reconstruct", help="encode and decode images; write them side by side, print PSNR")
    model_arg(p)
    p.add_argument("images", nargs="+", help="image files (results: OUT/<name>_recon.png)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=positive_int, default=None,
                   help="resize + centre crop to this size (default: the model's image_size)")
    precision_arg(p, "auto: float32 (this command runs on the CPU)")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("zeroshot", help="zero-shot label probabilities for one image")
    model_arg(p)
    p.add_argument("image", help="image file (squashed to the model's image_size)")
    p.add_argument("--labels", required=True, help='comma-separated, e.g. "a dog,a cat"')
    p.set_defaults(func=cmd_zeroshot)
