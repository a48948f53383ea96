"""Two gloo processes on CPU: gathered / all-reduced losses equal the one-process result on the full batch."""

import datetime
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from openvtp.losses import ClipLoss, DINOLoss, IBOTPatchLoss, sinkhorn_knopp

WORLD = 2
B, E, K = 6, 5, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _full_inputs():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    txt = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    logits = torch.randn(B, K, generator=g) * 2 + torch.tensor([1.5, 0.0, 0.0, 0.0])
    patches = torch.randn(8, K, generator=g) * 2
    return img, txt, logits, patches


def _clip(img, txt, gather_with_grad=True):
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    loss = ClipLoss(gather_with_grad)(img, txt, torch.tensor(3.0))
    loss.backward()
    return loss.detach(), img.grad, txt.grad


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    img, txt, logits, patches = _full_inputs()
    half = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    res = {}
    res["clip"], res["clip_gi"], res["clip_gt"] = _clip(img[half], txt[half])
    res["clip_nograd"], res["clip_nograd_gi"], _ = _clip(img[half], txt[half], gather_with_grad=False)
    res["sk"] = DINOLoss(K).sinkhorn_knopp_teacher(logits[half], 0.5)
    # uneven masked-patch counts (3 + 5), then one rank with none at all (0 + 8)
    rows = slice(0, 3) if rank == 0 else slice(3, 8)
    res["sk_uneven"] = IBOTPatchLoss(K).sinkhorn_knopp_teacher(patches[rows], 0.5, torch.tensor(rows.stop - rows.start))
    rows = slice(0, 0) if rank == 0 else slice(0, 8)
    res["sk_empty"] = sinkhorn_knopp(patches[rows], 0.5)
    dino = DINOLoss(K)
    dino.update_center(logits[half])
    res["center"] = dino.center.clone()
    torch.save(res, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    img, txt, logits, patches = _full_inputs()
    loss, gi, gt = _clip(img, txt)
    for r, res in enumerate(ranks):
        half = slice(r * B // WORLD, (r + 1) * B // WORLD)
        assert torch.allclose(res["clip"], loss, atol=1e-6)
        assert torch.allclose(res["clip_nograd"], loss, atol=1e-6)
        # gradient gather: each rank's rows get the sum of all ranks' (equal) losses' gradients, which
        # DDP's averaging turns back into the full-batch gradient; plain gather: the local share only
        assert torch.allclose(res["clip_gi"], WORLD * gi[half], atol=1e-6)
        assert torch.allclose(res["clip_gt"], WORLD * gt[half], atol=1e-6)
        assert torch.allclose(res["clip_nograd_gi"], gi[half], atol=1e-6)
        assert torch.allclose(res["center"], 0.1 * logits.mean(0, keepdim=True), atol=1e-6)
    sk_full = sinkhorn_knopp(logits, 0.5)
    assert torch.allclose(torch.cat([r["sk"] for r in ranks]), sk_full, atol=1e-6)
    # and the split matters: a rank alone would balance its own half differently
    assert not torch.allclose(sinkhorn_knopp(logits[: B // 2], 0.5), sk_full[: B // 2], atol=1e-3)
    sk_patches = sinkhorn_knopp(patches, 0.5)
    assert torch.allclose(torch.cat([r["sk_uneven"] for r in ranks]), sk_patches, atol=1e-6)
    assert ranks[0]["sk_empty"].shape == (0, K)
    assert torch.allclose(ranks[1]["sk_empty"], sk_patches, atol=1e-6)
