"""Data-parallel training through PyTorch's own engine: DDP set up from torchrun's environment.

``torchrun`` exports RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE
> 1 we join the process group (NCCL on CUDA, gloo on CPU) with a collective timeout, so that a
rank that hangs makes the others fail instead of waiting forever (torchrun itself stops every
rank as soon as one exits with an error). A second, gloo group carries the CPU-side coordination
(waiting for rank 0's data preparation, agreeing on when to stop after a signal), so that
neither needs a GPU tensor nor synchronises the GPU.

Environment (all optional):

- ``RESNETKIT_DIST_TIMEOUT``: seconds a collective may wait for the other ranks (default 600).
- ``RESNETKIT_DEBUG_DUMP_DIR``: test-only; every rank saves its final model and optimizer state
  to ``DIR/rank{RANK}.pt`` so that tests can check that all ranks hold the same weights.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import unwrap
from ..errors import UserError
from .loop import EpochStats

log = logging.getLogger(__name__)

TIMEOUT_ENV = "RESNETKIT_DIST_TIMEOUT"
DUMP_ENV = "RESNETKIT_DEBUG_DUMP_DIR"
DEFAULT_TIMEOUT_S = 600.0
#: The coordination group waits this long at least: rank 0 may decode a large image folder
#: while the others wait for its cache.
CONTROL_TIMEOUT_S = 4 * 3600.0


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (a single process is rank 0 of 1).

    ``control`` is the gloo process group used for CPU-side coordination (``None``: the default
    group).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    control: Any = field(default=None, compare=False, repr=False)
    #: whether this process created the default group (and so destroys it at the end); a group
    #: that a framework above resnetkit created (Ray Train) is left to it
    owns_group: bool = field(default=True, compare=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks (a copy; ``t`` itself in a single process).

        ``t`` must be on this rank's device (a CUDA tensor under NCCL).
        """
        if not self.enabled:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``t`` over ranks (``t`` itself in a single process)."""
        if not self.enabled:
            return t
        return self.all_reduce_sum(t) / self.world_size

    def barrier(self) -> None:
        """Wait for every rank (on the coordination group, with its long timeout)."""
        if self.enabled:
            with _peer_failures(self.rank):
                dist.barrier(group=self.control)

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (picklable objects only)."""
        if not self.enabled:
            return obj
        box = [obj]
        with _peer_failures(self.rank):
            dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics).

        Each rank's training forward updates its own copy from its own shard. DDP broadcasts
        rank 0's at the next forward that follows a training one (so also at the first evaluation
        batch); doing it explicitly here makes "evaluation uses exactly the statistics rank 0
        saves in the checkpoint" independent of that detail.
        """
        if not self.enabled:
            return
        for buf in unwrap(model).buffers():
            dist.broadcast(buf, src=0)

    def stop_vote(self) -> StopVote:
        return StopVote(self)


class PeerFailedError(UserError):
    """Another rank of the run failed (its own error says why); this one stops too."""

    exit_code = 1


@contextmanager
def _peer_failures(rank: int) -> Iterator[None]:
    """Turn a coordination call that fails because another rank died into one line, not a traceback."""
    try:
        yield
    except RuntimeError as e:  # gloo: "Connection closed by peer", or a timeout
        log.debug("rank %d: %s", rank, e)
        raise PeerFailedError(f"process {rank} stops because another process of this run failed or stopped "
                              f"answering ({type(e).__name__}); see that process's error") from None


class StopVote:
    """Agree on the step after which every rank stops, when a signal reaches some of them.

    A signal reaches the ranks at slightly different steps; a rank that stopped alone would leave
    the others waiting in the next gradient all-reduce. Each call posts this rank's flag (a max
    over ranks, asynchronously on the gloo group, so the GPU is never synchronised) and returns
    the agreement on the flags of the previous call: a signal is acted on one step after it
    arrives, at the same step on every rank. A single process decides at once.

    Each call also posts a number (the training clock of a time-budget run); :attr:`agreed` is
    rank 0's from the previous call, the same value on every rank, so the ranks set the same
    learning rate and stop at the same step. Rank 0's, not the largest: the other ranks' clocks
    also count their wait, inside the next step's all-reduce, while rank 0 writes an epoch's files.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self._work: Any = None
        self._flag = torch.zeros(2, dtype=torch.float64)
        self.agreed = 0.0

    def __call__(self, local: bool, value: float = 0.0) -> bool:
        """Whether to stop now, given whether this rank has been asked to stop."""
        if not self.ctx.enabled:
            self.agreed = value
            return local
        if self._work is not None:
            with _peer_failures(self.ctx.rank):
                self._work.wait()
            self._work = None
            self.agreed = float(self._flag[1])
            if self._flag[0] > 0:
                return True
        # a max over ranks: the others post 0, so the second entry is rank 0's value (a clock is >= 0)
        self._flag = torch.tensor([float(local), value if self.ctx.rank == 0 else 0.0], dtype=torch.float64)
        self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self.ctx.control, async_op=True)
        return False

    def close(self) -> None:
        """Complete the vote in flight (every rank posted it, so this does not block for long)."""
        if self._work is not None:
            self._work.wait()
            self._work = None


def global_epoch_stats(ctx: DistContext, stats: EpochStats, device: torch.device) -> EpochStats:
    """One epoch's training loss, accuracy and image count over all ranks (one all-reduce).

    ``step_losses`` are kept as they are (``train_epoch`` already records them over all ranks);
    a single process gets ``stats`` back unchanged.
    """
    if not ctx.enabled:
        return stats
    local = [stats.loss * stats.images, stats.acc * stats.images, float(stats.images)]
    loss_sum, correct, images = ctx.all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device)).tolist()
    n = max(images, 1.0)
    return EpochStats(loss_sum / n, round(correct) / n, int(images), stats.seconds, list(stats.step_losses))


def debug_dump(ctx: DistContext, model: nn.Module, optimizer: torch.optim.Optimizer,
               ema: nn.Module | None = None) -> None:
    """Test-only: with ``RESNETKIT_DEBUG_DUMP_DIR`` set, save this rank's final state (and EMA model) there."""
    where = os.environ.get(DUMP_ENV)
    if not where:
        return
    path = Path(where) / f"rank{ctx.rank}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict()}
    if ema is not None:
        state["ema"] = ema.state_dict()
    torch.save(state, path)
    log.debug("rank %d saved its final state to %s (%s is set)", ctx.rank, path, DUMP_ENV)


def env_world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def collective_timeout() -> float:
    """Seconds from ``RESNETKIT_DIST_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UserError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return value


def init_from_env(device_name: str | None, timeout_s: float | None = None) -> tuple[DistContext, str | None]:
    """Join the process group when launched by torchrun; returns the context and the device name.

    On CUDA each process takes ``cuda:LOCAL_RANK`` and NCCL; otherwise gloo. ``timeout_s``
    defaults to :func:`collective_timeout`. A default group that already exists (created by a
    framework such as Ray Train) is adopted as it is: its rank and size are the job's, an
    explicit ``cuda:N`` device is kept, and :func:`shutdown` leaves the group to its creator.
    """
    adopted = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if adopted else env_world_size()
    if world <= 1:
        return DistContext(owns_group=not adopted), device_name
    if not adopted and "RANK" not in os.environ:
        raise UserError("WORLD_SIZE is set but RANK is not; start distributed runs with torchrun")
    rank = dist.get_rank() if adopted else _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    timeout = collective_timeout() if timeout_s is None else float(timeout_s)
    auto = device_name in (None, "", "auto")
    if adopted:
        backend = dist.get_backend()
        use_cuda = backend == "nccl" or (device_name or "").startswith("cuda")
    else:
        use_cuda = (auto and torch.cuda.is_available()) or (device_name or "").startswith("cuda")
    if use_cuda:
        device_name = _cuda_device(device_name, rank, local_rank, keep_explicit=adopted)
    if not adopted:
        store = _store_after_restart(world, timeout)
        where = {"store": store, "rank": rank, "world_size": world} if store is not None else {}
        try:
            dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout), **where)
        except ValueError as e:  # env:// without MASTER_ADDR / MASTER_PORT
            raise UserError(f"cannot join the process group ({e}); start distributed runs with torchrun") from None
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=max(timeout, CONTROL_TIMEOUT_S)))
    log.debug("rank %d/%d %s the %s process group (timeout %.0fs)", rank, world,
              "adopted" if adopted else "joined", dist.get_backend(), timeout)
    if not use_cuda and auto:
        device_name = "cpu"
    return DistContext(rank, local_rank, world, control, owns_group=not adopted), device_name


def _store_after_restart(world: int, timeout: float) -> Any:
    """In a worker group that torchrun restarted, a namespace of the store for this attempt alone.

    The restarted workers reach the same agent store (``MASTER_ADDR:MASTER_PORT``) as the
    failed group, whose process-group keys are still there; gloo then dials the dead workers'
    addresses and fails ("connectFullMesh ... Connection refused", seen with torch 2.14 under
    ``--max-restarts``). Keys under a prefix of the restart count and the world size avoid them.
    ``None``: a first start, or a store torchrun does not serve (plain ``env://`` then).
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "")
    if not restart.isdigit() or int(restart) == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout))
    except (KeyError, ValueError) as e:
        raise UserError(f"cannot reach torchrun's store after a restart ({e}); start distributed runs with torchrun") from None
    return dist.PrefixStore(f"resnetkit/restart{restart}/world{world}", store)


def _cuda_device(device_name: str | None, rank: int, local_rank: int, keep_explicit: bool) -> str:
    """This process's GPU: ``cuda:LOCAL_RANK``, or an explicit ``cuda:N`` when ``keep_explicit``."""
    if not torch.cuda.is_available():
        raise UserError(f"device {device_name!r} was requested but no CUDA device is available; use --device cpu")
    if keep_explicit and device_name and device_name.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device_name))
        return device_name
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"process {local_rank} on this machine has no GPU of its own ({count} found); "
                        f"start at most {count} processes per machine (--nproc_per_node)")
    if device_name not in (None, "", "auto", "cuda", f"cuda:{local_rank}"):
        log.warning("--device %s ignored: distributed process %d uses cuda:%d", device_name, rank, local_rank)
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def shutdown(ctx: DistContext | None = None) -> None:
    """Leave the process group (every group), if this process created it.

    With ``ctx`` from an adopted group only resnetkit's own coordination group is destroyed.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if ctx is not None and not ctx.owns_group:
        if ctx.control is not None:
            dist.destroy_process_group(ctx.control)
        return
    dist.destroy_process_group()
