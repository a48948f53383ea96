"""What `run_demo` does differently with `--data`: the set prepared for training first, the held-out figures of
both tokenizers after stage 2 (pre-training's own evaluation knows only the embedded scenes), and the lines it
prints."""
from __future__ import annotations

from pathlib import Path

from .labelled import read_prepared, write_prepared
from .labelled_settings import DataPlan


def prepare(data: DataPlan) -> None:
    """Write the set where pre-training and stage 2 read it, unless it is there already (a study's cells share it)."""
    ready = read_prepared(data.folder, data.labelled.request)
    if ready is None or ready.digest != data.labelled.digest:
        write_prepared(data.labelled, data.folder)


def labelled_heldout(plan, stage2_tokenizer: str | Path) -> dict:
    """The stage-1 tokenizer's figures on the held-out split (`labelled_eval`), and its reconstructions after stage 2
    (whose encoder is stage 1's, so zero-shot and probes are the same)."""
    from openvtp.models import VTPModel

    from .labelled_eval import labelled_eval, reconstruction_figures

    cfg, s = plan.pretrain, plan.data.labelled
    n = min(cfg.eval.images, len(s.heldout_labels))
    held = labelled_eval(VTPModel.from_pretrained(str(plan.out / "tokenizer")), s, n, zero_shot=cfg.clip.weight > 0,
                         seed=cfg.eval.seed)
    tuned = reconstruction_figures(VTPModel.from_pretrained(str(stage2_tokenizer)).eval(),
                                   s.heldout_images[:n].float() / 255)
    held.update(psnr_decoder_finetuned=tuned["psnr"], ssim_decoder_finetuned=tuned["ssim"])
    return held


def data_lines(meta: dict) -> list[str]:
    """What the data is, how its captions were made, and what could not be read."""
    skipped = ", ".join(f"{n} {why}" for why, n in meta["skipped"].items())
    return [f"  data: {meta['request']['data']} ({meta['layout']}): {meta['classes']} classes, "
            f"{meta['train_images']} train / {meta['heldout_images']} held-out images at {meta['size']} px "
            f"({meta['split']})",
            f"  {meta['caption_note']}",
            f"  unreadable images skipped: {meta['skipped_total']}" + (f" ({skipped})" if skipped else "")]


def labelled_report(summary: dict, out: Path) -> list[str]:
    """`openvtp demo --data`'s lines, as `run.report` prints the embedded demo's."""
    held, t, stage2 = summary["heldout"], summary["timing"], summary["decoder_finetune"]
    lines = [f"openvtp demo: {summary['steps']} pre-training steps ({t['pretrain_s']:.0f}s), {stage2['steps']} "
             f"decoder fine-tuning steps ({t['decoder_s']:.0f}s) -> {out}", *data_lines(summary["data"])]
    chance = 100 / summary["data"]["classes"]
    if "zeroshot_class" in held:
        lines.append(f"  zero-shot class accuracy on the held-out split: {held['zeroshot_class']:.1f}% "
                     f"(chance {chance:.1f}%)")
    lines.append(f"  linear probe for the class, held-out split: {held['probe_class_latent']:.1f}% on the latent, "
                 f"{held['probe_class_cls']:.1f}% on the CLS; kNN {held['knn_class']:.1f}%")
    lines.append(f"  reconstruction PSNR: {held['psnr_decoder_finetuned']:.2f} dB after decoder fine-tuning, "
                 f"{held['psnr']:.2f} dB after pre-training (per-patch mean-colour baseline "
                 f"{held['psnr_patch_mean_baseline']:.2f} dB); SSIM {held['ssim_decoder_finetuned']:.3f} "
                 f"(baseline {held['ssim_patch_mean_baseline']:.3f})")
    gen = summary.get("generation")
    if gen:
        fig = gen["figures"]
        lines.append(f"  generation ({gen['dit_steps']} DiT steps, {t['generation_s']:.0f}s; {gen['samples']} samples "
                     f"of the held-out images' classes): judge accuracy on the requested class "
                     f"{100 * fig['generated']['class_acc']:.1f}% (reconstructions "
                     f"{100 * fig['reconstructed']['class_acc']:.1f}%, real {100 * fig['real']['class_acc']:.1f}%, "
                     f"chance {100 * gen['chance']:.1f}%; the judge's held-out accuracy "
                     f"{100 * gen['judge']['heldout_acc']:.1f}%)")
        lines.append(f"  Frechet distance in the judge's features: generated {fig['generated']['frechet_judge']:.2f}, "
                     f"reconstructed {fig['reconstructed']['frechet_judge']:.2f}, "
                     f"real {fig['real']['frechet_judge']:.2f}")
        if "fid_inception" in fig["generated"]:
            lines.append(f"  Inception FID: generated {fig['generated']['fid_inception']:.2f}, reconstructed "
                         f"{fig['reconstructed']['fid_inception']:.2f}, real {fig['real']['fid_inception']:.2f}")
        else:
            lines.append(f"  Inception FID: {gen['inception']}")
        lines.append(f"  sample grid: {gen['grid']}")
    lines.append(f"  summary: {out / 'summary.json'}  tensorboard: {out / 'tensorboard'}")
    for why in summary.get("stopped", []):
        lines.append(f"WARNING: INCOMPLETE RUN, the figures above are not the demo's result: {why}")
    return lines
