"""Data-parallel training with PyTorch's DDP, launched by ``torchrun`` (gloo on CPU, NCCL on CUDA).

    torchrun --standalone --nproc-per-node 2 pipelines/train_regressor.py <the usual arguments>

Run with plain python, everything happens in one process without DDP. Under torchrun (even with
one process: DDP and NCCL can then be checked on a one-GPU machine):

* every rank draws the *global* batch (indices, target attributes, augmentations, GP weights)
  from the same seeded generator, so the random stream is the one-process run's, and trains on its
  contiguous share of the batch (``batch_size`` must divide by the number of processes);
* DDP averages the gradients, so an update is the one-process update on the whole batch except
  for batch-norm statistics, which each rank takes over its own share (SyncBatchNorm would fix
  that on CUDA only; PyTorch has no CPU version);
* only rank 0 logs to MLflow, shows progress, writes checkpoints and models; every rank resumes
  from the same checkpoint folder (on several machines it must be on a shared file system).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from semknobs.errors import ParamsError
from semknobs.train.device import pick_device


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def main_only(
        self, context: contextlib.AbstractContextManager
    ) -> contextlib.AbstractContextManager:
        """``context`` on rank 0, a no-op elsewhere (e.g. the stage's MLflow run)."""
        return context if self.is_main else contextlib.nullcontext()

    def shard(self, batch: int, what: str = "batch_size") -> slice:
        """This rank's rows of a global batch of ``batch`` rows."""
        if batch % self.size:
            raise ParamsError(
                f"{what}: {batch} does not divide into {self.size} processes; "
                f"use a multiple of {self.size}"
            )
        per = batch // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def device(self, name: str) -> torch.device:
        """The training device; on CUDA, the GPU of this local rank (torchrun: one per process)."""
        device = pick_device(name)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DDP under torchrun, else itself."""
        if not dist.is_initialized():
            return module
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a per-rank scalar over all ranks."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t) / self.size

    def sync_from_main(self, module: nn.Module, device: torch.device) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module`` (in place)."""
        if self.size == 1:
            return
        for t in [*module.parameters(), *module.buffers()]:
            moved = t.detach().to(device)
            dist.broadcast(moved, src=0)
            t.data.copy_(moved.to(t.device))

    def replica_gap(self, module: nn.Module, device: torch.device) -> float:
        """Largest |weight - rank 0's weight| over all parameters and ranks (0.0: in sync).

        A check that DDP did its job: the replicas must end bit-identical. Every rank must call it.
        Buffers are left out: batch-norm statistics last saw each rank's own batch.
        """
        weights = list(module.parameters())
        if self.size == 1 or not weights:  # e.g. the concept network's pool: buffers only
            return 0.0
        flat = torch.cat([p.detach().float().flatten() for p in weights]).to(device)
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        gap = (flat - reference).abs().max().reshape(1)
        dist.all_reduce(gap, op=dist.ReduceOp.MAX)
        return float(gap)


def world_from_env() -> World:
    """The :class:`World` torchrun describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        msg = "WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them)"
        raise ParamsError(msg) from None
    if size < 1 or not 0 <= rank < size:
        raise ParamsError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {size})")
    return World(rank=rank, size=size, local_rank=local)


@contextlib.contextmanager
def session() -> Iterator[World]:
    """Under torchrun, join its process group for the block and leave it after.

    Backends: gloo for CPU tensors, and NCCL for CUDA tensors where CUDA is present (both, so
    that ``device: cpu`` also works on a GPU machine; torch's default there is NCCL alone).
    """
    world = world_from_env()
    if "MASTER_ADDR" not in os.environ or dist.is_initialized():
        yield world
        return
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield world
    finally:
        dist.destroy_process_group()
