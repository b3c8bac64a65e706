"""Data-parallel training under ``torchrun``: torch DDP over the bags (or patient graphs) of
each batch, with the loss computed on the whole batch so N processes take the same optimiser
steps as one.

Under ``torchrun --nproc-per-node N wsimm train ...`` every process reads the same tables and
folds. Each global batch is cut into N contiguous shards; each process runs its model replica
(``DistributedDataParallel``) on its shard, the shards' outputs are gathered, and every process
evaluates the batch loss ``L`` on all of them, exactly as one process would. Each process then
back-propagates ``N * <outputs_r, dL/doutputs_r>`` (plus its share of any per-bag auxiliary
loss); DDP averages the gradients over processes, which gives exactly ``dL/dθ`` - also for
losses that do not split over bags, such as Cox's partial likelihood, whose risk sets span the
whole batch. The loss gathers run outside autograd; the one collective inside it is
:class:`~wsimm.mil.BagNorm`'s all-reduce of the batch statistics (as in ``SyncBatchNorm``),
which every rank runs in the same order, a stand-in item weighted out of it.

Validation and test scoring are split across processes and gathered, so every process makes
the same early-stopping decision. Only rank 0 writes the run directory and shows progress.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` (1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- splitting work ---------------------------------------------------------------------
    def sizes(self, n: int) -> list[int]:
        """How many of ``n`` items each rank takes (contiguous shards, rank order)."""
        return [len(c) for c in np.array_split(np.arange(n), self.world)]

    def shard(self, items: Sequence[Any]) -> tuple[list[Any], int]:
        """This rank's contiguous share of ``items`` and its offset in them (all of them,
        at 0, when not distributed)."""
        sizes = self.sizes(len(items))
        off = sum(sizes[: self.rank])
        return list(items[off : off + sizes[self.rank]]), off

    def step_items(self, batch: Sequence[Any]) -> tuple[list[Any], int]:
        """The items this rank runs for one training batch and their offset in it: its
        shard, or the batch's first item as a stand-in when the shard is empty (every rank
        must take part in each step; :meth:`batch_loss` gives the stand-in no weight)."""
        mine, off = self.shard(batch)
        return (mine, off) if mine else ([batch[0]], 0)

    def stands_in(self, n_batch: int) -> bool:
        """Whether this rank runs a stand-in item for a batch of ``n_batch`` (its shard is
        empty; see :meth:`step_items`)."""
        return self.active and self.sizes(n_batch)[self.rank] == 0

    # -- collectives --------------------------------------------------------------------------
    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def map_rows(self, fn: Callable[[list[Any]], tuple], items: Sequence[Any]) -> tuple:
        """``fn(items)`` computed in shards across ranks: ``fn`` returns a tuple whose
        elements are arrays or lists with one row per item; the ranks' rows are joined in
        item order, so every rank gets the whole result."""
        if not self.active:
            return fn(list(items))
        local, _ = self.shard(items)
        parts = self.gather_objects(fn(local))
        joined = []
        for j, first in enumerate(parts[0]):
            col = [p[j] for p in parts]
            if isinstance(first, np.ndarray):
                joined.append(np.concatenate(col))
            elif first is None:
                joined.append(None)
            else:
                joined.append([x for c in col for x in c])
        return tuple(joined)

    def batch_loss(
        self,
        outputs,
        n_batch: int,
        loss_fn: Callable[[Any], Any],
        *,
        aux=None,
        aux_weight: float = 0.0,
    ) -> tuple[Any, float]:
        """The tensor to back-propagate for one training step and the batch loss's value.

        The batch has ``n_batch`` items, cut as :meth:`shard` does; ``outputs`` are this
        rank's model outputs, whose first rows are its shard (a rank with an empty shard runs
        a stand-in item, which counts for nothing). ``loss_fn(all_outputs)`` is the loss on
        the whole batch, in batch order. ``aux`` is a mean over this rank's items (CLAM's
        instance loss).
        """
        import torch

        if not self.active:
            loss = loss_fn(outputs)
            if aux is not None:
                loss = loss + aux_weight * aux
            return loss, float(loss.detach())
        import torch.distributed as dist

        sizes = self.sizes(n_batch)
        n_local = sizes[self.rank]
        width = max(sizes)
        local = outputs[:n_local]
        pad = outputs.new_zeros((width, *outputs.shape[1:]))
        pad[:n_local] = local.detach()
        got = [torch.empty_like(pad) for _ in range(self.world)]
        dist.all_gather(got, pad)
        full = torch.cat([g[:s] for g, s in zip(got, sizes, strict=True)]).requires_grad_(True)
        with torch.enable_grad():
            main = loss_fn(full)
        (grad,) = torch.autograd.grad(main, full)
        off = sum(sizes[: self.rank])
        # DDP averages gradients over ranks: scale by world so the average is dL/dθ
        step = self.world * (local * grad[off : off + n_local]).sum() + 0.0 * outputs.sum()
        share = n_local / max(n_batch, 1)
        if aux is not None:
            step = step + aux_weight * aux * (self.world * share)
        # every rank joins this reduction, also one whose shard gave no auxiliary loss (a
        # fusion shard without slides), so the collectives stay in step
        part = torch.tensor([0.0 if aux is None else float(aux.detach()) * share])
        if outputs.is_cuda:  # NCCL reduces device tensors
            part = part.to(outputs.device)
        dist.all_reduce(part)
        return step, float(main.detach()) + aux_weight * float(part.item())

    def wrap(self, model, *, partial: bool = False):
        """``model`` in DistributedDataParallel (itself when not distributed). ``partial``:
        some parameters sit out some steps (CLAM's instance classifiers, the encoders of
        modalities a batch lacks or drops), which DDP must then look for."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        dev = next(model.parameters()).device
        ids = [dev.index] if dev.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=partial)


def current() -> Dist:
    """The job this process is part of (from the initialised process group)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return Dist()
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def launched_world() -> int:
    """How many processes ``torchrun`` started for this job (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str) -> tuple[Dist, str, bool]:
    """Join the torchrun job when there is one: gloo on CPU, NCCL on CUDA, one GPU per local
    rank. Returns the job, this process's device and whether this call opened the group (and
    so must close it with :func:`teardown`)."""
    if launched_world() <= 1:
        return Dist(), device, False
    import torch
    import torch.distributed as dist

    from wsimm.errors import ConfigError

    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        n = torch.cuda.device_count()
        if local >= n:
            raise ConfigError(
                f"torchrun started more processes per node than GPUs ({n}); "
                "use --nproc-per-node <= the GPU count or --device cpu"
            )
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    opened = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        opened = True
    if device == "cpu":  # share the cores between the node's processes
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", launched_world()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    return current(), device, opened


def teardown(opened: bool, *, wait: bool = True) -> None:
    """Leave the group :func:`setup` opened; ``wait`` for the other ranks first (not after an
    error, when they may never come)."""
    if opened:
        import torch.distributed as dist

        if wait:
            dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """False in torchrun's processes other than rank 0 (True before the group exists)."""
    return int(os.environ.get("RANK", "0")) == 0
