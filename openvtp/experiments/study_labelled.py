"""What a study on a labelled set (`openvtp study --data`) reports of each cell: the figures of the data's judge, the
held-out split's zero-shot and probe accuracies, reconstruction; the embedded study's groups, with classes where
the scenes have shapes."""
from __future__ import annotations

# (key in cell.json, short name for tables, meaning, higher is better), by group
LABELLED_METRICS = {
    "generation": [
        ("frechet_generated", "Frechet", "Frechet distance of generated to real held-out images, judge features",
         False),
        ("frechet_gap", "Frechet gap", "the same minus that of reconstructions of real held-out images (takes the "
         "decoder out)", False),
        ("class_acc_generated", "class %", "judge accuracy on the requested class, generated images", True),
        ("class_acc_gap", "class gap", "the same minus that on reconstructions (points)", True),
        ("fid_inception_generated", "Inception FID", "FID of generated to real held-out images, standard FID "
         "Inception (only with --fid-weights)", False),
    ],
    "understanding": [
        ("zeroshot_class", "zero-shot %", "zero-shot class accuracy on the held-out split, the class names in the "
         "caption templates (CLIP variants)", True),
        ("probe_class_latent", "probe (latent) %", "linear probe for the class on the flattened latent the DiT sees, "
         "trained on the train split, tested on the held-out one", True),
        ("probe_class_cls", "probe (CLS) %", "the same on the last-block CLS", True),
        ("knn_class", "kNN %", "k = 20 nearest train images by last-block CLS, held-out split", True),
    ],
    "reconstruction": [
        ("psnr", "PSNR dB", "held-out PSNR after decoder fine-tuning", True),
        ("psnr_stage1", "PSNR stage 1 dB", "the same after pre-training alone", True),
        ("psnr_patch_mean_baseline", "baseline dB", "per-patch mean-colour baseline", True),
        ("ssim", "SSIM", "held-out SSIM after decoder fine-tuning", True),
    ],
}
LABELLED_COMPARED = (("generation", "frechet_generated"), ("generation", "frechet_gap"),
                     ("generation", "class_acc_generated"), ("generation", "class_acc_gap"),
                     ("understanding", "probe_class_latent"), ("reconstruction", "psnr"))
LABELLED_PANELS = ("frechet_generated", "frechet_gap", "class_acc_generated", "probe_class_latent", "zeroshot_class",
                   "psnr")
LABELLED_BOTTOM = ("frechet_generated", "class_acc_generated", "psnr")


def labelled_cell_result(cell, summary: dict, flops_per_step: int) -> dict:
    """cell.json of a cell on a labelled set, from its demo summary."""
    held, gen = summary["heldout"], summary["generation"]
    fig, gap = gen["figures"], gen["gap_to_reconstructed"]
    pct = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731
    generation = {"judge_heldout_acc": pct(gen["judge"]["heldout_acc"]),
                  **{f"frechet_{row}": fig[row]["frechet_judge"] for row in ("generated", "reconstructed", "real")},
                  "frechet_gap": gap["frechet_judge"],
                  **{f"class_acc_{row}": pct(fig[row]["class_acc"]) for row in ("generated", "reconstructed", "real")},
                  "class_acc_gap": pct(gap["class_acc"])}
    if "fid_inception" in fig["generated"]:
        generation.update({f"fid_inception_{row}": fig[row]["fid_inception"]
                           for row in ("generated", "reconstructed", "real")})
    else:
        generation["fid_inception"] = gen["inception"]
    generation.update(dit_steps=gen["dit_steps"], samples=gen["samples"])
    return {
        "cell": cell.name, "variant": cell.variant, "tokenizer_steps": cell.steps, "seed": cell.seed,
        "complete": summary["complete"], **({"stopped": summary["stopped"]} if "stopped" in summary else {}),
        "tokenizer_flops": flops_per_step * cell.steps, "tokenizer_flops_per_step": flops_per_step,
        "objectives": summary.get("objectives", {}), "machine": summary.get("machine"),
        "generation": generation,
        "understanding": {"zeroshot_class": held.get("zeroshot_class"),
                          **{k: held[k] for k in ("probe_class_latent", "probe_class_cls", "knn_class")}},
        "reconstruction": {"psnr": held["psnr_decoder_finetuned"], "psnr_stage1": held["psnr"],
                           "psnr_patch_mean_baseline": held["psnr_patch_mean_baseline"],
                           "ssim": held["ssim_decoder_finetuned"], "ssim_stage1": held["ssim"]},
        "timing": summary["timing"],
    }


def data_header(data: dict, cells: list[dict]) -> list[str]:
    """study.md's lines on the data: what it is, its captions, the judge, what could not be read."""
    from openvtp.demo.labelled_run import data_lines

    lines = [line.strip() for line in data_lines(data)]
    judge = next((c["generation"]["judge_heldout_acc"] for c in cells), None)
    if judge is not None:
        lines.append(f"judge: a small CNN trained on the train split, held-out accuracy {judge:.1f}% "
                     f"(chance {100 / data['classes']:.1f}%); the same judge for every cell")
    inception = next((c["generation"]["fid_inception"] for c in cells if "fid_inception" in c["generation"]), None)
    if inception:
        lines.append(f"Inception FID: {inception}")
    return [f"- {line}" for line in lines] + [""]
