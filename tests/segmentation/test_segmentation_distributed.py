"""process_group=: the segmentation statistics summed over ranks (torch.distributed, gloo, two
CPU processes). Each rank holds a different number of samples of one batch; every loss must
equal the single-process loss of the whole batch, each rank's input gradient must be
world_size x the single-process gradient of its samples (the all-reduce's backward sums over
ranks), and a DDP step must give the single-process parameter gradients."""

from __future__ import annotations

import datetime
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
C = 4
IGNORE = 255
SPLIT = (2, 3)  # samples of rank 0 and rank 1: unequal on purpose

CONFIGS = [
    dict(mode="multiclass"),  # dice + iou + 0.8 ce
    dict(mode="multiclass", ignore_index=IGNORE, focal=1.0, focal_alpha=0.25, tversky=0.5),
    dict(mode="multiclass", per_image=True, class_weights=[1.0, 2.0, 0.5, 1.0], classes=[0, 2, 3]),
    dict(mode="multilabel", ignore_index=-1, focal=0.5, reduction="sum"),
    dict(mode="binary", dice=0.0, iou=1.0, bce=1.0, per_image=True),
]


def _batch(mode, ignore):
    g = torch.Generator().manual_seed(123)
    n = sum(SPLIT)
    c = 1 if mode == "binary" else C
    x = torch.randn(n, c, 6, 7, generator=g, dtype=torch.float64) * 2
    if mode == "multiclass":
        t = torch.randint(0, C, (n, 6, 7), generator=g)
        if ignore is not None:
            t[torch.rand(t.shape, generator=g) < 0.2] = ignore
    else:
        t = (torch.rand(x.shape, generator=g) < 0.4).to(torch.float64)
        if ignore is not None:
            t[torch.rand(t.shape, generator=g) < 0.2] = ignore
    return x, t


def _worker(rank, store_path):
    import fastgenloss as fgl

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        lo = sum(SPLIT[:rank])
        sl = slice(lo, lo + SPLIT[rank])
        for cfg in CONFIGS:
            cfg = dict(cfg)
            mode = cfg.pop("mode")
            x, t = _batch(mode, cfg.get("ignore_index"))
            full = x.clone().requires_grad_(True)
            want = fgl.segmentation_loss(full, t, mode, **cfg)
            (gfull,) = torch.autograd.grad(want, full)
            local = x[sl].clone().requires_grad_(True)
            got = fgl.segmentation_loss(local, t[sl], mode, process_group=True, **cfg)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14,
                                       msg=lambda m: f"rank {rank} {mode} {cfg}: {m}")
            (glocal,) = torch.autograd.grad(got, local)
            torch.testing.assert_close(glocal, WORLD * gfull[sl], rtol=1e-10, atol=1e-14,
                                       msg=lambda m: f"rank {rank} grad {mode} {cfg}: {m}")
        # the modules, with an explicit group
        group = dist.new_group([0, 1])
        x, t = _batch("multiclass", None)
        for ours in (fgl.nn.DiceLoss("multiclass", process_group=group),
                     fgl.nn.FocalLoss("multiclass", alpha=0.25, process_group=group)):
            plain = type(ours)("multiclass", **({"alpha": 0.25} if isinstance(ours, fgl.nn.FocalLoss) else {}))
            torch.testing.assert_close(ours(x[sl], t[sl]), plain(x, t), rtol=1e-12, atol=1e-14)
        # a DDP step on float32 logits of a small conv net: the single-process gradients
        torch.manual_seed(0)
        net = torch.nn.Conv2d(3, C, 3, padding=1)
        ref_net = torch.nn.Conv2d(3, C, 3, padding=1)
        ref_net.load_state_dict(net.state_dict())
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        g = torch.Generator().manual_seed(7)
        images = torch.randn(sum(SPLIT), 3, 8, 8, generator=g)
        labels = torch.randint(0, C, (sum(SPLIT), 8, 8), generator=g)
        loss = fgl.segmentation_loss(ddp(images[sl]), labels[sl], "multiclass", process_group=True)
        loss.backward()
        ref = fgl.segmentation_loss(ref_net(images), labels, "multiclass")
        ref.backward()
        torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
        for p, q in zip(net.parameters(), ref_net.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_process_group_two_ranks_gloo(tmp_path):
    # the spawned processes import this module: make its folder importable there
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)


def test_process_group_needs_initialized_distributed():
    import fastgenloss as fgl

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    x, t = _batch("multiclass", None)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        fgl.segmentation_loss(x, t, "multiclass", process_group=True)
