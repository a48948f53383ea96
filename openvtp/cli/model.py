"""Commands on one tokenizer: `info`, `reconstruct`, `zeroshot`."""
from __future__ import annotations

import json
from pathlib import Path

from openvtp.errors import OpenVTPError


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


def cmd_reconstruct(args) -> None:
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from openvtp.data.image_io import read_image, save_image

    model = load_model(args.model, args.revision)
    size = args.size or model.config.image_size
    p = model.config.vision_patch_size
    if size % p:
        raise OpenVTPError(f"--size {size} is not a multiple of the patch size {p}")
    out = Path(args.out)
    images = [read_image(path, size, mode="crop") for path in args.images]  # read all first: fail before work
    for path, img in zip(args.images, images):
        x = img.float().div(255).unsqueeze(0)
        with torch.inference_mode():
            rec = model.decode(model.encode(x))
        psnr = peak_signal_noise_ratio(rec, x, data_range=1.0).item()
        target = out / f"{Path(path).stem}_recon.png"
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
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=None, help="resize + centre crop to this size (default: config)")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("zeroshot", help="zero-shot label probabilities for one image")
    model_arg(p)
    p.add_argument("image")
    p.add_argument("--labels", required=True, help='comma-separated, e.g. "a dog,a cat"')
    p.set_defaults(func=cmd_zeroshot)
