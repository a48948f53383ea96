"""`openvtp study`: VTP's central claim at small scale. Does semantic pre-training make latents better
for generation than reconstruction alone, and does that hold as more compute goes into the tokenizer?

A study is a grid of cells (variant, tokenizer steps, seed). Every cell is one `openvtp demo` run
(the same machinery, `experiments.demo`) with the variant's lambdas: pre-training on the embedded
data, decoder fine-tuning with the same steps for every variant (so each has a decoder of comparable
quality), the same DiT with the same steps, batch and seed on its latents, judged by the same judge
against the same real images. A cell lands in `DIR/cells/<variant>-<steps>-s<seed>/cell.json` when
it completes; a rerun skips completed cells and redoes an unfinished one, and a larger grid adds
cells. `DIR/study.json`, `study.md` and `study.png` are rewritten after every cell. With `--data` the cells run
on a labelled image set instead (prepared once in `DIR/data`, settings from `demo.labelled_settings`), judged by a
classifier of that set (`study_labelled` holds what they report).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from openvtp.errors import Interrupted, OpenVTPError
from openvtp.runtime.checkpoint import write_json_atomic
from openvtp.runtime.machine import label

from openvtp.demo.run import plan_demo, run_demo, split_overrides
from .stats import compare
from .study_labelled import (LABELLED_BOTTOM, LABELLED_COMPARED, LABELLED_METRICS, LABELLED_PANELS, data_header,
                             labelled_cell_result)

if TYPE_CHECKING:
    from openvtp.demo.labelled_settings import DataPlan

log = logging.getLogger("openvtp.study")

# the paper's four tokenizers are two lambdas of the same recipe (the `demo` preset's weights where on)
VARIANTS = {"ae": ("clip.weight=0", "ssl.weight=0"), "ae-clip": ("ssl.weight=0",), "ae-ssl": ("clip.weight=0",),
            "vtp": ()}
# A study cell runs its fixed steps to the end: a wall-clock safety net that fires under load would make a
# cell's figures a function of the machine's load. Off in every stage (the run is resumable instead).
NO_TIME_LIMITS = ("train.time_limit_s=0", "decoder.train.time_limit_s=0", "dit.train.time_limit_s=0")
SET_PER_CELL = ("train.steps", "train.seed", "clip.weight", "ssl.weight", "train.out_dir",
                *(item.split("=")[0] for item in NO_TIME_LIMITS))
SETTINGS = "settings.json"
BULKY = ("checkpoints", "decoder/checkpoints", "generation/dit/checkpoints", "generation/latents")

# the figures a cell reports, by group: (key in cell.json, short name for tables, meaning, higher is better)
METRICS = {
    "generation": [
        ("frechet_generated", "Frechet", "Frechet distance of generated to real images, judge features", False),
        ("frechet_gap", "Frechet gap", "the same minus that of reconstructions of real images (takes the decoder out)",
         False),
        ("shape_acc_generated", "shape %", "judge accuracy on the requested shape, generated images", True),
        ("shape_acc_gap", "shape gap", "the same minus that on reconstructions (points)", True),
        ("colour_acc_generated", "colour %", "judge accuracy on the requested colour, generated images", True),
    ],
    "understanding": [
        ("zeroshot_shape", "zero-shot shape %", "zero-shot shape, held-out unseen pairs (CLIP variants)", True),
        ("probe_shape_latent_seen", "probe shape (latent) %",
         "linear probe on the flattened latent the DiT sees, trained and tested on seen pairs", True),
        ("probe_shape_latent", "same, unseen pairs %", "the same probe tested on the unseen pairs", True),
        ("probe_shape_cls_seen", "probe shape (CLS) %", "linear probe on the last-block CLS, seen pairs", True),
        ("knn_shape", "kNN shape %", "k = 20 nearest train scenes by last-block CLS, unseen pairs", True),
    ],
    "reconstruction": [
        ("psnr", "PSNR dB", "held-out PSNR after decoder fine-tuning", True),
        ("psnr_stage1", "PSNR stage 1 dB", "the same after pre-training alone", True),
        ("psnr_patch_mean_baseline", "baseline dB", "per-patch mean-colour baseline", True),
    ],
}


@dataclass(frozen=True)
class Cell:
    variant: str
    steps: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.steps}-s{self.seed}"


def study_cells(variants: Sequence[str], steps: Sequence[int], seeds: Sequence[int]) -> list[Cell]:
    """Seed-major order, so a study cut short holds every variant and compute at its first seeds; within a
    seed the longest cells first (more steps, then more objectives), so parallel jobs end together."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise OpenVTPError(f"--variants: unknown '{unknown[0]}' (choose from {', '.join(VARIANTS)})")
    if any(s <= 0 for s in steps):
        raise OpenVTPError(f"--tokenizer-steps must be positive, got {','.join(map(str, steps))}")
    order = list(VARIANTS)
    return [Cell(v, n, s) for s in seeds for n in sorted(steps, reverse=True)
            for v in sorted(variants, key=order.index, reverse=True)]


def cell_overrides(cell: Cell, overrides: Sequence[str]) -> list[str]:
    """The demo overrides of a cell: the study's shared ones, then the cell's variant, steps and seed."""
    return [*overrides, *VARIANTS[cell.variant], f"train.steps={cell.steps}", f"train.seed={cell.seed}",
            *NO_TIME_LIMITS]


def check_overrides(overrides: Sequence[str]) -> None:
    split_overrides(overrides)  # the prefixes are the demo's
    for item in overrides:
        if item.split("=", 1)[0] in SET_PER_CELL:
            raise OpenVTPError(f"'{item}': the study sets {item.split('=', 1)[0]} per cell "
                               "(use --variants, --tokenizer-steps, --seeds)")


def _check_settings(out: Path, overrides: Sequence[str], data: DataPlan | None = None) -> None:
    """A study folder holds cells of one set of shared settings (and data); a rerun must not mix in others."""
    path = out / SETTINGS
    mine = {"overrides": list(overrides), **({"data": data.settings()} if data else {})}
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs.get("data") != mine.get("data"):
            said = lambda d: "the embedded data" if d is None else f"--data {d['request']['data']} (digest "\
                f"{d['digest']}, {d['request']})"  # noqa: E731
            raise OpenVTPError(f"{out} holds a study run on {said(theirs.get('data'))}; now: {said(mine.get('data'))}"
                               ": pass the same data flags or another --out")
        if theirs != mine:
            raise OpenVTPError(f"{out} holds a study run with other settings ({' '.join(theirs['overrides']) or 'none'}"
                               f"; now: {' '.join(overrides) or 'none'}): pass the same overrides or another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(mine, path)


def _cell_result(cell: Cell, summary: dict, flops_per_step: int) -> dict:
    held, gen = summary.get("heldout", {}), summary["generation"]
    fig, gap = gen["figures"], gen["gap_to_reconstructed"]
    pct = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731
    return {
        "cell": cell.name, "variant": cell.variant, "tokenizer_steps": cell.steps, "seed": cell.seed,
        "complete": summary["complete"], **({"stopped": summary["stopped"]} if "stopped" in summary else {}),
        "tokenizer_flops": flops_per_step * cell.steps, "tokenizer_flops_per_step": flops_per_step,
        "objectives": summary.get("objectives", {}), "machine": summary.get("machine"),
        "generation": {
            "frechet_generated": fig["generated"]["frechet_probe"], "frechet_reconstructed":
                fig["reconstructed"]["frechet_probe"], "frechet_real": fig["real"]["frechet_probe"],
            "frechet_gap": gap["frechet_probe"],
            "shape_acc_generated": pct(fig["generated"]["shape_acc"]),
            "shape_acc_reconstructed": pct(fig["reconstructed"]["shape_acc"]),
            "shape_acc_gap": pct(gap["shape_acc"]),
            "colour_acc_generated": pct(fig["generated"]["colour_acc"]),
            "colour_acc_gap": pct(gap["colour_acc"]),
            "dit_steps": gen["dit_steps"], "samples": gen["samples"],
        },
        "understanding": {k: v for k, v in held.items() if k.startswith(("zeroshot_", "knn_", "probe_"))
                          and not k.endswith("_chance")},
        "reconstruction": {"psnr": held.get("psnr_decoder_finetuned"), "psnr_stage1": held.get("psnr"),
                           "psnr_patch_mean_baseline": held.get("psnr_patch_mean_baseline")},
        "timing": summary["timing"],
    }


def run_cell(out: Path, cell: Cell, overrides: Sequence[str], flops: dict[str, int], progress: bool = True,
             data: DataPlan | None = None) -> dict:
    """Run one cell (an unfinished folder of it is started again); returns and writes its cell.json."""
    from openvtp.train.flops import pretrain_step_flops

    folder = out / "cells" / cell.name
    if folder.exists():
        shutil.rmtree(folder)
    plan = plan_demo(folder, cell_overrides(cell, overrides), data)
    start = time.perf_counter()
    summary = run_demo(plan, progress=progress, judge_cache=out / "judge")
    if cell.variant not in flops:
        flops[cell.variant] = pretrain_step_flops(plan.pretrain)
    result = (labelled_cell_result if data else _cell_result)(cell, summary, flops[cell.variant])
    result["timing"]["cell_s"] = round(time.perf_counter() - start, 1)
    for bulky in BULKY:  # the exported tokenizers, samples, grids and summaries stay
        shutil.rmtree(folder / bulky, ignore_errors=True)
    write_json_atomic(result, folder / "cell.json")
    return result


def read_cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/cell.json"))]


@dataclass(frozen=True)
class Readout:
    """What a study reports of its cells: the metric groups, the paired comparisons, the figure's six panels and its
    bottom row of paired differences from the AE."""

    metrics: dict
    compared: tuple
    panels: tuple
    bottom: tuple


def aggregate(cells: list[dict], readout: Readout | None = None) -> list[dict]:
    """Per (variant, tokenizer steps): mean, sample std and n over seeds of every metric."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["variant"], c["tokenizer_steps"]), []).append(c)
    rows = []
    for (variant, steps), members in sorted(groups.items(), key=lambda kv: (list(VARIANTS).index(kv[0][0]),
                                                                           kv[0][1])):
        row = {"variant": variant, "tokenizer_steps": steps, "seeds": sorted(c["seed"] for c in members),
               "tokenizer_flops": members[0]["tokenizer_flops"], "complete": all(c["complete"] for c in members)}
        for group, metrics in (readout or EMBEDDED).metrics.items():
            for key, *_ in metrics:
                values = [c[group][key] for c in members if c[group].get(key) is not None]
                row[key] = _mean_std(values)
        rows.append(row)
    return rows


# the figures the paired comparisons report: generation, the latent probe, and reconstruction (the cost side)
COMPARED = (("generation", "frechet_generated"), ("generation", "frechet_gap"), ("generation", "shape_acc_generated"),
            ("generation", "shape_acc_gap"), ("understanding", "probe_shape_latent_seen"), ("reconstruction", "psnr"))


EMBEDDED = Readout(METRICS, COMPARED, ("frechet_generated", "frechet_gap", "shape_acc_generated",
                                      "probe_shape_latent_seen", "zeroshot_shape", "psnr"),
                   ("frechet_generated", "shape_acc_generated", "psnr"))
LABELLED = Readout(LABELLED_METRICS, LABELLED_COMPARED, LABELLED_PANELS, LABELLED_BOTTOM)


def comparisons(cells: list[dict], readout: Readout | None = None) -> dict:
    """Paired over seeds: every pair of variants at equal tokenizer steps (the later variant in VARIANTS order
    minus the earlier, e.g. vtp - ae), and every variant from one step count to the next (larger minus smaller)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for c in cells:
        if c["complete"]:  # a cell whose safety net fired is not a result
            groups.setdefault((c["variant"], c["tokenizer_steps"]), []).append(c)

    def figures(first: list[dict], second: list[dict]) -> dict:
        return {key: compare(first, second, group, key) for group, key in (readout or EMBEDDED).compared}

    pairs, scaling = [], []
    for steps in sorted({s for _, s in groups}):
        present = [v for v in VARIANTS if (v, steps) in groups]
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                pairs.append({"a": a, "b": b, "tokenizer_steps": steps,
                              "figures": figures(groups[(a, steps)], groups[(b, steps)])})
    for variant in VARIANTS:
        steps = sorted(s for v, s in groups if v == variant)
        for lo, hi in zip(steps, steps[1:]):
            scaling.append({"variant": variant, "from_steps": lo, "to_steps": hi,
                            "figures": figures(groups[(variant, lo)], groups[(variant, hi)])})
    return {"pairs": pairs, "scaling": scaling,
            "test": "per-seed differences: mean, 95% Student-t interval, two-sided paired t-test (scipy.stats.ttest_rel)"}


def _fmt_paired(stat: dict | None) -> tuple[str, str, str]:
    """(n, mean [95% CI], p) for a table row."""
    if stat is None:
        return "0", "-", "-"
    ci = "" if stat["ci"] is None else f" [{stat['ci'][0]:+.2f}, {stat['ci'][1]:+.2f}]"
    p = "-" if stat["p"] is None else (f"{stat['p']:.3f}" if stat["p"] >= 0.001 else f"{stat['p']:.1e}")
    return str(stat["n"]), f"{stat['mean']:+.2f}{ci}", p


def paired_markdown(comp: dict, readout: Readout | None = None) -> list[str]:
    short = {key: name for metrics in (readout or EMBEDDED).metrics.values() for key, name, *_ in metrics}
    lines = ["## paired comparisons", "",
             "Per-seed differences (cells at one seed share decoder, DiT and sampling seeds): mean, 95% t-interval, "
             "two-sided paired t-test p-value. Positive means the second named is higher.", "",
             "| comparison | steps | figure | n | difference [95% CI] | p |", "|---|---|---|---:|---:|---:|"]
    for pair in comp["pairs"]:
        for key, stat in pair["figures"].items():
            lines.append(f"| {pair['b']} - {pair['a']} | {pair['tokenizer_steps']} | {short[key]} | "
                         + " | ".join(_fmt_paired(stat)) + " |")
    for row in comp["scaling"]:
        for key, stat in row["figures"].items():
            lines.append(f"| {row['variant']} | {row['to_steps']} - {row['from_steps']} | {short[key]} | "
                         + " | ".join(_fmt_paired(stat)) + " |")
    return lines + [""]


def _mean_std(values: list[float]) -> dict | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": round(mean, 4), "std": None if std is None else round(std, 4), "n": len(values)}


def _fmt(stat: dict | None) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.2f}" if stat["std"] is None else f"{stat['mean']:.2f} +- {stat['std']:.2f}"


def markdown(rows: list[dict], cells: list[dict], readout: Readout | None = None, header: Sequence[str] = ()) -> str:
    readout = readout or EMBEDDED
    lines = ["# openvtp study", "", *header,
             "Mean +- sample std over seeds (n: seeds; one seed: no spread). Tokenizer compute: FLOPs of a pre-training step counted by "
             "torch (forward + backward), times steps.", ""]
    for group, metrics in readout.metrics.items():
        lines += [f"## {group}", "", "| variant | steps | TFLOPs | n | " + " | ".join(m[1] for m in metrics) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(metrics)]
        for r in rows:
            cells_txt = [_fmt(r[k]) for k, *_ in metrics]
            lines.append(f"| {r['variant']} | {r['tokenizer_steps']} | {r['tokenizer_flops'] / 1e12:.1f} | "
                         f"{len(r['seeds'])} | " + " | ".join(cells_txt) + " |")
        lines += [""] + [f"- {short}: {meaning} ({'higher' if better else 'lower'} is better)"
                         for _, short, meaning, better in metrics] + [""]
    lines += paired_markdown(comparisons(cells, readout), readout)
    lines += machines_markdown(cells)
    incomplete = [c["cell"] for c in cells if not c["complete"]]
    if incomplete:
        lines.append(f"**Incomplete cells (a safety net fired; their figures are not results):** {', '.join(incomplete)}")
    return "\n".join(lines) + "\n"


def machines_markdown(cells: list[dict]) -> list[str]:
    """Cells computed on more than one machine kind: which ran where. Another CPU rounds differently, the judge
    included, so a difference between two such cells mixes the variant's effect with the machine's."""
    by_kind: dict[str, list[str]] = {}
    for c in cells:
        by_kind.setdefault(label(c.get("machine")), []).append(c["cell"])
    if len(by_kind) < 2:
        return []
    return ["**Cells from more than one machine kind** (another CPU rounds differently, the judge's features "
            "included):", ""] + [f"- {kind}: {', '.join(names)}" for kind, names in by_kind.items()] + [""]


def plot(rows: list[dict], path: Path, comp: dict | None = None, readout: Readout | None = None) -> None:
    """The paper's figure at this scale: each panel a metric against tokenizer FLOPs, a line per variant
    with the spread over seeds as error bars; generation on top, understanding and reconstruction below; and
    a bottom row of each variant's paired difference from the AE with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    readout = readout or EMBEDDED
    meaning = {key: (short, better) for metrics in readout.metrics.values() for key, short, _, better in metrics}
    colours = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))  # a variant's, in every panel
    fig, axes = plt.subplots(3, 3, figsize=(13, 11))
    for ax, key in zip(axes.flat, readout.panels):
        for variant in VARIANTS:
            pts = [r for r in rows if r["variant"] == variant and r[key] is not None]
            if pts:
                ax.errorbar([r["tokenizer_flops"] for r in pts], [r[key]["mean"] for r in pts],
                            yerr=[r[key]["std"] or 0.0 for r in pts], marker="o", capsize=3, label=variant,
                            color=colours[variant])
        short, better = meaning[key]
        ax.set_title(f"{short} ({'higher' if better else 'lower'} is better)", fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("tokenizer pre-training FLOPs")
        ax.grid(alpha=0.3)
    vs_ae = [pair for pair in (comp or {}).get("pairs", []) if pair["a"] == "ae"]
    for ax, key in zip(axes[2], readout.bottom):
        shown = [(pair, pair["figures"][key]) for pair in vs_ae if pair["figures"][key] is not None]
        for i, (pair, stat) in enumerate(shown):
            low, high = stat["ci"] or (stat["mean"], stat["mean"])
            ax.errorbar([i], [stat["mean"]], yerr=[[stat["mean"] - low], [high - stat["mean"]]], marker="o",
                        capsize=4, color=colours[pair["b"]])
        ax.axhline(0.0, color="grey", lw=1)
        ax.set_xticks(range(len(shown)), [f"{pair['b']}\n{pair['tokenizer_steps']}" for pair, _ in shown],
                      fontsize=8)
        short, better = meaning[key]
        ax.set_title(f"{short}: variant - ae, paired, 95% CI", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[:6]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    fig.suptitle("openvtp study: generation (top), understanding and reconstruction (middle) vs tokenizer compute; "
                 "paired differences from the AE (bottom)", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_outputs(out: Path) -> dict:
    from openvtp.eval.report import write_atomic

    cells = read_cells(out)
    settings = json.loads((out / SETTINGS).read_text())
    readout = LABELLED if "data" in settings else EMBEDDED
    rows = aggregate(cells, readout)
    payload = {"settings": settings, "cells": cells, "aggregate": rows, "comparisons": comparisons(cells, readout)}
    header = []
    if "data" in settings:  # what the data is, how its captions were made, what could not be read
        from openvtp.demo.labelled import META

        meta = json.loads((out / "data" / META).read_text())
        payload = {"data": {k: v for k, v in meta.items() if k != "train_captions"}, **payload}
        header = data_header(payload["data"], cells)
    write_json_atomic(payload, out / "study.json")
    write_atomic(out / "study.md", markdown(rows, cells, readout, header))
    plot(rows, out / "study.png", payload["comparisons"], readout)
    return payload


def run_study(out: str | Path, variants: Sequence[str], steps: Sequence[int], seeds: Sequence[int],
              overrides: Sequence[str] = (), jobs: int = 1, progress: bool = True,
              data: DataPlan | None = None) -> dict:
    """Run every cell of the grid not already in `out`; returns study.json's content.

    jobs > 1 runs that many cells at once, each in its own process (one thread each, as the demo):
    the figures are the same, only the wall time changes. data: a labelled set instead of the embedded scenes,
    prepared once in `out/data` for every cell.
    """
    out = Path(out)
    cells = study_cells(variants, steps, seeds)
    check_overrides(overrides)
    if jobs < 1:
        raise OpenVTPError(f"--jobs must be >= 1, got {jobs}")
    plans = {cell: plan_demo(out / "cells" / cell.name, cell_overrides(cell, overrides), data) for cell in cells}
    if any(not plan.generation.enabled for plan in plans.values()):
        raise OpenVTPError("generation.enabled=false: a study measures generation")
    _check_settings(out, overrides, data)
    from openvtp.runtime.run_folder import release_lock, take_lock

    lock = take_lock(out / "study.lock", "--out")
    try:
        if data:
            from openvtp.demo.labelled_run import prepare

            prepare(data)
        return _run_cells(out, cells, plans, overrides, jobs, progress, data)
    except Interrupted as e:  # the unfinished cell is done again: the same command continues the study
        raise Interrupted(e.signum, f"{e.saved}; finished cells are kept", ()) from None
    finally:
        release_lock(out / "study.lock", lock)


def _run_cells(out: Path, cells: list[Cell], plans: dict, overrides: Sequence[str], jobs: int,
               progress: bool, data: DataPlan | None = None) -> dict:
    finished = read_cells(out)
    done = {c["cell"] for c in finished}
    todo = [c for c in cells if c.name not in done]
    log.info("study: %d cells, %d already done, %d to run -> %s", len(cells), len(cells) - len(todo), len(todo), out)
    flops = {c["variant"]: c["tokenizer_flops_per_step"] for c in finished}
    if jobs > 1 and todo:  # what the cells share, once, before they start side by side
        from openvtp.demo.judge import cached_attribute_probe
        from openvtp.train.flops import pretrain_step_flops

        for cell in todo:
            if cell.variant not in flops:
                flops[cell.variant] = pretrain_step_flops(plans[cell].pretrain)
        g, size = plans[todo[0]].generation, plans[todo[0]].pretrain.model.image_size
        if data:
            from openvtp.demo.labelled_judge import cached_judge

            cached_judge(out / "judge", data.labelled, g.judge_steps, g.judge_seed, g.threads, data.mirror, progress)
        else:
            cached_attribute_probe(out / "judge", size, g.judge_steps, g.judge_seed, g.threads, progress=progress)
        _run_in_processes(out, todo, overrides, flops, jobs, len(cells) - len(todo), len(cells))
    for i, cell in enumerate(todo if jobs == 1 else []):
        log.info("study: cell %s (%d of %d to run; %d of %d cells done)", cell.name, i + 1, len(todo),
                 len(cells) - len(todo) + i, len(cells))
        run_cell(out, cell, overrides, flops, progress, data)
        write_outputs(out)
    return write_outputs(out)


def _run_in_processes(out: Path, todo: list[Cell], overrides: Sequence[str], flops: dict[str, int], jobs: int,
                      done: int, total: int) -> None:
    """Keep `jobs` cell processes running; each logs to `out/logs/<cell>.log` and dies with this one."""
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    queue, running = list(todo), {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                cell = queue.pop(0)
                cmd = [sys.executable, "-m", "openvtp.experiments.study", str(out), cell.variant, str(cell.steps),
                       str(cell.seed), str(flops[cell.variant]), *overrides]
                with open(logs / f"{cell.name}.log", "w") as f:
                    running[cell] = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                                     preexec_fn=_die_with_parent)
                log.info("study: cell %s started (%d running, %d queued; %d of %d cells done) log: %s", cell.name,
                         len(running), len(queue), done, total, logs / f"{cell.name}.log")
            time.sleep(1.0)
            for cell, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[cell]
                if proc.returncode != 0:
                    tail = (logs / f"{cell.name}.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
                    raise OpenVTPError(f"cell {cell.name} failed (exit {proc.returncode}): {tail[0]} "
                                       f"(whole log: {logs / f'{cell.name}.log'})")
                done += 1
                log.info("study: cell %s finished (%d of %d cells done)", cell.name, done, total)
                write_outputs(out)
    finally:
        for proc in running.values():
            proc.kill()


def study_data(out: Path) -> DataPlan | None:
    """The labelled set a study folder's settings name (prepared in `out/data`), or None for the embedded data."""
    settings = json.loads((out / SETTINGS).read_text())
    if "data" not in settings:
        return None
    from openvtp.demo.labelled import LabelledRequest
    from openvtp.demo.labelled_settings import open_data

    d = settings["data"]
    return open_data(LabelledRequest(**d["request"]), out / "data", d["fid_weights"] or "")


def _die_with_parent() -> None:
    """Linux: a cell process is killed when the study process dies, so no orphan writes into a cell a rerun redoes."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _cell_process(argv: Sequence[str]) -> None:
    """`python -m openvtp.experiments.study OUT VARIANT STEPS SEED FLOPS_PER_STEP [overrides]`: one cell."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out, variant, steps, seed, flops, *overrides = argv
    cell = Cell(variant, int(steps), int(seed))
    try:
        run_cell(Path(out), cell, overrides, {variant: int(flops)}, progress=False, data=study_data(Path(out)))
    except OpenVTPError as e:
        print(f"error: {e}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    _cell_process(sys.argv[1:])
