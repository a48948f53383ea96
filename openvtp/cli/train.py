"""Training commands: `pretrain` and `demo` (the main job)."""
from __future__ import annotations

import json
from pathlib import Path

from openvtp.errors import Interrupted, OpenVTPError

from .common import output_folder


def cmd_pretrain(args) -> None:
    from openvtp.config.load import load_config
    from openvtp.config.schema import PretrainConfig, validate

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    validate(cfg)  # before torch is imported; pretrain() checks again with the real world size
    output_folder(cfg.train.out_dir, "train.out_dir")
    from openvtp.train.loop import pretrain

    summary = pretrain(cfg)
    if summary:
        print(json.dumps(summary, indent=2))


def cmd_demo(args) -> None:
    """The main job on the embedded data: pre-train the `demo` preset (stage 1), fine-tune its decoder
    (stage 2, `decoder-demo`), report held-out figures, then train a DiT on the latents and report
    generation figures (`--generation-budget 0` skips that). Overrides starting with `decoder.` go to
    stage 2, the rest to stage 1; both configs are validated before any work starts."""
    from openvtp.config.load import load_config
    from openvtp.config.schema import FinetuneDecoderConfig, PretrainConfig, validate, validate_finetune

    if args.generation_budget < 0:
        raise OpenVTPError(f"--generation-budget must be >= 0 seconds, got {args.generation_budget}")
    stage2_overrides = [o.removeprefix("decoder.") for o in args.overrides if o.startswith("decoder.")]
    stage1_overrides = [o for o in args.overrides if not o.startswith("decoder.")]
    cfg = load_config(PretrainConfig, "demo", [f"train.out_dir={args.out}", *stage1_overrides])
    out = Path(args.out)
    dcfg = load_config(FinetuneDecoderConfig, "decoder-demo",
                       [f"init={out}", f"train.out_dir={out / 'decoder'}", f"train.seed={cfg.train.seed}",
                        *stage2_overrides])
    validate(cfg)
    validate_finetune(dcfg)
    output_folder(out, "--out")
    from openvtp.train.checkpoint import write_json_atomic
    from openvtp.train.decoder_finetune import finetune_decoder
    from openvtp.train.loop import pretrain

    summary = pretrain(cfg)
    try:
        stage2 = finetune_decoder(dcfg)
    except Interrupted as e:  # stage 1 is done: resuming the demo resumes stage 2 (stage 1 resumes at its end)
        raise Interrupted(e.signum, e.saved, ("train.resume=latest", "decoder.train.resume=latest")) from None
    held = summary.get("heldout", {})
    if "psnr" in stage2.get("heldout", {}):
        held["psnr_decoder_finetuned"] = stage2["heldout"]["psnr"]
    summary["decoder_finetune"] = {"steps": stage2["steps"], "train_time_s": stage2["train_time_s"],
                                   "tokenizer": stage2["tokenizer"]}
    write_json_atomic(summary, out / "summary.json")

    lines = [f"openvtp demo: {summary['steps']} pre-training steps in {summary['train_time_s']:.0f}s, "
             f"{stage2['steps']} decoder fine-tuning steps in {stage2['train_time_s']:.0f}s -> {out}"]
    for key in ("shape", "colour"):
        if f"zeroshot_{key}" in held:
            lines.append(f"  zero-shot {key:<6} on unseen (shape, colour) pairs: {held[f'zeroshot_{key}']:.1f}% "
                         f"(chance {held[f'zeroshot_{key}_chance']:.1f}%)")
    if "knn_shape" in held:
        lines.append(f"  kNN shape accuracy: {held['knn_shape']:.1f}% (bank of seen pairs: features led by colour "
                     "score below chance)")
    if "psnr" in held:
        tuned = (f"{held['psnr_decoder_finetuned']:.2f} dB after decoder fine-tuning, "
                 if "psnr_decoder_finetuned" in held else "")
        lines.append(f"  reconstruction PSNR: {tuned}{held['psnr']:.2f} dB after pre-training (per-patch mean-colour "
                     f"baseline {held['psnr_patch_mean_baseline']:.2f} dB)")
    if args.generation_budget > 0:
        from openvtp.generation.demo import run_generation_demo

        gen = run_generation_demo(stage2["tokenizer"], args.out, time_budget_s=args.generation_budget,
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
    if "reconstructions" in stage2 and "reconstructions" in summary:
        lines.append(f"  reconstruction grids: {stage2['reconstructions']} (fine-tuned decoder), "
                     f"{summary['reconstructions']} (pre-training)")
    lines.append(f"  summary: {out / 'summary.json'}  tensorboard: {out / 'tensorboard'}")
    print("\n" + "\n".join(lines))


def cmd_finetune_decoder(args) -> None:
    from openvtp.config.load import load_config
    from openvtp.config.schema import FinetuneDecoderConfig, validate_finetune

    cfg = load_config(FinetuneDecoderConfig, args.config, [f"init={args.model}", *args.overrides])
    validate_finetune(cfg)
    output_folder(cfg.train.out_dir, "train.out_dir")
    from openvtp.train.decoder_finetune import finetune_decoder

    summary = finetune_decoder(cfg)
    if summary:
        print(json.dumps(summary, indent=2))


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train a VTP tokenizer (torchrun for several processes)")
    p.add_argument("--config", required=True, help="preset name (demo, vtp-s, vtp-b, vtp-l) or YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 ssl.weight=0")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("demo", help="the main job on the embedded data (what `make demo` runs)")
    p.add_argument("--out", default="runs/demo", help="output folder (stage 2 in OUT/decoder, generation in "
                                                        "OUT/generation)")
    p.add_argument("--generation-budget", type=float, default=660.0,
                   help="seconds for the generation half (latents, judge, DiT, samples); 0 skips it")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the demo preset")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("finetune-decoder", help="stage 2: freeze the encoder, fine-tune the decoder with L1 + LPIPS + GAN")
    p.add_argument("model", help="stage-1 tokenizer: pretrain run folder, model folder or hub id")
    p.add_argument("--config", default="decoder-demo", help="preset name (decoder-demo) or YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. gan.start_step=500 train.steps=2000")
    p.set_defaults(func=cmd_finetune_decoder)
