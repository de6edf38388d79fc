"""Hypergradients with 2 gloo processes, each holding half of the D1 and D2 batches, equal the
one-process hypergradients of the whole batches (float64, so that only the algebra is compared:
the finite difference divides by a tiny radius, which in float32 turns summation-order rounding
and ReLU kinks into differences of a few per cent)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss

from bundle.engines import FiniteDifferenceHypergradient, FirstOrderHypergradient
from bundle.engines.hypergradient import LowerStep


def _batch(seed: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 256, 256, generator=g, dtype=torch.float64)
    labels = torch.zeros(n, 1, 256, 256, dtype=torch.float64)
    for i in range(n):
        labels[i, :, 40 + 20 * i + 10 * seed : 170, 60 + 10 * i : 200] = 1
    return images, labels


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    from bundle.networks import BLOSAM

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = BLOSAM("sam_tiny", num_classes=1).double()
    lower = net.lower_parameters()
    opt = torch.optim.AdamW(lower, lr=5e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2)
    x1, y1 = _batch(1)
    x2, y2 = _batch(2)
    for _ in range(3):  # the same lower steps everywhere (the trainer averages their gradients)
        before = [p.detach().clone() for p in lower]
        opt.zero_grad()
        loss_fn(net(x1), y1).backward()
        opt.step()
    grads = [p.grad.detach().clone() for p in lower]
    share = slice(rank, rank + 1)

    def engine(inputs: torch.Tensor, targets: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(network=net, loss_function=loss_fn, inferer=SimpleInferer(), scaler=None,
                               autocast=contextlib.nullcontext, lower_optimizer=opt,
                               lower_step=LowerStep(inputs, targets, before, grads))  # fmt: skip

    result = {}
    for name, variant in (("first", FirstOrderHypergradient()), ("finite_difference", FiniteDifferenceHypergradient())):
        # whole batches on every rank (averaging equal values changes nothing): the one-process value
        whole = variant(engine(x1, y1), x2, y2)
        result[name + "_whole"] = torch.cat([p.grad.flatten() for p in net.upper_parameters()])
        shared = variant(engine(x1[share], y1[share]), x2[share], y2[share])
        result[name + "_shared"] = torch.cat([p.grad.flatten() for p in net.upper_parameters()])
        result[name + "_norms"] = (whole.grad_norm, shared.grad_norm)
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_compute_the_whole_batch_hypergradient(tmp_path, one_thread):
    # spawn, not fork: a process that has run a CUDA backward (an earlier test in this worker) cannot fork autograd
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("first", "finite_difference"):
        whole, shared = ranks[0][name + "_whole"], ranks[0][name + "_shared"]
        rel = ((shared - whole).norm() / whole.norm()).item()
        print(f"{name}: 2 processes vs one, relative difference {rel:.1e}")
        assert rel < 1e-9
        assert torch.equal(ranks[0][name + "_shared"], ranks[1][name + "_shared"]), "ranks disagree"
        norm_whole, norm_shared = ranks[0][name + "_norms"]
        assert abs(norm_shared - norm_whole) <= 1e-9 * norm_whole
