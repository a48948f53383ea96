"""The evaluation suite behind `openvtp eval`: run the requested tasks of one or more tokenizers on one data set.

Tasks: `zeroshot` (CLIP zero-shot top-1/5 per label set), `linprobe` (linear-simple on the last-layer CLS and on the
pooled bottleneck latent; DINOv2's linear protocol), `knn` (k=20, cosine, exp(sim/T) votes), `retrieval`
(recall@1/5/10 both ways) and `recon` (PSNR, SSIM, LPIPS, rFID, next to the flat-patch PSNR baseline).
Every number comes with its protocol (data, split, images, resolution, preprocessing, features, templates, ...),
including which evaluation protocol produced it: openvtp's, or with `protocol="vtp"` the VTP repository's tools/
scripts for zeroshot, linprobe and recon (`vtp_protocol.py`).
A task a model cannot do, or data that cannot support it, is an entry with `skipped` and the reason.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from openvtp.data.image_io import quantize
from openvtp.data.text import VOCAB_SIZE
from openvtp.errors import OpenVTPError
from openvtp.runtime.precision import LABELS, autocast, resolve

from .datasets import EvalData, EvalSet, open_data
from .extract import LoadedModel, cached_pass, pass_compute
from .options import PREPROCESS_NAMES, TASKS, VTP_PREPROCESS, EvalOptions

log = logging.getLogger(__name__)

def probe_batch_size(n_train: int, requested: int | None) -> int:
    """DINOv2's 1024, or n/20 on sets under ~20k images so that an epoch still has about 20 steps."""
    if requested is not None:
        return min(requested, n_train)
    return max(1, min(1024, max(16, n_train // 20), n_train))


def entry(task: str, name: str, metrics: dict | None = None, protocol: dict | None = None,
          skipped: str | None = None, **extra) -> dict:
    out = {"task": task, "name": name}
    if skipped is not None:
        out["skipped"] = skipped
    else:
        out["metrics"] = metrics
        out["protocol"] = protocol
    return out | extra


class Suite:
    """Runs the tasks for each model on one `--data`; the data is opened once per resolution."""

    def __init__(self, data_spec: str, opts: EvalOptions, out_dir: str | Path):
        self.spec, self.opts, self.out = data_spec, opts, Path(out_dir)
        self.cache_root = Path(opts.cache_dir) if opts.cache_dir else self.out / "cache"
        self._data: dict[int, EvalData] = {}
        self._metric_nets = None
        self.vtp = opts.protocol == "vtp"

    # ------------------------------------------------------------------ data and helpers
    def data_for(self, size: int) -> EvalData:
        """Embedded scenes are rendered per resolution; files are listed once."""
        key = size if self.spec == "embedded" else 0
        if key not in self._data:
            o = self.opts
            self._data[key] = open_data(self.spec, size, o.train_data, o.limit, o.train_limit, o.classnames,
                                        o.templates, o.seed)
        return self._data[key]

    def method(self, data: EvalData, group: str, vtp: bool = False) -> str:
        return self.opts.preprocess.get(group, VTP_PREPROCESS[group] if vtp else data.default_preprocess[group])

    def workers(self, data: EvalData) -> int:
        if data.kind == "embedded scenes":  # already in memory
            return 0
        return self.opts.workers if self.opts.workers is not None else min(8, max(0, (os.cpu_count() or 1) - 1))

    def preprocessing(self, data: EvalData, method: str, size: int) -> str:
        if method == "none" and data.kind == "embedded scenes":
            return f"none: scenes rendered at {size} px"
        text = PREPROCESS_NAMES[method]
        return text.replace("crop_pct", f"crop_pct {self.opts.crop_pct}") if method == "crop" else text

    def precision(self, device: torch.device, mode: str = "auto") -> str:
        """The resolved precision of a pass: --precision, whose auto is bf16 on CUDA except in mode "fp32" (VTP's
        float32 zero-shot), and float32 elsewhere."""
        return resolve(self.opts.precision, device, cuda_default="fp32" if mode == "fp32" else "bf16")

    def run_pass(self, lm: LoadedModel, data: EvalData, es: EvalSet, method: str, kinds: set[str],
                 size: int | None = None, mode: str = "auto"):
        """One cached pass over `es` at `size` (default: the model's) computing what `kinds` ("features", "recon")
        need; mode "auto", "fp32" (float32 under --precision auto) or "vtp-recon" (VTP's reconstruction metrics)."""
        from .vtp_protocol import recon_compute

        o, size = self.opts, size or lm.size
        precision = self.precision(lm.device, mode)
        meta = {"kinds": sorted(kinds), "model": lm.fingerprint, "data": es.fingerprint, "split": es.split,
                "size": size, "preprocess": method, "crop_pct": o.crop_pct if method == "crop" else None}
        if mode != "auto":
            meta["mode"] = mode
        if o.precision != "auto":  # auto is keyed by the key's absence: caches without one are auto's
            meta["precision"] = precision
        lp = inc = None
        if "recon" in kinds:
            lp, inc, fid_id, _ = self.metric_nets(lm.device)
            meta |= {"lpips": o.lpips if lp is not None else None, "lpips_net": self.lpips_net, "fid": fid_id}
        if mode == "vtp-recon":
            patch = lm.model.config.vision_patch_size
            compute = recon_compute(lm.model, lm.device, autocast(lm.device, precision), lp, inc, patch)
        else:
            compute = pass_compute(lm, "features" in kinds, "recon" in kinds, lp, inc, precision=precision)
        return cached_pass(self.cache_root / lm.name, meta, es, size, method, o.crop_pct, compute, o.batch_size,
                           self.workers(data), o.chunk_size, o.progress,
                           f"{lm.name} {'+'.join(sorted(kinds))} {es.split}/{method}{size}")

    def base_protocol(self, data: EvalData, es: EvalSet, lm: LoadedModel, method: str, kept: int,
                      size: int | None = None, vtp: bool = False, mode: str = "auto") -> dict:
        """What every entry records; `mode` is that of the pass its features came from."""
        size = size or lm.size
        precision = LABELS[self.precision(lm.device, mode)]
        if mode == "vtp-recon":
            precision = f"{precision} encoder, float32 decoder"
        return {"eval_protocol": "vtp" if vtp else "openvtp", "dataset": data.name, "data_kind": data.kind,
                "split": es.split, "images": kept, "skipped_images": len(es) - kept, "resolution": size,
                "preprocessing": self.preprocessing(data, method, size), "precision": precision}

    @property
    def lpips_net(self) -> str:
        return self.opts.lpips_net or ("vgg" if self.vtp else "alex")

    # ------------------------------------------------------------------ metric networks (shared by all models)
    def metric_nets(self, device: torch.device):
        """(lpips net | None, inception | None, fid weights id, {metric: skip reason})."""
        if self._metric_nets is None:
            from .fid import InceptionFeatures
            from .recon_metrics import build_lpips

            o, skipped, lp, inc, fid_id = self.opts, {}, None, None, None
            if o.lpips == "none":
                skipped["lpips"] = "turned off (--lpips none)"
            else:
                try:
                    lp = build_lpips("pretrained" if o.lpips == "auto" else "random", self.lpips_net).to(device)
                except OpenVTPError as e:
                    skipped["lpips"] = f"{e} [openvtp eval: --lpips none, or random for a meaningless number]"
            if o.fid_weights == "none":
                skipped["rfid"] = "turned off (--fid-weights none)"
            else:
                try:
                    inc = InceptionFeatures(o.fid_weights, device=device, batch_size=o.batch_size, progress=False)
                    fid_id = o.fid_weights if o.fid_weights != "auto" else "torch-fidelity inception-2015-12-05"
                except OpenVTPError as e:
                    skipped["rfid"] = f"{e} [or turn rFID off: --fid-weights none]"
            self._metric_nets = (lp, inc, fid_id, skipped)
        return self._metric_nets

    def check_tasks(self, configs: list, names: list[str]) -> None:
        """Open the data for every resolution and fail before any work when nothing, or an explicitly requested
        task, can run on any model."""
        tasks = [t for t in TASKS if t in self.opts.tasks]
        runnable, reasons = set(), {}
        for cfg, name in zip(configs, names):
            _, entries = self.plan(cfg, self.data_for(self.opts.size or cfg.image_size), tasks)
            for task, _, reason, _ in entries:
                if reason is None:
                    runnable.add(task)
                else:
                    reasons.setdefault(task, f"{reason} ({name})")
        blocked = [t for t in tasks if t not in runnable]
        if blocked and (self.opts.explicit_tasks or not runnable):
            raise OpenVTPError(f"cannot run {blocked[0]}: {reasons.get(blocked[0], 'no entries')}")

    # ------------------------------------------------------------------ one model
    def run(self, lm: LoadedModel) -> list[dict] | None:
        """All requested tasks for one model: a list of result entries (None on torchrun ranks other than 0)."""
        from openvtp.runtime import dist

        data = self.data_for(lm.size)
        tasks = [t for t in TASKS if t in self.opts.tasks]
        plans, entries = self.plan(lm.model.config, data, tasks)

        # every pass first, on every rank (torchrun splits the chunks); then the tasks on rank 0
        results = {key: self.run_pass(lm, data, es, key[1], kinds, key[2], key[3])
                   for key, (es, kinds) in plans.items()}
        if not dist.is_main():
            return None

        out = []
        for task, name, reason, args in entries:
            if reason is not None:
                out.append(entry(task, name, skipped=reason))
                continue
            new = getattr(self, f"task_{task}")(lm, data, results, *args)
            out.extend(new)
            for e in new:
                log.info("%s  %-28s %s", lm.name, e["name"], _short(e))
        return out

    def plan(self, cfg, data: EvalData, tasks: list[str]):
        """For a model config: the passes needed and the entries to produce, (task, name, skip reason | None, args)."""
        plans, entries = {}, []
        test, train = data.test, data.train
        text_reason = None
        if not cfg.train_clip:
            text_reason = "model has no text tower (train_clip is false)"
        elif cfg.text_vocab_size < VOCAB_SIZE:
            text_reason = (f"text vocabulary has {cfg.text_vocab_size} tokens, fewer than the {VOCAB_SIZE} of the "
                           "BPE tokenizer the text tower expects")

        def need(role: str, group: str, kind: str = "features", vtp: bool = False, size: int | None = None,
                 mode: str = "auto"):
            """Passes are shared by the tasks that read the same split with the same preprocessing, size and mode:
            key (role, method, size (None: the model's), mode)."""
            key = (role, self.method(data, group, vtp), size, mode)
            plans.setdefault(key, (test if role == "test" else train, set()))[1].add(kind)
            return key

        vtp = self.vtp

        for task in tasks:
            if task == "zeroshot":
                named = {k: ls for k, ls in test.labelsets.items() if ls.classnames}
                if not test.labelsets:
                    entries.append((task, task, f"{data.name} has no labels", ()))
                elif not named:
                    entries.append((task, task, "no class names: pass --classnames FILE", ()))
                for k in named:
                    if text_reason:
                        entries.append((task, f"{task}/{k}", text_reason, ()))
                    else:
                        key = need("test", "zeroshot", vtp=vtp, mode="fp32" if vtp else "auto")
                        entries.append((task, f"{task}/{k}", None, (k, key)))
            elif task == "retrieval":
                if test.captions is None:
                    entries.append((task, task, f"{data.name} has no captions", ()))
                else:
                    entries.append((task, task, text_reason, () if text_reason else (need("test", "retrieval"),)))
            elif task in ("linprobe", "knn"):
                if train is None:
                    entries.append((task, task, f"{data.name} has no train split for the probes "
                                                "(use a folder with train/ and val/, or --train-data)", ()))
                    continue
                shared = [k for k in test.labelsets if k in train.labelsets]
                if not shared:
                    entries.append((task, task, f"{data.name} has no labels in both splits", ()))
                for k in shared:
                    if task == "linprobe" and vtp:  # train features are recomputed on augmented crops every step
                        from .vtp_protocol import probe_crop_size

                        crop = probe_crop_size(self.opts.size or cfg.image_size, cfg.vision_patch_size)
                        key = need("test", "probe", vtp=True, size=crop)
                        entries.append((task, f"linprobe/{k}/vtp", None, (k, "vtp", None, key)))
                        continue
                    keys = (need("train", "probe"), need("test", "probe"))
                    if task == "knn":
                        entries.append((task, f"knn/{k}", None, (k, *keys)))
                    else:
                        for proto in self.opts.linprobe:
                            entries.append((task, f"linprobe/{k}/{proto}", None, (k, proto, *keys)))
            elif task == "recon":
                if not cfg.train_reconstruction:
                    entries.append((task, task, "model has no pixel decoder (train_reconstruction is false)", ()))
                else:
                    mode = "vtp-recon" if vtp else "auto"
                    entries.append((task, task, None, (need("test", "recon", "recon", vtp=vtp, mode=mode),)))
        return plans, entries

    # ------------------------------------------------------------------ tasks
    def task_zeroshot(self, lm, data, results, labelset, key):
        from .zero_shot import build_zero_shot_classifier, zero_shot_accuracy

        feats, positions = results[key]
        ls = data.test.labelsets[labelset]
        model, device = lm.model, lm.device
        vtp = key[3] == "fp32"  # VTP's script: float32 throughout (its default precision)
        with torch.inference_mode(), autocast(device, self.precision(device, key[3])):
            clf = build_zero_shot_classifier(lambda t: model.get_clip_text_feature(t.to(device)), ls.classnames,
                                             ls.templates, model.tokenize).float().cpu()
        topk = (1, 5) if len(ls.classnames) > 5 else (1,)
        metrics = zero_shot_accuracy(F.normalize(feats["clip"].float(), dim=-1), clf, ls.labels[positions], topk)
        proto = self.base_protocol(data, data.test, lm, key[1], len(positions), vtp=vtp, mode=key[3]) | {
            "features": "CLIP image embedding (L2-normalised)", "classes": len(ls.classnames),
            "class_names": ls.names_source, "templates": ls.templates_source,
            "class_name_list": ls.classnames, "template_list": ls.templates,
            "classifier": "per class: mean of normalised template embeddings, re-normalised; logits 100 * img @ W"}
        return [entry("zeroshot", f"zeroshot/{labelset}", metrics, proto)]

    def task_retrieval(self, lm, data, results, key):
        from .retrieval import retrieval_recall

        feats, positions = results[key]
        caps = [(i, c) for i, pos in enumerate(positions.tolist()) for c in data.test.captions[pos]]
        owner = torch.tensor([i for i, _ in caps], dtype=torch.long)
        texts = [c for _, c in caps]
        model, device = lm.model, lm.device
        chunks = []
        with torch.inference_mode(), autocast(device, self.precision(device)):
            for s in range(0, len(texts), 256):
                chunks.append(model.get_clip_text_feature(model.tokenize(texts[s : s + 256])).float().cpu())
        metrics = retrieval_recall(feats["clip"].float(), torch.cat(chunks), owner)
        proto = self.base_protocol(data, data.test, lm, key[1], len(positions)) | {
            "features": "CLIP image and text embeddings, cosine similarity", "captions": len(texts),
            "i2t": "an image query hits if any of its captions is in the top K"}
        return [entry("retrieval", "retrieval", metrics, proto)]

    def _probe_inputs(self, data, results, labelset, train_key, test_key):
        (ftr, ptr), (fte, pte) = results[train_key], results[test_key]
        ytr, yte = data.train.labelsets[labelset].labels[ptr], data.test.labelsets[labelset].labels[pte]
        if len(ptr) == 0 or len(pte) == 0:
            raise OpenVTPError(f"no readable images in the {'train' if len(ptr) == 0 else 'test'} split of {data.name}")
        return ftr, ytr, fte, yte, len(ptr), len(pte)

    def _probe_protocol(self, lm, data, labelset, train_key, test_key, n_train, n_test) -> dict:
        proto = self.base_protocol(data, data.test, lm, test_key[1], n_test)
        proto |= {"train_split": data.train.split, "train_images": n_train,
                  "train_skipped_images": len(data.train) - n_train, "labels": labelset}
        return proto

    def task_knn(self, lm, data, results, labelset, train_key, test_key):
        from .knn import knn_classify

        ftr, ytr, fte, yte, ntr, nte = self._probe_inputs(data, results, labelset, train_key, test_key)
        num_classes = _num_classes(data, labelset, ytr, yte)
        with few_threads(lm.device, ntr * ftr["cls_blocks"][0].numel()):
            res = knn_classify(ftr["cls_blocks"][:, -1], ytr, fte["cls_blocks"][:, -1], yte, k=self.opts.knn_k,
                               temperature=self.opts.knn_temperature, num_classes=num_classes)
        metrics = {"top1": res["top1"]} | ({"top5": res["top5"]} if num_classes > 5 else {})
        proto = self._probe_protocol(lm, data, labelset, train_key, test_key, ntr, nte) | {
            "features": "CLS token of the last block (final norm)", "k": res["k"], "temperature": res["temperature"],
            "similarity": "cosine", "votes": "exp(sim / T) per neighbour"}
        return [entry("knn", f"knn/{labelset}", metrics, proto)]

    def task_linprobe(self, lm, data, results, labelset, protocol, train_key, test_key):
        from .linear_probe import dinov2_feature_variants, linear_probe_dinov2, linear_probe_simple

        if protocol == "vtp":
            return self.task_linprobe_vtp(lm, data, results, labelset, test_key)
        ftr, ytr, fte, yte, ntr, nte = self._probe_inputs(data, results, labelset, train_key, test_key)
        num_classes = _num_classes(data, labelset, ytr, yte)
        batch = probe_batch_size(ntr, self.opts.probe_batch)
        common = dict(num_classes=num_classes, epochs=self.opts.probe_epochs, batch_size=batch, device=lm.device,
                      seed=self.opts.seed)
        proto = self._probe_protocol(lm, data, labelset, train_key, test_key, ntr, nte)
        proto |= {"epochs": self.opts.probe_epochs, "batch": batch, "augmentation": "none (features cached once)"}

        def top(res):
            return {"top1": res["top1"]} | ({"top5": res["top5"]} if num_classes > 5 else {})

        out = []
        with few_threads(lm.device, batch * ftr["cls_blocks"][0].numel()):
            if protocol == "simple":
                for feat, name, desc in (("cls_blocks", "cls", "CLS token of the last block (final norm)"),
                                         ("latent_mean", "latent", "bottleneck latent, average-pooled over patches")):
                    x_tr, x_te = (f[feat][:, -1] if feat == "cls_blocks" else f[feat] for f in (ftr, fte))
                    res = linear_probe_simple(x_tr, ytr, x_te, yte, **common)
                    out.append(entry("linprobe", f"linprobe/{labelset}/{name}", top(res), proto | {
                        "protocol": "linear-simple: one linear layer on standardised features, AdamW lr 1e-3, "
                                    "wd 1e-4, cosine", "features": desc, "dim": x_tr.shape[1]}))
            else:
                tr, te = (dinov2_feature_variants(f["cls_blocks"].float(), f["patch_mean"].float()) for f in (ftr, fte))
                res = linear_probe_dinov2(tr, ytr, te, yte, **common)
                out.append(entry("linprobe", f"linprobe/{labelset}/dinov2", top(res), proto | {
                    "protocol": "dinov2-linear: SGD momentum 0.9, cosine, 13 learning rates x feature variants, best "
                                "reported (picked on the reported split, as DINOv2 does)",
                    "features": f"best variant {res['variant']} (clsN: CLS of the last N blocks; _avgpool: + mean "
                                "patch token)", "variant": res["variant"], "lr": res["lr"],
                    "scaled_lr": res["scaled_lr"], "variants": sorted(tr),
                    "blocks_available": int(ftr["cls_blocks"].shape[1]), "all_top1": res["all_top1"]}))
        return out

    def task_linprobe_vtp(self, lm, data, results, labelset, test_key):
        from .linear_probe import dinov2_feature_variants
        from .vtp_protocol import PROBE_BATCH, PROBE_BLOCKS, PROBE_CROP_PCT, linear_probe_vtp

        fte, pte = results[test_key]
        if len(pte) == 0:
            raise OpenVTPError(f"no readable images in the test split of {data.name}")
        ytr, yte = data.train.labelsets[labelset].labels, data.test.labelsets[labelset].labels[pte]
        num_classes = _num_classes(data, labelset, ytr, yte)
        depth, crop = len(lm.model.trunk.blocks), test_key[2]
        blocks = [n for n in PROBE_BLOCKS if n <= depth]

        def variants(f):  # VTP's classifiers all take the average-pooled patch tokens
            v = dinov2_feature_variants(f["cls_blocks"].float(), f["patch_mean"].float())
            return {f"cls{n}_avgpool": v[f"cls{n}_avgpool"] for n in blocks}

        features = pass_compute(lm, features=True, precision=self.precision(lm.device, test_key[3]))
        batch = min(self.opts.probe_batch or PROBE_BATCH, len(data.train))
        with few_threads(lm.device, batch * fte["cls_blocks"][0].numel()):
            res = linear_probe_vtp(lambda images: variants(features(images)), data.train, ytr, variants(fte), yte,
                                   num_classes, crop, self.opts.probe_epochs, batch, self.opts.probe_epoch_length,
                                   workers=self.workers(data), device=lm.device, seed=self.opts.seed,
                                   progress=self.opts.progress)
        metrics = {"top1": res["top1"]} | ({"top5": res["top5"]} if num_classes > 5 else {})
        proto = self.base_protocol(data, data.test, lm, test_key[1], len(pte), crop, vtp=True) | {
            "train_split": data.train.split, "train_images": len(data.train),
            "train_skipped_images": res["train_images_skipped"], "labels": labelset,
            "protocol": "VTP's test_linear_probing_hf.py: linear classifiers on the CLS of the last 1 or 4 blocks + "
                        "average-pooled patch tokens, 13 learning rates (x batch / 256), SGD momentum 0.9, no weight "
                        "decay, cosine per iteration; scored on the test split after every epoch, best epoch and "
                        "classifier reported",
            "augmentation": f"train: RandomResizedCrop({crop}, scale 0.08-1, bicubic) + horizontal flip, drawn "
                            f"afresh every step; test: resize to {int(crop / PROBE_CROP_PCT)} + centre crop {crop}",
            "features": f"best variant {res['variant']}", "variant": res["variant"], "lr": res["lr"],
            "scaled_lr": res["scaled_lr"], "variants": [f"cls{n}_avgpool" for n in blocks],
            "epochs": self.opts.probe_epochs, "epoch_length": res["epoch_length"], "batch": res["batch"],
            "best_epoch": res["best_epoch"], "last_epoch_top1": res["last_epoch_top1"],
            "epoch_top1": res["epoch_top1"], "all_top1": res["all_top1"]}
        return [entry("linprobe", f"linprobe/{labelset}/vtp", metrics, proto)]

    def task_recon(self, lm, data, results, key):
        from .fid import feature_statistics, frechet_distance

        feats, positions = results[key]
        _, _, fid_id, skipped = self.metric_nets(lm.device)
        if len(positions) == 0:
            raise OpenVTPError(f"no readable images in {data.name} for reconstruction")
        metrics = {"psnr": feats["psnr"].mean().item(), "ssim": feats["ssim"].mean().item()}
        if "lpips" in feats:
            metrics["lpips"] = feats["lpips"].mean().item()
        skipped = dict(skipped)
        if "inception_orig" in feats:
            if len(positions) < 2:
                skipped["rfid"] = "needs at least 2 images"
            else:
                metrics["rfid"] = frechet_distance(*feature_statistics(feats["inception_orig"].double()),
                                                   *feature_statistics(feats["inception_recon"].double()))
        metrics["psnr_patch_mean_baseline"] = feats["psnr_patch_mean"].mean().item()
        vtp = key[3] == "vtp-recon"
        trunk = "random trunk: meaningless" if self.opts.lpips == "random" else "ImageNet trunk"
        lpips_text = f"{'VGG16' if self.lpips_net == 'vgg' else 'AlexNet'} v0.1, per image, averaged, {trunk}"
        weights = f"weights {fid_id}" + (" (random: meaningless)" if fid_id == "random" else "")
        proto = self.base_protocol(data, data.test, lm, key[1], len(positions), vtp=vtp, mode=key[3]) | ({
            "reconstructions": "VTP's test_reconstruction_hf.py: encoder in the eval's precision, decoder in float32, "
                               "metrics on the float reconstructions clamped to [0, 1]",
            "psnr": "20 log10(255 / RMSE) per image, averaged",
            "ssim": "torchmetrics SSIM (Gaussian 11x11, sigma 1.5) per image, averaged (VTP averages batch means: "
                    "the same when the batch divides the set)",
            "rfid": f"pytorch-fid on originals and reconstructions truncated to uint8 as VTP's saved PNGs ([0, 1] "
                    f"input, torch bilinear resize to 299, 2x - 1), {weights}",
        } if vtp else {
            "reconstructions": "decode(encode(x)), quantised to 8 bits as saved PNGs",
            "psnr": "per image, averaged", "ssim": "per image (Gaussian 11x11, sigma 1.5), averaged",
            "rfid": f"Frechet distance of Inception pool features, originals vs reconstructions, {weights}",
        }) | {"psnr_patch_mean_baseline": f"each {lm.model.config.vision_patch_size}px patch filled with its mean "
                                          "colour", "lpips": lpips_text}
        for metric in ("lpips", "rfid"):
            if metric not in metrics:
                del proto[metric]
        grid = self.recon_grid(lm, data, key[1])
        return [entry("recon", "recon", metrics, proto, skipped_metrics=skipped, **({"grid": grid} if grid else {}))]

    def recon_grid(self, lm: LoadedModel, data: EvalData, method: str) -> str | None:
        from .datasets import READ_ERRORS
        from .plots import image_grid

        if self.opts.grid <= 0:
            return None
        images = []
        for pos in range(len(data.test)):
            if len(images) == self.opts.grid:
                break
            try:
                images.append(data.test.load(pos, lm.size, method, self.opts.crop_pct))
            except READ_ERRORS:
                continue
        x = torch.stack(images).float().div(255)
        with torch.inference_mode(), autocast(lm.device, self.precision(lm.device)):
            rec = lm.model.decode(lm.model.encode(x.to(lm.device))).float().cpu()
        path = self.out / f"recon_{lm.name}.png"
        tmp = path.with_name(f".{path.stem}.tmp.png")
        image_grid(x, quantize(rec).float().div(255), tmp, nrow=4)
        os.replace(tmp, path)
        return path.name


@contextlib.contextmanager
def few_threads(device: torch.device, work: int):
    """One CPU thread for small probe training: with tiny matmuls, keeping threads in step costs more than it
    saves (100x slower with 2 threads on a busy 2-core machine, measured)."""
    if device.type != "cpu" or work >= 1 << 20:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _num_classes(data: EvalData, labelset: str, ytr: torch.Tensor, yte: torch.Tensor) -> int:
    names = data.test.labelsets[labelset].classnames
    return len(names) if names else int(max(ytr.max(), yte.max())) + 1


def _short(e: dict) -> str:
    if "skipped" in e:
        return f"skipped: {e['skipped']}"
    return ", ".join(f"{k} {v:.4g}" for k, v in e["metrics"].items())


def check_device(device: str) -> str:
    """`auto`, or a device torch knows and this machine has."""
    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OpenVTPError(f"--device {device!r}: not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OpenVTPError(f"--device {device}: no CUDA device is available")
    return device


def model_names(specs: list[str], names: list[str] | None = None) -> list[str]:
    """Column names: the folder names, with as many parent folders as it takes to tell them apart."""
    if names is not None:
        if len(names) != len(specs) or len(set(names)) != len(names) or any(not n or "/" in n for n in names):
            raise OpenVTPError(f"--names needs {len(specs)} distinct names without '/', got {names}")
        return names
    parts = [Path(str(s).rstrip("/")).parts for s in specs]
    for depth in range(1, max(map(len, parts)) + 1):
        out = ["-".join(p[-depth:]) for p in parts]
        if len(set(out)) == len(out):
            return out
    return [f"{n}-{i}" for i, n in enumerate("-".join(p) for p in parts)]


def evaluate(models: list[str], data: str, opts: EvalOptions, out: str | Path, names: list[str] | None = None,
             command: str = "", revision: str | None = None) -> tuple[dict, str] | None:
    """Evaluate every model on `data`; write the report under `out`. Returns (payload, table) on rank 0."""
    import dataclasses
    from datetime import datetime, timezone

    from openvtp.models.config import VTPConfig
    from openvtp.models.io import CONFIG_NAME, resolve_model_dir
    from openvtp.runtime import dist

    from .extract import load_model
    from .report import write_report

    if not models:
        raise OpenVTPError("no model given")
    names = model_names(models, names)
    # a bad model path, resolution, --data or task fails here, before any work
    configs = [VTPConfig.from_json_file(resolve_model_dir(spec, revision) / CONFIG_NAME) for spec in models]
    for spec, cfg in zip(models, configs):
        size = opts.size or cfg.image_size
        if size % cfg.vision_patch_size:
            raise OpenVTPError(f"resolution {size} is not a multiple of the patch size {cfg.vision_patch_size} "
                               f"of {spec}")
    suite = Suite(data, opts, out)
    suite.check_tasks(configs, names)
    info = dist.info(check_device(opts.device))
    results, model_info = {}, []
    for spec, name in zip(models, names):
        lm = load_model(spec, name, info.device, opts.size, revision)
        results[name] = suite.run(lm)
        model_info.append({"name": name, "path": str(spec), "fingerprint": lm.fingerprint, "resolution": lm.size,
                           "text_tower": lm.has_text, "decoder": lm.has_decoder,
                           "params": lm.model.param_counts()})
        del lm
        if info.device.type == "cuda":
            torch.cuda.empty_cache()
    if info.rank != 0:
        return None
    first = suite.data_for(model_info[0]["resolution"])
    payload = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "data": first.describe(),
        "protocol": opts.protocol,
        "tasks": [t for t in TASKS if t in opts.tasks],
        "options": dataclasses.asdict(opts),
        "device": str(info.device),
        "precision": LABELS[resolve(opts.precision, info.device, cuda_default="bf16")],
        "models": model_info,
        "results": results,
    }
    return payload, write_report(Path(out), payload)
