"""`openvtp demo`: the whole chain on the embedded data, pre-training -> decoder fine-tuning -> generation.

One command line configures every stage: unprefixed `key=value` overrides go to pre-training (the
`demo` preset), `decoder.` ones to stage 2 (`decoder-demo`), `dit.` ones to the DiT (`dit-demo`) and
`generation.` ones to the generation half's own amounts (`GenerationDemoConfig`). Every config is
validated before any work starts, and every stage runs a fixed number of steps, so the figures are a
function of code, config and seed. Time limits are safety nets: when one fires, the stage's summary
and the demo's say `"complete": false` and why.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from openvtp.config.load import load_config
from openvtp.config.schema import FinetuneDecoderConfig, PretrainConfig, validate, validate_finetune
from openvtp.errors import Interrupted, OpenVTPError
from openvtp.generation.config import GenerationConfig
from openvtp.generation.config import validate as validate_dit
from openvtp.demo.generation_config import GenerationDemoConfig, validate_demo
from openvtp.demo.labelled_settings import DataPlan, data_overrides
from openvtp.runtime.checkpoint import write_json_atomic

log = logging.getLogger("openvtp.demo")
PREFIXES = ("decoder.", "dit.", "generation.")  # unprefixed keys configure pre-training
PRESETS = {"pretrain": "demo", "decoder": "decoder-demo", "dit": "dit-demo"}
RESUME = ("train.resume=latest", "decoder.train.resume=latest")  # what an interrupted demo adds to its command


def split_overrides(overrides: Sequence[str]) -> dict[str, list[str]]:
    """{"pretrain", "decoder", "dit", "generation"}: each stage's overrides, prefixes removed."""
    parts: dict[str, list[str]] = {"pretrain": [], "decoder": [], "dit": [], "generation": []}
    for item in overrides:
        prefix = next((p for p in PREFIXES if item.startswith(p)), "")
        parts[prefix.rstrip(".") or "pretrain"].append(item.removeprefix(prefix))
    return parts


@dataclass
class DemoPlan:
    """Every stage's validated config; `run_demo` executes it."""

    out: Path
    pretrain: PretrainConfig
    decoder: FinetuneDecoderConfig
    generation: GenerationDemoConfig
    dit_overrides: list[str] = field(default_factory=list)
    data: DataPlan | None = None  # `--data`: a labelled set instead of the embedded scenes

    @property
    def seed(self) -> int:
        return self.pretrain.train.seed


def dit_config(dit_overrides: Sequence[str]) -> GenerationConfig:
    """The `dit-demo` config as the generation half will build it (loaded here to fail early)."""
    cfg = load_config(GenerationConfig, PRESETS["dit"], list(dit_overrides), prefix="dit.")
    validate_dit(cfg)
    return cfg


def plan_demo(out: str | Path, overrides: Sequence[str] = (), data: DataPlan | None = None) -> DemoPlan:
    """Load and validate the configs of every stage; nothing is written. data: a labelled set, whose settings
    (`labelled_settings.data_overrides`) come before `overrides`."""
    out = Path(out)
    parts = split_overrides(overrides)
    rules = split_overrides(data_overrides(data) if data else ())

    def stage(name: str, build):
        try:
            return build()
        except OpenVTPError as e:
            raise OpenVTPError(f"{name}: {e}") from None

    cfg = stage("pre-training (KEY=VALUE)", lambda: load_config(
        PretrainConfig, PRESETS["pretrain"], [f"train.out_dir={out}", *rules["pretrain"], *parts["pretrain"]]))
    stage("pre-training (KEY=VALUE)", lambda: validate(cfg))
    if data:  # the DiT's patch follows the tokenizer's latent grid
        rules = split_overrides(data_overrides(data, grid=cfg.model.image_size // cfg.model.vision_patch_size))
        if cfg.model.image_size != data.labelled.size:
            raise OpenVTPError(f"model.image_size={cfg.model.image_size}: with --data the resolution is --size "
                               f"({data.labelled.size} here)")
    dcfg = stage("decoder fine-tuning (decoder.KEY=VALUE)", lambda: load_config(
        FinetuneDecoderConfig, PRESETS["decoder"],
        [f"init={out}", f"train.out_dir={out / 'decoder'}", f"train.seed={cfg.train.seed}", *rules["decoder"],
         *parts["decoder"]], prefix="decoder."))
    stage("decoder fine-tuning (decoder.KEY=VALUE)", lambda: validate_finetune(dcfg))
    gcfg = stage("generation (generation.KEY=VALUE)", lambda: load_config(
        GenerationDemoConfig, None, [*rules["generation"], *parts["generation"]], prefix="generation."))
    validate_demo(gcfg, labelled=data is not None)
    dit = [*rules["dit"], *parts["dit"]]
    if gcfg.enabled:
        stage("the DiT (dit.KEY=VALUE)", lambda: dit_config(dit))
    elif parts["dit"]:
        raise OpenVTPError(f"'dit.{parts['dit'][0]}' given with generation.enabled=false: no DiT is trained")
    if not cfg.model.train_reconstruction:
        raise OpenVTPError("the demo fine-tunes and generates through the pixel decoder: "
                           "model.train_reconstruction must be true")
    return DemoPlan(out, cfg, dcfg, gcfg, dit if gcfg.enabled else [], data)


def run_demo(plan: DemoPlan, progress: bool = True, judge_cache: Path | None = None) -> dict:
    """Run the stages of `plan`; returns the demo's summary (also `out/summary.json`). judge_cache: a folder
    that keeps the generation half's judge between runs (a study's cells share it)."""
    from openvtp.demo.generation import run_generation_demo
    from openvtp.runtime.machine import describe
    from openvtp.train.decoder_finetune import finetune_decoder
    from openvtp.train.loop import pretrain

    if plan.data:
        from openvtp.demo.labelled_run import labelled_heldout, prepare

        prepare(plan.data)
    summary = pretrain(plan.pretrain)
    try:
        stage2 = finetune_decoder(plan.decoder)
    except Interrupted as e:  # stage 1 is done: resuming the demo resumes stage 2 (stage 1 resumes at its end)
        raise Interrupted(e.signum, e.saved, RESUME) from None
    if plan.data:
        summary["data"] = plan.data.labelled.meta()
        summary["heldout"] = labelled_heldout(plan, stage2["tokenizer"])
    held = summary.get("heldout", {})
    if "psnr" in stage2.get("heldout", {}):
        held["psnr_decoder_finetuned"] = stage2["heldout"]["psnr"]
    stopped = [f"pre-training: {summary['stopped']}"] if "stopped" in summary else []
    if "stopped" in stage2:
        stopped.append(f"decoder fine-tuning: {stage2['stopped']}")
    summary["decoder_finetune"] = {"complete": stage2["complete"], "steps": stage2["steps"],
                                   "tokenizer": stage2["tokenizer"], "reconstructions": stage2.get("reconstructions")}
    summary["timing"] = {"pretrain_s": summary["timing"]["train_s"], "decoder_s": stage2["timing"]["train_s"]}
    complete = summary["complete"] and stage2["complete"]
    if plan.generation.enabled:
        try:
            if plan.data:
                from openvtp.demo.labelled_generation import run_labelled_generation

                gen = run_labelled_generation(stage2["tokenizer"], plan.out, plan.generation, plan.data.labelled,
                                              seed=plan.seed, dit_overrides=plan.dit_overrides,
                                              mirror=plan.data.mirror, fid_weights=plan.data.fid_weights,
                                              judge_cache=judge_cache, progress=progress)
            else:
                gen = run_generation_demo(stage2["tokenizer"], plan.out, plan.generation, seed=plan.seed,
                                          dit_overrides=plan.dit_overrides, judge_cache=judge_cache, progress=progress)
        except Interrupted as e:  # stages 1 and 2 resume at their ends; the generation half starts again
            raise Interrupted(e.signum, e.saved, RESUME) from None
        summary["generation"] = {k: gen[k] for k in ("complete", "condition", "figures", "gap_to_reconstructed",
                                                     "chance", "grid", *(("judge", "inception") if plan.data else ()))}
        summary["generation"].update(dit_steps=gen["dit"]["steps"], samples=gen["sampling"]["samples"],
                                     summary=str(plan.out / "generation" / "summary.json"))
        summary["timing"]["generation_s"] = gen["timing"]["total_s"]
        complete = complete and gen["complete"]
        if "stopped" in gen:
            stopped.append(f"generation: {gen['stopped']}")
    summary["complete"] = complete
    summary["machine"] = describe()
    if stopped:
        summary["stopped"] = stopped
    else:
        summary.pop("stopped", None)
    write_json_atomic(summary, plan.out / "summary.json")
    return summary


def report(summary: dict, out: Path) -> list[str]:
    """The lines `openvtp demo` prints: the figures, where the pictures are, and any safety net that fired."""
    if "data" in summary:
        from openvtp.demo.labelled_run import labelled_report

        return labelled_report(summary, out)
    held, t = summary.get("heldout", {}), summary["timing"]
    stage2 = summary["decoder_finetune"]
    lines = [f"openvtp demo: {summary['steps']} pre-training steps ({t['pretrain_s']:.0f}s), {stage2['steps']} "
             f"decoder fine-tuning steps ({t['decoder_s']:.0f}s) -> {out}"]
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
    gen = summary.get("generation")
    if gen:
        fig = gen["figures"]
        lines.append(f"  generation ({gen['dit_steps']} DiT steps, {t['generation_s']:.0f}s; {gen['samples']} samples "
                     f"conditioned on {gen['condition']}): judge accuracy on the requested shape "
                     f"{100 * fig['generated']['shape_acc']:.1f}% (reconstructions "
                     f"{100 * fig['reconstructed']['shape_acc']:.1f}%, real {100 * fig['real']['shape_acc']:.1f}%, "
                     f"chance {100 * gen['chance']:.1f}%)")
        if fig["generated"].get("colour_acc") is not None:
            lines.append(f"  judge accuracy on the requested colour: generated "
                         f"{100 * fig['generated']['colour_acc']:.1f}% (reconstructions "
                         f"{100 * fig['reconstructed']['colour_acc']:.1f}%, real {100 * fig['real']['colour_acc']:.1f}%)")
        lines.append(f"  Frechet distance in the judge's features: generated {fig['generated']['frechet_probe']:.2f}, "
                     f"reconstructed {fig['reconstructed']['frechet_probe']:.2f}, real {fig['real']['frechet_probe']:.2f}")
        lines.append(f"  sample grid: {gen['grid']}")
    if stage2.get("reconstructions") and summary.get("reconstructions"):
        lines.append(f"  reconstruction grids: {stage2['reconstructions']} (fine-tuned decoder), "
                     f"{summary['reconstructions']} (pre-training)")
    lines.append(f"  summary: {out / 'summary.json'}  tensorboard: {out / 'tensorboard'}")
    for why in summary.get("stopped", []):
        lines.append(f"WARNING: INCOMPLETE RUN, the figures above are not the demo's result: {why}")
    return lines
