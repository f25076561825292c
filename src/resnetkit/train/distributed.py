"""Data-parallel training through PyTorch's own engine: DDP set up from torchrun's environment.

``torchrun`` exports RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE
> 1 we join the process group (NCCL on CUDA, gloo on CPU) with a collective timeout so that a
failed rank makes the others exit instead of hanging.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks (returns ``t`` unchanged in a single process)."""
        if not self.enabled:
            return t
        t = t.clone()
        if dist.get_backend() == "nccl" and t.dtype == torch.float64:
            t = t.to(torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj: object) -> object:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_name: str | None, timeout_s: float = 600.0) -> tuple[DistContext, str | None]:
    """Join the process group when launched by torchrun; returns the context and the device name.

    On CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    world = env_world_size()
    if world <= 1:
        return DistContext(), device_name
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in (None, "", "auto") or (
        device_name or "").startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.debug("rank %d/%d joined the %s process group", rank, world, backend)
    return DistContext(rank, local_rank, world), device_name or "cpu"


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
