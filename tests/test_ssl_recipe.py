"""DINOv2's SSL recipe as its code runs it: optimizer groups and schedules, frozen prototypes, per-module
clipping, the mask plan, effective blur rates, loss scales, separate iBOT head, trainable gain, presets."""
import json
import math

import pytest
import torch

from openvtp.config.load import load_config
from openvtp.config.schema import PretrainConfig
from openvtp.data.views import MultiCrop, sample_generator
from openvtp.losses import IBOTPatchLoss
from openvtp.models import VTPModel
from openvtp.train import optim
from openvtp.runtime.checkpoint import load_checkpoint
from openvtp.train.data import PretrainCollate, build_loader, layout_for
from openvtp.train.task import PretrainTask

from .test_train import tiny_config


def _task(tmp_path, *extra):
    cfg = tiny_config(tmp_path, "ssl.train_gain=true", *extra)  # DINOv2's gain (the demo fixes it)
    return cfg, PretrainTask(cfg, VTPModel(cfg.model))


def test_presets_follow_dinov2_vitl_and_the_demo_keeps_its_tuned_recipe():
    l = load_config(PretrainConfig, "vtp-l")
    s, o = l.ssl, l.optim
    assert (s.prototypes, s.momentum, s.drop_path, s.freeze_last_layer_steps) == (131072, (0.994, 1.0), 0.4, 1250)
    assert (o.weight_decay, o.weight_decay_end, o.layer_decay, o.patch_embed_lr_mult) == (0.04, 0.2, 1.0, 0.2)
    assert (o.beta2, o.grad_clip, o.clip_mode) == (0.999, 3.0, "module")
    assert s.blur_p == (0.0, 0.9, 0.5) and not s.ibot_separate_head and s.train_gain
    d = load_config(PretrainConfig, "demo")
    assert (d.optim.weight_decay, d.optim.weight_decay_end, d.optim.beta2, d.optim.grad_clip, d.optim.clip_mode) == \
        (0.05, 0.05, 0.95, 1.0, "global")
    # the recipe the demo was tuned with, wherever an option keeps it
    assert (d.ssl.blur_p, d.ssl.blur_reference) == ((1.0, 0.1, 0.5), (32, 16))
    assert (d.ssl.freeze_last_layer_steps, d.ssl.train_gain, d.ssl.ibot_normalize, d.ssl.koleo_crops) == \
        (0, False, "masked", "mean")
    assert (d.optim.layer_decay, d.optim.patch_embed_lr_mult) == (1.0, 1.0)
    # the pipeline draws its crops from the config
    c = load_config(PretrainConfig, "demo", ["ssl.flip_p=0.4", "ssl.jitter_p=0.7", "ssl.gray_p=0.3",
                                             "ssl.solarize_p=0.1", "ssl.blur_sigma=[0.2,1.5]"])
    crops = PretrainCollate(c, layout_for(c, 0, 1)).multicrop
    keys = ("flip_p", "jitter_p", "gray_p", "solarize_p", "blur_p", "blur_sigma", "blur_reference")
    assert all(getattr(crops, k) == getattr(c.ssl, k) for k in keys), [(k, getattr(crops, k)) for k in keys]


def test_param_groups_layer_decay_patch_embed_and_last_layer(tmp_path):
    cfg, task = _task(tmp_path, "optim.layer_decay=0.5", "optim.patch_embed_lr_mult=0.2")
    opt = optim.adamw(optim.pretrain_param_groups(task, cfg.optim), cfg.optim)
    optim.set_schedule(opt, lr=1.0, weight_decay=0.1, last_layer_frozen=True)
    lr = {p: g["lr"] for g in opt.param_groups for p in g["params"]}
    wd = {p: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(task.named_parameters())
    depth = len(task.model.trunk.blocks)  # 2: DINOv2's rate ** (depth + 1 - layer)
    assert lr[named["model.trunk.patch_embed.proj.weight"]] == pytest.approx(0.5 ** 3 * 0.2)
    assert lr[named["model.trunk.cls_token"]] == pytest.approx(0.5 ** 3)
    assert lr[named["model.trunk.blocks.0.attn.qkv.weight"]] == pytest.approx(0.5 ** depth)
    assert lr[named["model.trunk.blocks.1.mlp.w2.weight"]] == pytest.approx(0.5)
    assert lr[named["model.trunk.norm.weight"]] == lr[named["model.pixel_decoder.blocks.0.attn.qkv.weight"]] == 1.0
    assert lr[named["ssl.head.mlp.0.weight"]] == 1.0
    assert lr[named["ssl.head.last_layer.weight"]] == lr[named["ssl.head.last_layer_gain"]] == 0.0  # frozen
    assert wd[named["model.trunk.blocks.0.attn.qkv.weight"]] == 0.1 and wd[named["ssl.head.last_layer_gain"]] == 0.1
    assert wd[named["model.trunk.blocks.0.norm1.weight"]] == wd[named["ssl.head.mlp.0.bias"]] == 0.0
    optim.set_schedule(opt, lr=1.0, weight_decay=0.1, last_layer_frozen=False)
    assert {g["lr"] for g in opt.param_groups if g["last_layer"]} == {1.0}


def test_loop_freezes_prototypes_schedules_wd_and_logs_health_on_log_steps(tmp_path, monkeypatch):
    import openvtp.train.objectives.ssl as ssl_mod
    from openvtp.train.loop import pretrain

    calls = []
    health = ssl_mod.ssl_health
    monkeypatch.setattr(ssl_mod, "ssl_health", lambda *a: calls.append(1) or health(*a))
    run = tmp_path / "run"
    cfg = tiny_config(run, "ssl.train_gain=true", "ssl.freeze_last_layer_steps=2", "train.steps=3", "train.ckpt_every=1",
                      "train.log_every=2",
                      "optim.clip_mode=module", "optim.weight_decay=0.04", "optim.weight_decay_end=0.4",
                      "optim.warmup_steps=0")
    torch.manual_seed(cfg.train.seed)  # the loop builds the task right after this seed
    init = PretrainTask(cfg, VTPModel(cfg.model)).state_dict()
    pretrain(cfg)
    states = {s: load_checkpoint(run / "checkpoints" / f"step_{s:07d}")["task"] for s in (1, 2, 3)}
    for key in ("ssl.head.last_layer.weight", "ssl.head.last_layer_gain"):
        assert torch.equal(states[2][key], init[key]), f"{key} moved while frozen"
        assert not torch.equal(states[3][key], init[key]), f"{key} did not move after the freeze"
    assert not torch.equal(states[1]["ssl.head.mlp.0.weight"], init["ssl.head.mlp.0.weight"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3] and len(calls) == 2  # health computed on log steps only
    assert all(k in r for r in rows for k in ("ssl_teacher_entropy", "ssl_prototypes_used", "grad_norm_trunk"))
    cosine = [0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * s / 3)) for s in (1, 2)]  # wd of steps 1, 2
    assert [r["weight_decay"] for r in rows] == pytest.approx(cosine)


def test_gradients_clipped_per_module_or_globally(tmp_path):
    for mode in ("module", "global"):
        cfg, task = _task(tmp_path, f"optim.clip_mode={mode}", "optim.grad_clip=3.0")
        params = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
        for i, (_, p) in enumerate(params):
            p.grad = torch.full_like(p, 0.01 * (i + 1))
        before = optim.total_norm({n: p.grad.norm() for n, p in params}, torch.device("cpu"))
        norms = optim.clip_gradients(task, cfg.optim)
        after = {}
        for n, p in params:
            part = optim.clip_module(n)
            after[part] = after.get(part, 0.0) + float(p.grad.double().square().sum())
        after = {k: math.sqrt(v) for k, v in after.items()}
        assert float(optim.total_norm(norms, torch.device("cpu"))) == pytest.approx(float(before), rel=2e-3)
        if mode == "module":
            assert set(norms) == {"trunk", "pixel_decoder", "text", "clip_head", "ssl_head"}
            # each part at the clip (torch's fp32 norm of the 1.6M-row token embedding is off by ~1e-3)
            assert all(v == pytest.approx(3.0, rel=2e-3) for v in after.values()), after
        else:
            assert set(norms) == {"all"}
            assert math.sqrt(sum(v * v for v in after.values())) == pytest.approx(3.0, rel=2e-3)
            assert min(after.values()) < 2.0  # parts keep their proportions


def test_masked_crops_shuffled_stratified_and_world_size_free(tmp_path):
    cfg = tiny_config(tmp_path, "ssl.batch=8", "train.batch=8", "model.vision_patch_size=4")  # 8 x 8 patch grid
    n_g, n = cfg.ssl.n_global, 8
    masked_per_crop = torch.zeros(n_g)
    for step, batch in zip(range(20), build_loader(cfg, 0, 1, 0)):
        frac = batch["ssl_masks"].float().mean(dim=1).view(n_g, n)  # crop-major
        assert int((frac > 0).sum()) == int(n_g * n * cfg.ssl.mask_probability), step
        ratios = frac[frac > 0].sort().values
        assert ratios.max() <= cfg.ssl.mask_ratio[1] and ratios.min() >= 0.05
        masked_per_crop += (frac > 0).sum(dim=1)
    assert (masked_per_crop > 0.3 * masked_per_crop.sum() / n_g).all(), masked_per_crop  # every crop gets masked
    # two processes: each rank's masks are its slice of the one-process batch
    one = next(iter(build_loader(cfg, 0, 1, 3)))["ssl_masks"].view(n_g, n, -1)
    ranks = [next(iter(build_loader(cfg, r, 2, 3)))["ssl_masks"].view(n_g, n // 2, -1) for r in (0, 1)]
    assert torch.equal(one, torch.cat(ranks, dim=1))


def _edge(size: int = 64) -> torch.Tensor:
    img = torch.zeros(3, size, size, dtype=torch.uint8)
    img[:, :, size // 2:] = 255
    return img


def _plain_multicrop(**kw) -> MultiCrop:
    return MultiCrop(global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), flip_p=0, jitter_p=0, gray_p=0,
                     solarize_p=0, **kw)


def test_blur_rates_are_dinov2s_effective_ones():
    img, draws = _edge(), 300
    # default blur_p (DINOv2's effective rates); sigma >= 1 px so that every blur shows
    blurring = _plain_multicrop(global_size=16, local_size=8, n_local=2, blur_sigma=(1.0, 2.0), blur_reference=(16, 8))
    plain = _plain_multicrop(global_size=16, local_size=8, n_local=2, blur_p=(0.0, 0.0, 0.0))
    ref_g, ref_l = plain(img, sample_generator(0, 0, 0))  # whole-image crops: the same every draw
    hits = torch.zeros(3)
    for i in range(draws):
        g, l = blurring(img, sample_generator(0, 0, i))
        blurred = [not torch.allclose(x, r, atol=1e-6) for x, r in zip(g + l, ref_g + ref_l)]
        hits += torch.tensor([blurred[0], blurred[1], sum(blurred[2:]) / 2])
    rates = hits / draws
    assert rates[0] == 0 and abs(rates[1] - 0.9) < 0.06 and abs(rates[2] - 0.5) < 0.08, rates


def test_blur_sigma_scales_with_the_crop_size():
    def transition(size: int, **kw) -> float:
        mc = _plain_multicrop(global_size=size, local_size=8, n_local=0, blur_p=(1.0, 1.0, 1.0), blur_sigma=(2.0, 2.0),
                              **kw)
        row = mc(_edge(448), sample_generator(0, 0, 0))[0][0][0, size // 2]
        row = (row - row.min()) / (row.max() - row.min())
        return float(((row > 0.05) & (row < 0.95)).sum()) / size  # share of the row inside the edge

    assert MultiCrop().blur_size(224, 224) == (1.0, 9) and MultiCrop().blur_size(32, 224) == (32 / 224, 3)
    assert transition(224) > 4 / 224  # sigma 2 px at 224 px spreads the edge over a few pixels
    assert transition(32) < 2.5 / 32 < transition(32, blur_reference=(32, 32))  # the same share, not 2 px at 32 px


def test_ibot_and_koleo_scales(tmp_path, monkeypatch):
    import openvtp.train.objectives.ssl as ssl_mod

    cfg = tiny_config(tmp_path, "ssl.drop_path=0")
    batch = next(iter(build_loader(cfg, 0, 1, 0)))
    masks = batch["ssl_masks"]
    terms = {}
    other = torch.randn(5, cfg.model.vision_embed_dim)  # rows another rank would contribute
    monkeypatch.setattr(ssl_mod.dist, "all_gather", lambda x: torch.cat([x, other]))
    for opts in (("all", "sum", "rank"), ("masked", "mean", "global")):
        c = tiny_config(tmp_path, "ssl.drop_path=0", *(f"ssl.{k}={v}" for k, v in
                                                        zip(("ibot_normalize", "koleo_crops", "koleo_batch"), opts)))
        torch.manual_seed(0)
        task = PretrainTask(c, VTPModel(c.model))
        terms[opts[0]] = task.ssl(task.model, batch, 0)
        cls = task.model.trunk(batch["ssl_globals"].flatten(0, 1), masks=masks)[:, 0].chunk(c.ssl.n_global)
        koleo = [task.ssl.koleo(x if opts[2] == "rank" else torch.cat([x, other])) for x in cls]
        want = sum(koleo) if opts[1] == "sum" else sum(koleo) / len(koleo)
        assert float(terms[opts[0]]["ssl_koleo"]) == pytest.approx(float(want.detach()), rel=1e-5)
    masked_images = int((masks.sum(dim=1) > 0).sum())
    assert 0 < masked_images < masks.shape[0]
    assert float(terms["all"]["ssl_ibot"]) == pytest.approx(
        float(terms["masked"]["ssl_ibot"]) * masked_images / masks.shape[0], rel=1e-5)
    # the loss itself: DINOv2's forward_masked divides by the images given
    ce_rows = IBOTPatchLoss(4)(torch.zeros(3, 4), torch.full((3, 4), 0.25), torch.tensor([1.0, 0.5, 0.5]), n_images=4)
    assert float(ce_rows) == pytest.approx(2 * math.log(4) / 4)


def test_separate_ibot_head_and_trainable_gain(tmp_path):
    cfg, task = _task(tmp_path, "ssl.ibot_separate_head=true", "ssl.dino_weight=0", "ssl.koleo_weight=0",
                      "clip.weight=0", "recon.weight=0")
    ssl = task.ssl
    assert set(ssl.teacher.keys()) == {"trunk", "head", "ibot_head"}
    batch = next(iter(build_loader(cfg, 0, 1, 0)))
    task(batch, 0)["loss"].backward()
    assert not ssl.head.mlp[0].weight.grad.any()  # iBOT alone trains only its own head
    assert ssl.ibot_head.mlp[0].weight.grad.abs().sum() > 0 and ssl.ibot_head.last_layer_gain.grad.abs().sum() > 0
    with torch.no_grad():
        ssl.ibot_head.last_layer_gain.fill_(2.0)
    ssl.update_teacher(task.model, 0.5)
    assert torch.allclose(ssl.teacher["ibot_head"].last_layer_gain, torch.full_like(ssl.ibot_head.last_layer_gain, 1.5))
    x = torch.randn(3, cfg.model.vision_embed_dim)
    base = torch.nn.functional.linear(
        torch.nn.functional.normalize(ssl.ibot_head.mlp(x), dim=-1),
        torch.nn.functional.normalize(ssl.ibot_head.last_layer.weight, dim=-1))
    assert torch.allclose(ssl.ibot_head(x), 2.0 * base, atol=1e-6)  # logit_k = g_k * cos(x, v_k)
    _, fixed = _task(tmp_path, "ssl.train_gain=false")
    assert fixed.ssl.head.last_layer_gain is None and "ssl.head.last_layer_gain" not in dict(fixed.named_parameters())

