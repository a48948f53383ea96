"""Training commands: `pretrain` and `demo` (the main job)."""
from __future__ import annotations

import json
from pathlib import Path

from openvtp.errors import OpenVTPError


def cmd_pretrain(args) -> None:
    from openvtp.config.load import load_config
    from openvtp.config.schema import PretrainConfig
    from openvtp.train.loop import pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    summary = pretrain(cfg)
    if summary:
        print(json.dumps(summary, indent=2))


def cmd_demo(args) -> None:
    """The main job on the embedded data: pre-train the `demo` preset, report held-out figures, then
    train a DiT on its latents and report generation figures (`--generation-budget 0` skips that)."""
    from openvtp.config.load import load_config
    from openvtp.config.schema import PretrainConfig
    from openvtp.train.loop import pretrain

    if args.generation_budget < 0:
        raise OpenVTPError(f"--generation-budget must be >= 0 seconds, got {args.generation_budget}")
    cfg = load_config(PretrainConfig, "demo", [f"train.out_dir={args.out}", *args.overrides])
    summary = pretrain(cfg)
    held = summary.get("heldout", {})
    lines = [f"openvtp demo: {summary['steps']} pre-training steps in {summary['train_time_s']:.0f}s -> {args.out}"]
    for key in ("shape", "colour"):
        if f"zeroshot_{key}" in held:
            lines.append(f"  zero-shot {key:<6} on unseen (shape, colour) pairs: {held[f'zeroshot_{key}']:.1f}% "
                         f"(chance {held[f'zeroshot_{key}_chance']:.1f}%)")
    if "knn_shape" in held:
        lines.append(f"  kNN shape accuracy: {held['knn_shape']:.1f}% (bank of seen pairs: features led by colour "
                     "score below chance)")
    if "psnr" in held:
        lines.append(f"  reconstruction PSNR: {held['psnr']:.2f} dB (per-patch mean-colour baseline "
                     f"{held['psnr_patch_mean_baseline']:.2f} dB)")
    if args.generation_budget > 0:
        from openvtp.generation.demo import run_generation_demo

        gen = run_generation_demo(Path(args.out) / "tokenizer", args.out, time_budget_s=args.generation_budget,
                                  seed=cfg.train.seed)
        fig = gen["figures"]
        lines.append(f"  generation ({gen['dit']['steps']} DiT steps, {gen['sampling']['samples']} samples "
                     f"conditioned on {gen['condition']}): judge accuracy on the requested shape "
                     f"{100 * fig['generated']['shape_acc']:.1f}% (reconstructions {100 * fig['reconstructed']['shape_acc']:.1f}%, "
                     f"real {100 * fig['real']['shape_acc']:.1f}%, chance {100 * gen['chance']:.1f}%)")
        if fig["generated"].get("colour_acc") is not None:
            lines.append(f"  judge accuracy on the requested colour: generated {100 * fig['generated']['colour_acc']:.1f}% "
                         f"(reconstructions {100 * fig['reconstructed']['colour_acc']:.1f}%, "
                         f"real {100 * fig['real']['colour_acc']:.1f}%)")
        lines.append(f"  Frechet distance in the judge's features: generated {fig['generated']['frechet_probe']:.2f}, "
                     f"reconstructed {fig['reconstructed']['frechet_probe']:.2f}, real {fig['real']['frechet_probe']:.2f}")
        lines.append(f"  sample grid: {gen['grid']}")
    lines.append(f"  summary: {Path(args.out) / 'summary.json'}  tensorboard: {Path(args.out) / 'tensorboard'}")
    print("\n" + "\n".join(lines))


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
    p.add_argument("--generation-budget", type=float, default=660.0,
                   help="seconds for the generation half (latents, judge, DiT, samples); 0 skips it")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the demo preset")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("finetune-decoder", help="stage 2: freeze the encoder, fine-tune the decoder with L1 + LPIPS + GAN")
    p.add_argument("model", help="stage-1 tokenizer: pretrain run folder, model folder or hub id")
    p.add_argument("--config", default="decoder-demo", help="preset name (decoder-demo) or YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. gan.start_step=500 train.steps=2000")
    p.set_defaults(func=cmd_finetune_decoder)
