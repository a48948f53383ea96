"""Outputs of `openvtp eval`: results.json (every number with its protocol), results.md and the printed table (one
column per model), and a bar plot when several models are compared."""
from __future__ import annotations

import json
import os
from pathlib import Path

TASK_ORDER = ("zeroshot", "linprobe", "knn", "retrieval", "recon")
METRIC_LABELS = {
    "top1": "top-1 %", "top5": "top-5 %", "psnr": "PSNR dB", "ssim": "SSIM", "lpips": "LPIPS", "rfid": "rFID",
    "psnr_patch_mean_baseline": "PSNR flat-patch baseline dB",
}
HEADLINE = ("top1", "i2t_R@1", "t2i_R@1", "psnr", "ssim", "lpips", "rfid")
_MD_SKIP = ("all_top1", "variants", "class_name_list", "template_list")  # long: only in results.json


def metric_label(metric: str) -> str:
    if "_R@" in metric:
        direction, k = metric.split("_")
        return f"{'image->text' if direction == 'i2t' else 'text->image'} {k} %"
    return METRIC_LABELS.get(metric, metric)


def fmt(metric: str, value: float) -> str:
    if metric in ("ssim", "lpips"):
        return f"{value:.4f}"
    if metric == "rfid":
        return f"{value:.3f}"
    return f"{value:.2f}"


def rows(results: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """(entry name, metric) rows in task order; a name only ever skipped gets one row with metric ""."""
    order: dict[str, int] = {}
    metrics: dict[str, list[str]] = {}
    tasks: dict[str, str] = {}
    for entries in results.values():
        for e in entries:
            order.setdefault(e["name"], len(order))
            tasks[e["name"]] = e["task"]
            ms = metrics.setdefault(e["name"], [])
            for m in list(e.get("metrics") or {}) + list(e.get("skipped_metrics") or {}):
                if m not in ms:
                    ms.append(m)
    for ms in metrics.values():  # skipped recon metrics sit next to the computed ones, baseline last
        ms.sort(key=lambda m: ("psnr", "ssim", "lpips", "rfid").index(m) if m in ("psnr", "ssim", "lpips", "rfid")
                else 10)
    names = sorted(order, key=lambda n: (TASK_ORDER.index(tasks[n]) if tasks[n] in TASK_ORDER else 99, order[n]))
    return [(n, m) for n in names for m in (metrics[n] or [""])]


def cell(e: dict | None, metric: str) -> str:
    if e is None:
        return "-"
    if "skipped" in e:
        return "skipped"
    if metric in e["metrics"]:
        return fmt(metric, e["metrics"][metric])
    if metric in e.get("skipped_metrics", {}):
        return "skipped"
    return "-"


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table: a row per (task entry, metric), a column per model."""
    models = list(results)
    by_name = {m: {e["name"]: e for e in entries} for m, entries in results.items()}
    header = ["task", "metric", *models]
    lines = [header] + [[name, metric_label(metric) if metric else "", *(cell(by_name[m].get(name), metric)
                                                                           for m in models)]
                        for name, metric in rows(results)]
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out = []
    for k, r in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                   + " |")
        if k == 0:
            out.append("|" + "|".join("-" * (w + 1) + (":" if i >= 2 else "-") for i, w in enumerate(widths)) + "|")
    return "\n".join(out)


def notes(results: dict[str, list[dict]]) -> list[str]:
    """One line per distinct skip reason, naming the models it applies to."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for model, entries in results.items():
        for e in entries:
            if "skipped" in e:
                reasons.setdefault((e["name"], e["skipped"]), []).append(model)
            for metric, why in e.get("skipped_metrics", {}).items():
                reasons.setdefault((f"{e['name']} {metric}", why), []).append(model)
    multi = len(results) > 1
    out = [f"{name}{' (' + ', '.join(ms) + ')' if multi else ''} skipped: {why}" for (name, why), ms in reasons.items()]
    unreadable: dict[str, int] = {}
    for entries in results.values():
        for e in entries:
            proto = e.get("protocol") or {}
            for split_key, count_key in (("split", "skipped_images"), ("train_split", "train_skipped_images")):
                if proto.get(count_key):
                    unreadable[proto[split_key]] = max(unreadable.get(proto[split_key], 0), proto[count_key])
    out += [f"{n} unreadable image(s) skipped in split {split} (counted per task in results.json)"
            for split, n in unreadable.items()]
    return out


def _protocol_text(proto: dict) -> str:
    return "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in proto.items() if k not in _MD_SKIP)


def markdown(payload: dict) -> str:
    results = payload["results"]
    data = payload["data"]
    lines = ["# openvtp eval", "", f"Data: `{data['name']}` ({data['kind']}); test split `{data['test']['split']}` "
             f"({data['test']['images']} images)" + (f", train split `{data['train']['split']}` "
                                                     f"({data['train']['images']} images)" if "train" in data else ""),
             "", "Models: " + ", ".join(f"`{m['name']}` = `{m['path']}` ({m['resolution']} px)"
                                        for m in payload["models"]), "", table(results), ""]
    skip = notes(results)
    if skip:
        lines += ["Skipped:", ""] + [f"- {s}" for s in skip] + [""]
    lines += ["## Protocols", ""]
    seen: dict[str, dict[str, str]] = {}
    for model, entries in results.items():
        for e in entries:
            if "protocol" in e:
                seen.setdefault(e["name"], {})[model] = _protocol_text(e["protocol"])
    for name, per_model in seen.items():
        texts = set(per_model.values())
        if len(texts) == 1:
            lines.append(f"- **{name}**: {texts.pop()}")
        else:
            lines.append(f"- **{name}**:")
            lines += [f"  - `{m}`: {t}" for m, t in per_model.items()]
    figures = payload.get("figures", {})
    if figures:
        lines += ["", "## Figures", ""]
        for model, grid in figures.get("recon_grids", {}).items():
            lines.append(f"- `{model}`: originals next to reconstructions: ![{model}]({grid})")
        if figures.get("comparison"):
            lines.append(f"- comparison: ![comparison]({figures['comparison']})")
    lines += ["", f"Command: `{payload['command']}`", ""]
    return "\n".join(lines)


def headline(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """{model: {"<entry> <metric>": value}} of the numbers worth a bar each."""
    out = {}
    for model, entries in results.items():
        out[model] = {f"{e['name']} {m}": v for e in entries for m, v in (e.get("metrics") or {}).items()
                      if m in HEADLINE}
    return out


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(out: Path, payload: dict) -> str:
    """results.json, results.md and (several models) comparison.png under `out`; returns the table."""
    from .plots import plot_results

    out.mkdir(parents=True, exist_ok=True)
    figures = payload.setdefault("figures", {})
    grids = {m: e["grid"] for m, entries in payload["results"].items() for e in entries if e.get("grid")}
    if grids:
        figures["recon_grids"] = grids
    if len(payload["results"]) > 1:
        values = headline(payload["results"])
        if any(values.values()):
            tmp = out / ".comparison.tmp.png"
            plot_results(values, tmp)
            os.replace(tmp, out / "comparison.png")
            figures["comparison"] = "comparison.png"
    write_atomic(out / "results.json", json.dumps(payload, indent=1, default=str) + "\n")
    write_atomic(out / "results.md", markdown(payload))
    return table(payload["results"])
