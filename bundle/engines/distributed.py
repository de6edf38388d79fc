"""Data-parallel training of the bi-level trainer across processes (``torchrun``), on GPUs (NCCL) or CPUs (gloo).

Every process holds the whole model and computes on its shard of each global D1 / D2 batch
(:class:`bundle.data.CyclicShuffleSampler` with ``num_replicas`` / ``rank``); gradients are
averaged across processes before each optimiser step, so all processes take the same step, the one a
single process takes on the global batch (the losses are means over equal-sized shards).

Why not ``torch.nn.parallel.DistributedDataParallel``: DDP averages gradients in hooks that fire
when ``backward()`` accumulates into ``.grad``. The upper level takes its gradients with
``torch.autograd.grad`` (which DDP does not support) and the finite-difference hypergradient runs
several forward/backward passes per step on perturbed weights; what must be averaged there is not
one backward's gradient but intermediate quantities (the direction ``u`` and the final
hypergradient). So the trainer averages explicitly, with the same collective DDP uses
(``all_reduce``) and the same start-up broadcast of rank 0's weights.

:func:`rank` and :func:`world_size` read ``torchrun``'s environment until the process group exists
(Ignite's ``idist`` answers 0 / 1 then): a config may evaluate them before the expression that
initialises the group. Collectives run only once the group exists.
"""

from __future__ import annotations

import atexit
import builtins
import logging
import os
from collections.abc import Sequence

import ignite.distributed as idist
import torch
import torch.distributed as dist
from torch import Tensor

from bundle.errors import BundleInputError


def distributed_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    Raises:
        BundleInputError: more processes on this node than it has GPUs (NCCL needs one GPU per process).
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if local_rank >= count:
        raise BundleInputError(
            f"torchrun --nproc_per_node: this node has {count} CUDA GPU(s) but this process is local rank {local_rank}; "
            f"start at most {count} process(es) per node, or hide the GPUs (CUDA_VISIBLE_DEVICES='') to train on CPU "
            "processes with gloo"
        )
    return torch.device(f"cuda:{local_rank}")


def init_distributed() -> torch.device:
    """Join the process group ``torchrun`` describes (NCCL on GPUs, gloo on CPUs); a no-op in a
    single process or when a group exists. Ranks other than 0 then print nothing and log warnings
    and errors only.

    Returns:
        this process's device (:func:`distributed_device`).
    """
    device = distributed_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives and all_gather_object use the current device
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        # Ignite joins the group lazily, creating a subgroup (a collective) on its first call, e.g.
        # in a CheckpointSaver that only rank 0 builds: join it now, on every rank together
        idist.sync()
        atexit.register(destroy_distributed, barrier=False)
        if rank() > 0:
            _quiet()
    return device


def _quiet() -> None:
    # reports are rank 0's: the other ranks log warnings and errors only and print nothing
    # (as torchvision's reference scripts do), so the bundle's prints appear once
    logging.disable(logging.INFO)
    builtins.print = lambda *args, **kwargs: None


def destroy_distributed(barrier: bool = True) -> None:
    """Leave the process group (if any), after every rank has finished (``barrier``)."""
    if _group():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def _group() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """Whether a process group of more than one process exists (collectives are no-ops otherwise)."""
    return _group() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes: the process group's, else ``torchrun``'s ``WORLD_SIZE`` (1 without)."""
    return dist.get_world_size() if _group() else int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    """This process's rank: the process group's, else ``torchrun``'s ``RANK`` (0 without)."""
    return dist.get_rank() if _group() else int(os.environ.get("RANK", 0))


def is_main_process() -> bool:
    """Whether this process writes checkpoints, caches and reports (rank 0)."""
    return rank() == 0


def average_across_ranks(tensors: Sequence[Tensor]) -> None:
    """Replace each tensor in place by its mean over all processes (one all-reduce for the lot).

    A no-op in a single process. Non-finite values stay non-finite everywhere, so a GradScaler
    skips the same steps on every rank.
    """
    if not is_distributed() or not tensors:
        return
    # plain views: gradients of MONAI MetaTensor inputs are MetaTensors, whose batch metadata
    # makes cat / slicing fail; as_subclass shares the storage, so the copy-back is in place
    tensors = [t.as_subclass(torch.Tensor) for t in tensors]
    dtypes = {t.dtype for t in tensors}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float64
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` across processes, in place (a no-op in a single process).

    Every process must all-reduce the same buffers, so a parameter without a gradient (not reached by
    this rank's backward pass) gets a zero one first.
    """
    if not is_distributed():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_across_ranks([p.grad for p in params])


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (what DDP does at construction)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def gather_objects(obj: object) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
