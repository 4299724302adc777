"""torch.distributed helpers: process-group setup, all-gather with the local gradient kept,
gradient averaging, and the checks that turn a missing process group into a clear error.

Launch with ``torchrun --nproc-per-node N -m m3embed.cli train CONFIG.yaml``: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .losses import Reps


class DistributedError(RuntimeError):
    """Distributed training asked for without a usable process group."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> World:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, …); single process otherwise.

    Backend: NCCL for CUDA devices, gloo for CPU. An already-initialised group is reused.
    """
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        return World()  # not launched by torchrun: one process, no group
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def require_process_group(what: str = "negatives_cross_device") -> None:
    """Raise ``DistributedError`` unless a process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError(
            f"{what} needs an initialised torch.distributed process group: launch with "
            "`torchrun --nproc-per-node N -m m3embed.cli train CONFIG.yaml` (or call "
            "torch.distributed.init_process_group first), or turn negatives_cross_device off"
        )


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0; this rank's slice keeps its autograd graph,
    the others are constants (the reference's ``_dist_gather_tensor``). Shapes must agree."""
    require_process_group()
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.detach())
    parts[dist.get_rank()] = t
    return torch.cat(parts, 0)


def all_gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    require_process_group()
    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts, 0)


def _pad_dim1(t: torch.Tensor, length: int, value: float | int = 0) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    pad = [0, 0] * (t.dim() - 2) + [0, length - t.shape[1]]
    return torch.nn.functional.pad(t, pad, value=value)


def gather_reps(reps: Reps, heads: tuple[str, ...], pad_id: int = 0) -> Reps:
    """All-gather the fields the ``heads`` score with; token tensors are padded to the longest rank.

    Padding is neutral: pad ids carry weight 0 and mask 0, ColBERT padded rows are zero and masked.
    """
    require_process_group()
    out = Reps(ids=reps.ids, mask=reps.mask)
    if "sparse" in heads or "colbert" in heads:
        length = torch.tensor([reps.ids.shape[1]], device=reps.ids.device)
        lengths = all_gather_no_grad(length)
        lmax = int(lengths.max())
        out.ids = all_gather_no_grad(_pad_dim1(reps.ids, lmax, pad_id))
        out.mask = all_gather_no_grad(_pad_dim1(reps.mask, lmax, 0))
        if "sparse" in heads:
            out.sparse = all_gather_with_grad(_pad_dim1(reps.sparse, lmax, 0))
        if "colbert" in heads:
            out.colbert = all_gather_with_grad(_pad_dim1(reps.colbert, lmax - 1, 0))
    if "dense" in heads:
        out.dense = all_gather_with_grad(reps.dense)
    return out


def average_gradients(params: list[torch.nn.Parameter], world_size: int, bucket_mb: int = 64) -> None:
    """All-reduce (mean) the ``.grad`` of ``params`` in flat buckets.

    A parameter without a gradient gets zeros first: every rank must reduce the same buckets.
    """
    if world_size <= 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    bucket: list[torch.Tensor] = []
    size = 0
    limit = bucket_mb * 2**20

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world_size
        off = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[off : off + n].view_as(g))
            off += n
        bucket, size = [], 0

    for g in grads:
        if bucket and (g.dtype != bucket[0].dtype or g.device != bucket[0].device):
            flush()
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= limit:
            flush()
    flush()


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (fresh random heads must agree)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (single process: ``flag``)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
