"""Training commands: `pretrain` and `demo` (the main job)."""
from __future__ import annotations

import json
from pathlib import Path


def cmd_pretrain(args) -> None:
    from openvtp.config.load import load_config
    from openvtp.config.schema import PretrainConfig
    from openvtp.train.loop import pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    summary = pretrain(cfg)
    if summary:
        print(json.dumps(summary, indent=2))


def cmd_demo(args) -> None:
    """The main job on the embedded data: pre-train the `demo` preset, then report held-out figures."""
    from openvtp.config.load import load_config
    from openvtp.config.schema import PretrainConfig
    from openvtp.train.loop import pretrain

    cfg = load_config(PretrainConfig, "demo", [f"train.out_dir={args.out}", *args.overrides])
    summary = pretrain(cfg)
    held = summary.get("heldout", {})
    print(f"\nopenvtp demo: {summary['steps']} steps in {summary['train_time_s']:.0f}s -> {args.out}")
    for key in ("shape", "colour"):
        if f"zeroshot_{key}" in held:
            print(f"  zero-shot {key:<6} on unseen (shape, colour) pairs: {held[f'zeroshot_{key}']:.1f}% "
                  f"(chance {held[f'zeroshot_{key}_chance']:.1f}%)")
    if "knn_shape" in held:
        print(f"  kNN shape accuracy: {held['knn_shape']:.1f}%")
    if "psnr" in held:
        print(f"  reconstruction PSNR: {held['psnr']:.2f} dB (per-patch mean-colour baseline "
              f"{held['psnr_patch_mean_baseline']:.2f} dB)")
    print(f"  summary: {Path(args.out) / 'summary.json'}  tensorboard: {Path(args.out) / 'tensorboard'}")


def cmd_finetune_decoder(args) -> None:
    from openvtp.config.load import load_config
    from openvtp.config.schema import FinetuneDecoderConfig
    from openvtp.train.decoder_finetune import finetune_decoder

    summary = finetune_decoder(load_config(FinetuneDecoderConfig, args.config, [f"init={args.model}", *args.overrides]))
    if summary:
        print(json.dumps(summary, indent=2))


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train a VTP tokenizer (torchrun for several processes)")
    p.add_argument("--config", required=True, help="preset name (demo, vtp-s, vtp-b, vtp-l) or YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 ssl.weight=0")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("demo", help="the main job on the embedded data (what `make demo` runs)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the demo preset")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("finetune-decoder", help="stage 2: freeze the encoder, fine-tune the decoder with L1 + LPIPS + GAN")
    p.add_argument("model", help="stage-1 tokenizer: pretrain run folder, model folder or hub id")
    p.add_argument("--config", default="decoder-demo", help="preset name (decoder-demo) or YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. gan.start_step=500 train.steps=2000")
    p.set_defaults(func=cmd_finetune_decoder)
