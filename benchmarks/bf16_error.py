"""How far bf16 autocast inference (`--precision bf16`) lands from float32: latents, reconstructions, CLIP features.

Encodes the same images twice, in float32 and under bf16 autocast (as `openvtp reconstruct / extract-latents / eval
--precision bf16` do), decodes each run's own latents, and prints: the largest latent difference relative to the
largest float32 latent magnitude, the PSNR of bf16 reconstructions against float32 reconstructions and of each against
the input, and the cosine similarity of the CLIP image features (when the model has a text tower).

    python benchmarks/bf16_error.py --model runs/demo/decoder/tokenizer --images embedded   # a trained checkpoint
    python benchmarks/bf16_error.py --preset vtp-s --size 256 --images random --num 8        # random weights
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from openvtp import VTPConfig, VTPModel
from openvtp.runtime.precision import autocast


def images(kind: str, num: int, size: int) -> torch.Tensor:
    """(num, 3, size, size) in [0, 1]: held-out embedded scenes, or uniform noise (seed 0)."""
    if kind == "embedded":
        from openvtp.demo.scenes import CaptionedScenes

        scenes = CaptionedScenes("heldout", size=size, length=num, seed=0)
        return torch.stack([scenes[i]["image"] for i in range(num)]).float() / 255
    return torch.rand(num, 3, size, size, generator=torch.Generator().manual_seed(0))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, for images in [0, 1]."""
    return -10 * torch.log10((a - b).pow(2).flatten(1).mean(1).clamp_min(1e-20))


def run(model: VTPModel, x: torch.Tensor, precision: str, batch: int) -> dict[str, torch.Tensor]:
    out = {"latents": [], "recon": [], "clip": []}
    with torch.inference_mode(), autocast("cpu", precision):
        for s in range(0, len(x), batch):
            xb = x[s : s + batch]
            z = model.encode(xb)
            out["latents"].append(z.float())
            out["recon"].append(model.decode(z).float())
            if model.config.train_clip:
                out["clip"].append(model.encode_image(xb).float())
    return {k: torch.cat(v) for k, v in out.items() if v}


def compare(fp32: dict, bf16: dict, x: torch.Tensor) -> dict[str, float]:
    z, zb = fp32["latents"], bf16["latents"]
    res = {"latent_max_abs_diff_rel": ((zb - z).abs().max() / z.abs().max()).item(),
           "latent_mean_abs_diff_rel": ((zb - z).abs().mean() / z.abs().mean()).item(),
           "psnr_bf16_vs_fp32": psnr(bf16["recon"], fp32["recon"]).mean().item(),
           "psnr_bf16_vs_fp32_min": psnr(bf16["recon"], fp32["recon"]).min().item(),
           "psnr_fp32_vs_input": psnr(fp32["recon"], x).mean().item(),
           "psnr_bf16_vs_input": psnr(bf16["recon"], x).mean().item()}
    if "clip" in fp32:
        res["clip_cosine_min"] = F.cosine_similarity(bf16["clip"], fp32["clip"]).min().item()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint folder (default: --preset with random weights, seed 0)")
    ap.add_argument("--preset", default="vtp-s")
    ap.add_argument("--size", type=int, default=None, help="resolution (default: the model's image_size)")
    ap.add_argument("--images", default="embedded", choices=("embedded", "random"))
    ap.add_argument("--num", type=int, default=16, help="images (default: 16)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model = VTPModel.from_pretrained(args.model)
    else:
        torch.manual_seed(0)
        model = VTPModel(VTPConfig.preset(args.preset))
    model.eval().requires_grad_(False)
    size = args.size or model.config.image_size
    x = images(args.images, args.num, size)
    res = compare(run(model, x, "fp32", args.batch), run(model, x, "bf16", args.batch), x)
    what = args.model or f"{args.preset} (random weights)"
    print(f"{what}, {args.num} {args.images} images at {size} px, bf16 autocast vs float32:")
    print(f"  latents: max |difference| {100 * res['latent_max_abs_diff_rel']:.2f}% of the largest float32 latent, "
          f"mean {100 * res['latent_mean_abs_diff_rel']:.2f}% of the mean")
    print(f"  reconstructions: bf16 vs float32 PSNR {res['psnr_bf16_vs_fp32']:.1f} dB (worst image "
          f"{res['psnr_bf16_vs_fp32_min']:.1f}); vs the input: float32 {res['psnr_fp32_vs_input']:.2f} dB, "
          f"bf16 {res['psnr_bf16_vs_input']:.2f} dB")
    if "clip_cosine_min" in res:
        print(f"  CLIP image features: cosine similarity >= {res['clip_cosine_min']:.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": what, "images": args.images, "num": args.num, "size": size,
                                               **res}, indent=1))


if __name__ == "__main__":
    main()
