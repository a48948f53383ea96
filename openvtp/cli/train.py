"""Training commands: `pretrain` and `demo` (the main job)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from openvtp.errors import OpenVTPError

from .common import PRINT_CONFIG_HELP, config_args, non_negative_int, output_folder, positive_int, print_config, \
    run_training

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

    data = _data_plan(args)
    plan = plan_demo(args.out, args.overrides, data)
    if args.print_config:
        return _print_plan(plan, **({"data": data.labelled.meta()} if data else {}))
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


DATA_FLAGS = (("--size", "size"), ("--heldout-fraction", "heldout_fraction"), ("--split-seed", "split_seed"),
              ("--classnames", "classnames"), ("--fid-weights", "fid_weights"))


def _data_args(p) -> None:
    g = p.add_argument_group("a labelled image set instead of the embedded scenes (docs/study.md, 'Your own data')")
    g.add_argument("--data", help="a folder of class folders (with train/ and val/, or one folder split by "
                                  "--heldout-fraction), webdataset shards with .cls labels (a .tar, a brace pattern "
                                  "or a folder of .tar), or sklearn-digits")
    g.add_argument("--size", type=positive_int, help="image side in px; default: the data's, rounded to the patch")
    g.add_argument("--heldout-fraction", type=float, help="share of each class held out when the data has no val/ "
                                                          "split (default: 0.2)")
    g.add_argument("--split-seed", type=non_negative_int, help="draws that held-out share (default: 0)")
    g.add_argument("--classnames", help="the class names, for captions and zero-shot: a text file with one a line, or "
                                        "a comma-separated list (default: the class folders' names)")
    g.add_argument("--fid-weights", help="the standard FID Inception weights file: Inception FID beside the judge's "
                                         "figures (default: skipped)")


def _data_plan(args):
    """The labelled set `--data` names, prepared under OUT/data; None for the embedded data."""
    if not args.data:
        given = next((flag for flag, key in DATA_FLAGS if getattr(args, key) is not None), None)
        if given:
            raise OpenVTPError(f"{given} needs --data (the embedded scenes have fixed settings)")
        return None
    from openvtp.demo.labelled import LabelledRequest
    from openvtp.demo.labelled_settings import open_data

    request = LabelledRequest(args.data, args.size, 0.2 if args.heldout_fraction is None else args.heldout_fraction,
                              args.split_seed or 0, args.classnames)
    return open_data(request, Path(args.out) / "data", args.fid_weights or "")


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
    data = _data_plan(args)
    if args.print_config:
        from openvtp.demo.run import plan_demo
        from openvtp.experiments.study import VARIANTS, cell_overrides, check_overrides, study_cells

        check_overrides(args.overrides)
        cells = study_cells(variants, steps, seeds)
        grid = {"out": args.out, "variants": {v: list(VARIANTS[v]) for v in variants}, "tokenizer_steps": steps,
                "seeds": seeds, "jobs": args.jobs, "cells": [c.name for c in cells]}
        first = cells[0]  # every cell is this plan with its own variant, steps and seed
        return _print_plan(plan_demo(Path(args.out) / "cells" / first.name, cell_overrides(first, args.overrides),
                                     data), study=grid, **({"data": data.labelled.meta()} if data else {}))
    output_folder(args.out, "--out")
    result = run_study(args.out, variants, steps, seeds, args.overrides, jobs=args.jobs, data=data)
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
    _data_args(p)
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
    _data_args(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("finetune-decoder",
                       help="stage 2: freeze the encoder, fine-tune the decoder with L1 + LPIPS + GAN")
    p.add_argument("model", help="stage-1 tokenizer: pretrain run folder, model folder or hub id")
    config_args(p, "preset name (decoder-demo) or YAML file",
                "dotted overrides, e.g. gan.start_step=500 train.steps=2000", default="decoder-demo")
    p.set_defaults(func=cmd_finetune_decoder)
