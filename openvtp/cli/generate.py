"""Generation commands: `extract-latents`, `train-dit`, `sample`, `gfid`, `demo-generation`.

Thin wrappers over `openvtp.generation`; every check that can fail on user input (paths,
config keys, impossible values) runs before the model or data are touched.
"""
from __future__ import annotations

import json
from pathlib import Path

from openvtp.errors import OpenVTPError

from .common import (PRINT_CONFIG_HELP, config_args, non_negative_int, output_folder, positive_int, precision_arg,
                     print_config)

SAMPLE_KEYS = ("sample.", "fid.")


def cmd_extract_latents(args) -> None:
    if args.data != "embedded" and ".tar" not in Path(args.data).name and not Path(args.data).exists():
        raise OpenVTPError(f"--data {args.data}: no such file or folder (or use 'embedded')")
    output_folder(args.out, "--out")
    from openvtp.generation.latents import extract_latents
    from openvtp.generation.sources import open_source
    from openvtp.models import VTPModel

    model = VTPModel.from_pretrained(args.model, revision=args.revision)
    size = model.config.resolution(args.size, args.model)
    dataset, classes = open_source(args.data, size, args.num, args.seed, args.labels)
    out = extract_latents(model, dataset, args.out, image_size=size, batch_size=args.batch_size,
                          shard_size=args.shard_size, stats_num=args.stats_num, seed=args.seed, device=args.device,
                          num_workers=args.workers, precision=args.precision)
    from openvtp.runtime import dist

    if dist.is_main():
        index = json.loads((out / "index.json").read_text())
        if classes is not None:
            index["num_classes"] = classes
            (out / "index.json").write_text(json.dumps(index, indent=2))
        print(f"{index['num_images']} images -> latents {index['latent_shape']} (+ flips, {index['precision']}) "
              f"in {out}" + (f"; {classes} classes: train with data.num_classes={classes}" if classes else ""))


def cmd_train_dit(args) -> None:
    from openvtp.config.load import load_config
    from openvtp.generation.config import GenerationConfig, validate

    cfg = load_config(GenerationConfig, args.config, args.overrides)
    validate(cfg)
    if args.print_config:
        return print_config(train_dit=cfg)
    output_folder(cfg.train.out_dir, "train.out_dir")
    from openvtp.generation.train import train_dit
    from openvtp.runtime import dist

    history = train_dit(cfg)
    if dist.is_main():
        from openvtp.runtime.checkpoint import list_checkpoints

        last = list_checkpoints(cfg.train.out_dir)
        tail = f", last loss {history[-1]:.4f}" if history else " (already finished)"
        print(f"trained {len(history)} steps{tail} -> {last[-1] if last else cfg.train.out_dir}")


def _checkpoint_config(checkpoint: str, overrides: list[str]):
    """The config stored with a DiT checkpoint, with `sample.*` / `fid.*` overrides applied and validated."""
    from openvtp.config.load import load_config
    from openvtp.generation.config import GenerationConfig, validate

    bad = [o for o in overrides if not o.startswith(SAMPLE_KEYS)]
    if bad:
        raise OpenVTPError(f"only sample.* and fid.* settings can be overridden here, got '{bad[0]}'")
    if not Path(checkpoint).is_dir():  # before torch is imported
        raise OpenVTPError(f"no DiT checkpoint at {checkpoint} (expected state.pt or checkpoints/step_*/)")
    from openvtp.generation.sample import resolve_dit_checkpoint

    ckpt = resolve_dit_checkpoint(checkpoint)
    if not (ckpt / "config.yaml").is_file():
        raise OpenVTPError(f"{ckpt} has no config.yaml: not a DiT checkpoint written by openvtp train-dit")
    cfg = load_config(GenerationConfig, str(ckpt / "config.yaml"), overrides, stored=True)
    validate(cfg)
    return ckpt, cfg


def _labels(args, num_classes: int):
    import torch

    if args.labels:
        try:
            labels = [int(v) for v in args.labels.split(",")]
        except ValueError:
            raise OpenVTPError(f"--labels must be comma-separated integers, got {args.labels!r}") from None
        return torch.tensor(labels).repeat_interleave(args.per_class)
    return torch.arange(num_classes).repeat_interleave(args.per_class) if args.per_class > 1 else None


def cmd_sample(args) -> None:
    from dataclasses import replace

    ckpt, cfg = _checkpoint_config(args.checkpoint, args.overrides)
    from openvtp.generation.sample import sample

    scfg = cfg.sample if args.num_samples is None else replace(cfg.sample, num_samples=args.num_samples)
    labels = _labels(args, cfg.data.num_classes)
    tokenizer = args.tokenizer or cfg.data.tokenizer
    if not tokenizer:
        raise OpenVTPError("no tokenizer to decode samples: pass --tokenizer MODEL")
    output_folder(args.out, "--out")
    npz = sample(ckpt, args.out, scfg, tokenizer=tokenizer, labels=labels,
                 device=args.device, grid_nrow=args.per_class if labels is not None else None)
    from openvtp.runtime import dist

    if dist.is_main():
        print(f"{len(labels) if labels is not None else scfg.num_samples} samples ({scfg.method}, "
              f"{scfg.num_steps} steps, shift {scfg.timestep_shift}, cfg {scfg.cfg_scale}) -> {npz}")


def cmd_gfid(args) -> None:
    from dataclasses import replace

    from openvtp.generation.config import validate

    ckpt, cfg = _checkpoint_config(args.checkpoint, args.overrides)
    scfg = cfg.sample if args.num_samples is None else replace(cfg.sample, num_samples=args.num_samples)
    reference = args.reference or cfg.fid.reference
    if not reference:
        raise OpenVTPError("no FID reference: pass --reference (ADM .npz, stats .npz or image folder)")
    if not Path(reference).exists():
        raise OpenVTPError(f"FID reference not found: {reference}")
    tokenizer = args.tokenizer or cfg.data.tokenizer
    if not tokenizer:
        raise OpenVTPError("no tokenizer to decode samples: pass --tokenizer MODEL")
    fcfg = replace(cfg.fid, labels=args.labels) if args.labels else cfg.fid
    validate(replace(cfg, sample=scfg, fid=fcfg))
    weights = args.fid_weights or cfg.fid.weights
    if weights not in ("auto", "random") and not Path(weights).is_file():
        raise OpenVTPError(f"--fid-weights: file not found: {weights} (or use auto, random)")
    for path, flag in ((args.out, "--out"), (args.save_npz, "--save-npz")):
        if path:
            output_folder(Path(path).absolute().parent, flag)
    from openvtp.generation.gfid import gfid
    from openvtp.runtime.checkpoint import write_json_atomic

    result = gfid(ckpt, reference, overrides=scfg, tokenizer=tokenizer, fid_weights=weights,
                  save_npz=args.save_npz, device=args.device, fid=fcfg)
    from openvtp.runtime import dist

    if dist.is_main():
        if args.out:
            write_json_atomic(result, args.out)
        extras = "".join(f", {name} {result[key]:.3f}" for key, name in (
            ("sfid", "sFID"), ("inception_score", "IS"), ("precision", "precision"), ("recall", "recall"))
            if result[key] is not None)
        print(f"gFID-{result['num_samples']} {result['fid']:.3f}{extras} vs {result['reference']} "
              f"({scfg.method} {scfg.num_steps} steps, shift {scfg.timestep_shift}, cfg {scfg.cfg_scale}, "
              f"{result['labels']} labels)")


def cmd_demo_generation(args) -> None:
    from openvtp.config.load import load_config
    from openvtp.demo.run import dit_config, split_overrides
    from openvtp.demo.generation_config import GenerationDemoConfig

    parts = split_overrides(args.overrides)
    if parts["pretrain"] or parts["decoder"]:
        raise OpenVTPError(f"override '{(parts['pretrain'] + parts['decoder'])[0]}': only dit.KEY=VALUE and "
                           "generation.KEY=VALUE apply here")
    demo = load_config(GenerationDemoConfig, None, parts["generation"], prefix="generation.")
    dit_config(parts["dit"])
    if not Path(args.tokenizer).is_dir():
        raise OpenVTPError(f"tokenizer folder not found: {args.tokenizer} (run openvtp demo first)")
    output_folder(args.out, "--out")
    from openvtp.demo.generation import run_generation_demo

    summary = run_generation_demo(args.tokenizer, args.out, demo, seed=args.seed, dit_overrides=parts["dit"])
    f = summary["figures"]
    print(f"\nopenvtp demo-generation: DiT {summary['dit']['steps']} steps, {summary['timing']['total_s']:.0f}s "
          f"-> {Path(args.out) / 'generation'}")
    for key, name in (("shape_acc", "shape accuracy"), ("colour_acc", "colour accuracy"),
                      ("frechet_probe", "Frechet distance (judge features)")):
        if f["generated"][key] is not None:
            print(f"  {name}: generated {f['generated'][key]:.3f}, reconstructed {f['reconstructed'][key]:.3f}, "
                  f"real {f['real'][key]:.3f}")
    if not summary["complete"]:
        print(f"WARNING: INCOMPLETE RUN, the figures above are not the result: {summary['stopped']}")
        raise SystemExit(2)


def _sampling_args(p) -> None:
    p.add_argument("checkpoint", help="DiT checkpoint folder (step_XXXXXXX) or run folder (its newest checkpoint)")
    p.add_argument("--tokenizer", default="", help="VTP checkpoint that decodes the latents (default: data.tokenizer)")
    p.add_argument("--num-samples", type=positive_int, default=None,
                   help="default: sample.num_samples of the checkpoint")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("overrides", nargs="*",
                   help="sample.* / fid.* overrides, e.g. sample.method=heun sample.cfg_scale=2")


def register(sub) -> None:
    p = sub.add_parser("extract-latents", help="encode a dataset (and its flips) to latent shards + latents_stats.pt")
    p.add_argument("model", help="VTP checkpoint folder or hub id")
    p.add_argument("--revision", default=None, help="hub revision")
    p.add_argument("--data", required=True,
                   help="'embedded', a class folder, a .csv/.jsonl caption file, or webdataset .tar shards "
                        "(brace patterns allowed)")
    p.add_argument("--out", required=True, help="output folder (an unfinished one is resumed)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="ADM centre crop side (default: the model's image_size)")
    p.add_argument("--num-images", "--num", dest="num", type=non_negative_int, default=0,
                   help="first N images only, 0: all (embedded: how many scenes; 0 means 50k); under torchrun "
                        "write --num-images: torchrun takes --num for its own --numa-binding")
    p.add_argument("--labels", default="shape", choices=("shape", "shape_colour"),
                   help="embedded data: what the class label is")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--shard-size", type=positive_int, default=10_000, help="images per output shard")
    p.add_argument("--stats-num", type=non_negative_int, default=10_000,
                   help="random latents for the mean/std statistics (0: none)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="data loader workers")
    p.add_argument("--seed", type=int, default=0, help="seed of the statistics' random subset")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    precision_arg(p, "auto: float32 on every device (recorded in index.json)")
    p.set_defaults(func=cmd_extract_latents)

    p = sub.add_parser("train-dit", help="train a LightningDiT on extracted latents (torchrun for several GPUs)")
    config_args(p, "preset (dit-demo, dit-b-1-ablation, dit-xl-1-vtp) or YAML file",
                "dotted overrides, e.g. data.latents_dir=DIR train.steps=1000")
    p.set_defaults(func=cmd_train_dit)

    p = sub.add_parser("demo-generation", help="the demo's generation half alone, on an exported demo tokenizer")
    p.add_argument("tokenizer", help="tokenizer folder, e.g. runs/demo/decoder/tokenizer")
    p.add_argument("--out", default="runs/demo", help="run folder; writes OUT/generation/ (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="latents subset, DiT training and samples (default: 0)")
    p.add_argument("overrides", nargs="*", help="dit.KEY=VALUE (the dit-demo preset, e.g. dit.train.steps=2000) and "
                                                "generation.KEY=VALUE (as in openvtp demo --help)")
    p.set_defaults(func=cmd_demo_generation)

    p = sub.add_parser("sample", help="sample a DiT: PNGs, ADM .npz (arr_0 uint8 NHWC) and grid.png")
    _sampling_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", default="", help="comma-separated classes (default: class-balanced)")
    p.add_argument("--per-class", type=positive_int, default=1,
                   help="samples per listed class, one grid row per class (with no --labels: every class)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("gfid", help="FID, sFID, IS, precision/recall of DiT samples against ADM's reference batch "
                                    "or a folder")
    _sampling_args(p)
    p.add_argument("--reference", default="", help="ADM reference batch / stats .npz, or an image folder")
    p.add_argument("--fid-weights", default="",
                   help="FID Inception: auto, a local file, or random (tests only); default: the checkpoint's "
                        "fid.weights")
    p.add_argument("--labels", default=None,
                   help="class labels: balanced (exact counts) or random (uniform, as LightningDiT); "
                        "default: fid.labels")
    p.add_argument("--save-npz", default=None, help="also write the samples in ADM's .npz layout")
    p.add_argument("--out", default=None, help="write the result as JSON")
    p.set_defaults(func=cmd_gfid)
