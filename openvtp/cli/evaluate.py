"""Evaluation commands: `eval` (the task suite on one or more tokenizers) and `fid` (image folders and statistics)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from openvtp.errors import OpenVTPError

from .common import non_negative_int, output_folder, positive_int, precision_arg

ALL_TASKS = "zeroshot,linprobe,knn,retrieval,recon"
VTP_TASKS = "zeroshot,linprobe,recon"  # the tasks VTP's tools/ scripts have


def _list(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _preprocess(text: str) -> dict[str, str]:
    out = {}
    for item in _list(text):
        if "=" not in item:
            raise OpenVTPError(f"--preprocess expects GROUP=METHOD items (e.g. recon=adm,probe=crop), got {item!r}")
        group, method = (s.strip() for s in item.split("=", 1))
        out[group] = method
    return out


def cmd_eval(args) -> None:
    from openvtp.eval.options import EvalOptions, check_data_spec
    from openvtp.models.hub import resolve_model_dir

    opts = EvalOptions(
        tasks=tuple(_list(args.tasks or (VTP_TASKS if args.protocol == "vtp" else ALL_TASKS))),
        protocol=args.protocol, explicit_tasks=args.tasks is not None, size=args.size,
        preprocess=_preprocess(args.preprocess),
        crop_pct=args.crop_pct, limit=args.limit, train_limit=args.train_limit, train_data=args.train_data,
        classnames=args.classnames, templates=args.templates, linprobe=tuple(_list(args.linprobe)),
        probe_epochs=args.probe_epochs, probe_batch=args.probe_batch, probe_epoch_length=args.probe_epoch_length,
        knn_k=args.knn_k,
        knn_temperature=args.knn_temperature, fid_weights=args.fid_weights, lpips=args.lpips, lpips_net=args.lpips_net,
        batch_size=args.batch_size, workers=args.workers, chunk_size=args.chunk_size, grid=args.grid,
        device=args.device, precision=args.precision, progress=not args.no_progress, cache_dir=args.cache,
        seed=args.seed)
    invoked = sys.argv and sys.argv[0].endswith(("openvtp", "__main__.py"))  # not when main() is called in-process
    command = "openvtp " + shlex.join(sys.argv[1:]) if invoked else "openvtp eval " + shlex.join(args.models)
    check_data_spec(args.data, args.train_data, args.classnames)
    for spec in args.models:  # a wrong path fails before torch is imported; hub ids are fetched here
        resolve_model_dir(spec, args.revision)
    output_folder(args.out, "--out")
    if args.cache:
        output_folder(args.cache, "--cache")
    from openvtp.eval.report import notes
    from openvtp.eval.suite import evaluate

    done = evaluate(args.models, args.data, opts, args.out, _list(args.names) or None, command, args.revision)
    if done is None:  # a torchrun rank other than 0
        return
    payload, table = done
    print(table)
    for line in notes(payload["results"]):
        print(f"  {line}")
    out = Path(args.out)
    extra = [f for f in ("comparison.png",) if (out / f).is_file()]
    extra += sorted(payload.get("figures", {}).get("recon_grids", {}).values())
    print(f"results: {out / 'results.json'}, {out / 'results.md'}" + "".join(f", {out / f}" for f in extra))


def _is_stats(path: Path) -> bool:
    import numpy as np

    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return "mu" in data and "sigma" in data
    except (OSError, ValueError) as e:
        raise OpenVTPError(f"cannot read {path}: {e}") from None


def cmd_fid(args) -> None:
    sides = [Path(args.a)] + ([Path(args.b)] if args.b else [])
    if args.b is None and not args.save_stats:
        raise OpenVTPError("give two image sets / statistics files to compare, or one with --save-stats OUT.npz")
    for path in sides:
        if not (path.is_dir() or (path.is_file() and path.suffix == ".npz")):
            raise OpenVTPError(f"not a folder of images or an .npz (statistics or ADM images): {path}")
    if args.save_stats and _is_stats(sides[0]):
        raise OpenVTPError(f"{sides[0]} already holds statistics; --save-stats needs images")
    if args.fid_weights not in ("auto", "random") and not Path(args.fid_weights).is_file():
        raise OpenVTPError(f"--fid-weights: file not found: {args.fid_weights} (or use auto, random)")
    if args.save_stats:
        output_folder(Path(args.save_stats).absolute().parent, "--save-stats")
    from openvtp.eval.fid import (
        InceptionFeatures,
        feature_statistics,
        frechet_distance,
        image_set_features,
        load_stats,
        save_stats,
    )
    from openvtp.eval.suite import check_device

    device = None if check_device(args.device) == "auto" else args.device
    extractor = None
    stats, info = [], []
    for path in sides:
        if _is_stats(path):
            stats.append(load_stats(path))
            info.append({"path": str(path), "statistics": True})
            continue
        if extractor is None:
            extractor = InceptionFeatures(args.fid_weights, device=device, batch_size=args.batch_size)
        feats, skipped = image_set_features(path, extractor, args.batch_size)
        stats.append(feature_statistics(feats))
        info.append({"path": str(path), "images": len(feats), "skipped_images": skipped})
    result = {"weights": args.fid_weights, "sides": info}
    if args.save_stats:
        import os

        from openvtp.runtime.files import temp_file

        target = Path(args.save_stats)
        fd, tmp = temp_file(target.absolute().parent, target.name)
        os.close(fd)
        try:
            save_stats(tmp, *stats[0])
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        result["saved_stats"] = str(target)
    if len(stats) == 2:
        result["fid"] = frechet_distance(*stats[0], *stats[1])
    if args.fid_weights == "random":
        print("warning: random Inception weights (--fid-weights random): the number is only good for tests",
              file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for side in info:
        what = "statistics" if side.get("statistics") else f"{side['images']} images, {side['skipped_images']} skipped"
        print(f"{side['path']}: {what}")
    if "saved_stats" in result:
        print(f"statistics of {info[0]['path']} written to {result['saved_stats']}")
    if "fid" in result:
        print(f"FID {result['fid']:.4f}")


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate tokenizers: zero-shot, linear probe, kNN, retrieval, reconstruction")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="checkpoint folders or hub ids (several: one column each)")
    p.add_argument("--data", required=True,
                   help="embedded | folder with train/ and val/ class folders | folder of class folders | folder of "
                        "images | captions .csv/.jsonl | webdataset .tar shards (brace patterns allowed)")
    p.add_argument("--tasks", default=None,
                   help=f"comma-separated subset of {ALL_TASKS}; default: all, skipping what a model or the data "
                        "cannot do (a task named here that no model can run is an error)")
    p.add_argument("--protocol", default="openvtp", choices=("openvtp", "vtp"),
                   help="openvtp (default) or vtp: VTP's tools/ scripts for zeroshot, linprobe and recon (default "
                        f"tasks then {VTP_TASKS}; knn and retrieval, when asked, keep openvtp's protocol)")
    p.add_argument("--out", default="runs/eval", help="output folder: results.json, results.md, PNGs, feature cache")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="at most N images per split (a fixed random subset)")
    p.add_argument("--train-limit", type=positive_int, default=None, help="at most N images of the probe train split")
    p.add_argument("--train-data", default=None, help="class-folder train split for the probes when --data has none")
    p.add_argument("--names", default=None, help="comma-separated column names, one per MODEL")
    p.add_argument("--revision", default=None, help="hub revision for hub ids")
    p.add_argument("--size", type=positive_int, default=None, help="resolution (default: each model's image_size)")
    p.add_argument("--preprocess", default="",
                   help="per task group, e.g. recon=adm,zeroshot=squash,retrieval=squash,probe=crop "
                        "(methods: adm, squash, crop, none; these are the defaults for files)")
    p.add_argument("--crop-pct", type=float, default=0.875, help="crop method: resize to size/crop_pct, then crop")
    p.add_argument("--classnames", default=None, help="file with one class name per line, in label order")
    p.add_argument("--templates", default=None, help='file with one zero-shot template per line, "{}" for the name')
    p.add_argument("--linprobe", default="simple,dinov2", help="linear-probe protocols: simple, dinov2 or both")
    p.add_argument("--probe-epochs", type=positive_int, default=10, help="linear probe (simple protocol) epochs")
    p.add_argument("--probe-batch", type=positive_int, default=None,
                   help="linear probe batch (default: 1024, or N/20 on sets under ~20k images; --protocol vtp: 128)")
    p.add_argument("--probe-epoch-length", type=non_negative_int, default=0,
                   help="--protocol vtp: probe iterations per epoch (0: VTP's 1250, at most one pass over the train "
                        "split)")
    p.add_argument("--knn-k", type=positive_int, default=20, help="kNN neighbours")
    p.add_argument("--knn-temperature", type=float, default=0.07, help="kNN vote temperature: exp(sim / T)")
    p.add_argument("--fid-weights", default="auto",
                   help="FID Inception: auto (torch hub cache, fetched when online), PATH, none, random (tests only)")
    p.add_argument("--lpips", default="auto", help="LPIPS trunk: auto (cached or fetched), none, random (tests only)")
    p.add_argument("--lpips-net", default=None, choices=("alex", "vgg"),
                   help="LPIPS network (default: alex, or vgg with --protocol vtp as VTP's script)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="image-reading processes (default: CPUs - 1, max 8)")
    p.add_argument("--chunk-size", type=positive_int, default=1024, help="images per feature-cache chunk (resume unit)")
    p.add_argument("--grid", type=non_negative_int, default=8, help="image pairs in the reconstruction grid PNG (0: none)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    precision_arg(p, "auto: bf16 on CUDA except where --protocol vtp runs float32, float32 on CPU")
    p.add_argument("--cache", default=None, help="feature cache folder (default: OUT/cache)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit subsets and the probes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("fid", help="FID between two image sets / statistics files, or write a folder's statistics")
    p.add_argument("a", metavar="A", help="image folder, ADM .npz images, or .npz statistics (mu, sigma)")
    p.add_argument("b", metavar="B", nargs="?", default=None, help="the same kinds as A")
    p.add_argument("--save-stats", default=None, metavar="OUT.npz", help="write A's mu/sigma (ADM/pytorch-fid layout)")
    p.add_argument("--fid-weights", default="auto",
                   help="FID Inception: auto (torch hub cache, fetched when online), PATH (.pth/.safetensors), "
                        "random (tests only)")
    p.add_argument("--batch-size", type=positive_int, default=50, help="images per Inception forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_fid)
