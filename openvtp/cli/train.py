"""Training commands: `pretrain` and `demo` (the main job)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from openvtp.errors import OpenVTPError

from .common import PRINT_CONFIG_HELP, config_args, output_folder, print_config, run_training

# the default study (docs/study.md): the two variants at two tokenizer step counts and two seeds, the most that fits
# the 90 minutes a default may take on 2 cores (66 min idle; a third seed takes about 102)
STUDY_DEFAULTS = {"variants": "ae,vtp", "steps": "250,1000", "seeds": "0,1", "jobs": 2}


def cmd_pretrain(args) -> None:
    from openvtp.config.load import load_config
    from openvtp.config.schema import PretrainConfig, validate

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    validate(cfg)  # before torch is imported; pretrain() checks again with the real world size
    run_training(args, cfg, "pretrain", "openvtp.train.loop:pretrain")


def cmd_demo(args) -> None:
    """The main job on the embedded data: pre-train the `demo` preset (stage 1), fine-tune its decoder
    (stage 2, `decoder-demo`), train a DiT on the latents (`dit-demo`) and judge its samples; every
    config is validated before any work starts."""
    from openvtp.demo.run import plan_demo, report

    plan = plan_demo(args.out, args.overrides)
    if args.print_config:
        return _print_plan(plan)
    output_folder(plan.out, "--out")
    from openvtp.demo.run import run_demo

    summary = run_demo(plan)
    print("\n" + "\n".join(report(summary, plan.out)))
    if not summary["complete"]:
        raise SystemExit(2)


def _print_plan(plan, **extra) -> None:
    from openvtp.demo.run import dit_config

    stages = {"pretrain": plan.pretrain, "decoder": plan.decoder, "generation": plan.generation}
    if plan.generation.enabled:
        stages["dit"] = dit_config(plan.dit_overrides)
    print_config(**extra, **stages)


def _demo_epilog() -> str:
    from dataclasses import fields

    from openvtp.demo.generation_config import GenerationDemoConfig

    keys = "\n".join(f"  generation.{f.name}={str(f.default).lower() if isinstance(f.default, bool) else f.default}"
                     for f in fields(GenerationDemoConfig))
    return ("overrides, one command line for every stage:\n"
            "  KEY=VALUE             pre-training (`demo` preset), e.g. train.seed=1 train.steps=500 eval.images=200\n"
            "  decoder.KEY=VALUE     stage 2, decoder fine-tuning (`decoder-demo`), e.g. decoder.train.steps=500\n"
            "  dit.KEY=VALUE         the DiT (`dit-demo`), e.g. dit.train.steps=2000 dit.sample.cfg_scale=2\n"
            "  generation.KEY=VALUE  the generation half; keys and defaults:\n" + keys +
            "\nEvery stage runs a fixed number of steps; train.time_limit_s (each stage's) is only a safety net.")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OpenVTPError(f"{flag} must be comma-separated integers, got {text!r}") from None


def cmd_study(args) -> None:
    """Every variant x tokenizer steps x seed as a demo run; the table and the figure of the paper's claim."""
    from openvtp.experiments.study import run_study

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    steps, seeds = _int_list(args.tokenizer_steps, "--tokenizer-steps"), _int_list(args.seeds, "--seeds")
    if args.print_config:
        from openvtp.demo.run import plan_demo
        from openvtp.experiments.study import VARIANTS, cell_overrides, check_overrides, study_cells

        check_overrides(args.overrides)
        cells = study_cells(variants, steps, seeds)
        grid = {"out": args.out, "variants": {v: list(VARIANTS[v]) for v in variants}, "tokenizer_steps": steps,
                "seeds": seeds, "jobs": args.jobs, "cells": [c.name for c in cells]}
        first = cells[0]  # every cell is this plan with its own variant, steps and seed
        return _print_plan(plan_demo(Path(args.out) / "cells" / first.name, cell_overrides(first, args.overrides)),
                           study=grid)
    output_folder(args.out, "--out")
    result = run_study(args.out, variants, steps, seeds, args.overrides, jobs=args.jobs)
    incomplete = [c["cell"] for c in result["cells"] if not c["complete"]]
    print(f"\nopenvtp study: {len(result['cells'])} cells -> {args.out}/study.json, study.md, study.png")
    print(Path(args.out, "study.md").read_text())
    if incomplete:
        print(f"WARNING: INCOMPLETE CELLS, a safety net fired: {', '.join(incomplete)}")
        raise SystemExit(2)


def cmd_finetune_decoder(args) -> None:
    from openvtp.config.load import load_config
    from openvtp.config.schema import FinetuneDecoderConfig, validate_finetune

    cfg = load_config(FinetuneDecoderConfig, args.config, [f"init={args.model}", *args.overrides])
    validate_finetune(cfg)
    run_training(args, cfg, "finetune_decoder", "openvtp.train.decoder_finetune:finetune_decoder")


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train a VTP tokenizer (torchrun for several processes)")
    config_args(p, "preset name (demo, vtp-s, vtp-b, vtp-l) or YAML file",
                "dotted overrides, e.g. train.steps=100 ssl.weight=0")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("demo", help="the main job on the embedded data (what `make demo` runs)",
                       epilog=_demo_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run folder; stage 2 writes OUT/decoder, generation "
                                                        "OUT/generation (default: %(default)s)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE, decoder.KEY=VALUE, dit.KEY=VALUE, generation.KEY=VALUE "
                                                "(see below)")
    p.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("study", help="does semantic pre-training make latents better for generation? "
                                      "(variants x tokenizer steps x seeds, each a demo run)",
                       epilog="Overrides are those of `openvtp demo` (see its --help) and apply to every cell; "
                              "the study sets train.steps, train.seed, clip.weight and ssl.weight per cell. A rerun "
                              "into the same --out skips finished cells.")
    p.add_argument("--out", default="runs/study", help="study folder (default: %(default)s)")
    p.add_argument("--variants", default=STUDY_DEFAULTS["variants"],
                   help="from ae, ae-clip, ae-ssl, vtp (default: %(default)s)")
    p.add_argument("--tokenizer-steps", default=STUDY_DEFAULTS["steps"],
                   help="pre-training steps of each tokenizer (default: %(default)s)")
    p.add_argument("--seeds", default=STUDY_DEFAULTS["seeds"], help="(default: %(default)s)")
    p.add_argument("--jobs", type=int, default=STUDY_DEFAULTS["jobs"],
                   help="cells run side by side, one process and one thread each; the figures do not depend on it "
                        "(default: %(default)s)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE, decoder.KEY=VALUE, dit.KEY=VALUE, generation.KEY=VALUE")
    p.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("finetune-decoder",
                       help="stage 2: freeze the encoder, fine-tune the decoder with L1 + LPIPS + GAN")
    p.add_argument("model", help="stage-1 tokenizer: pretrain run folder, model folder or hub id")
    config_args(p, "preset name (decoder-demo) or YAML file",
                "dotted overrides, e.g. gan.start_step=500 train.steps=2000", default="decoder-demo")
    p.set_defaults(func=cmd_finetune_decoder)
