"""Data-parallel adaptation on ``torch.distributed``: one process per GPU (or CPU share), any machines.

A run is started by ``torchrun`` (or ``stvm adapt --nproc-per-node N``, see :mod:`stvm_sdk.launch`),
which puts RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in each process's environment;
:func:`join` reads them (backend ``nccl`` on CUDA, ``gloo`` on CPU). Without them it is a world of
one and every helper here is a no-op, so :func:`stvm_sdk.adapt` has a single code path.

What is kept identical on every process, and how:

- **Student** runs under ``DistributedDataParallel``: gradients are averaged, so parameters and
  optimiser state stay bit-identical (same start, same update).
- **Metric network + proxies** run under DDP too, and their loss is taken over the global batch
  (embeddings and pseudo-labels gathered; pixel sampling drawn from a generator every process
  shares), so they train as in one process with batch N*B.
- **BatchNorm.** DDP would broadcast rank 0's buffers at each forward (``broadcast_buffers``), after
  which each process updates them with its own batch: the student's running statistics would
  differ between processes right when the teacher's EMA reads them. We turn that off and instead
  average the student's floating buffers over processes after every optimiser step (the global
  batch's statistics, up to the between-process spread of the per-process means). With
  ``run.sync_bn`` the student normalises with global-batch statistics (SyncBatchNorm), its
  running statistics are already equal everywhere, and N processes of batch B compute what one
  process of batch N*B does.
- **Teacher** = EMA of that synchronised student on every process: identical without any message.

Every process checks that this holds (a digest of each tensor, compared at every checkpoint and at
the end). Only rank 0 touches the run directory: it writes config, logs, checkpoints and models;
other processes receive what they need (the run path, a checkpoint to resume) by broadcast, so
several machines need no shared file system for outputs (the frames and the source model must be
readable on every machine). Decision 0's BN pass runs on every process with the global batch.

Where N processes of batch B still differ from one process of batch N*B, by design: per-sample
draws (MOCM choices, augmentation) come from a stream per process (so processes do not repeat each
other's draws); MOCM pairs samples within a process's batch; ``threshold_st`` keeps the top-p% of
each process's batch, and ``reliability.normalize="weights"`` divides by each process's weight sum.
Without ``run.sync_bn`` the student's BN normalises by per-process batches (as in plain DDP).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from stvm_sdk.data.batches import step_generator
from stvm_sdk.dist_ops import all_gather_cat, convert_sync_batchnorm, revert_sync_batchnorm
from stvm_sdk.errors import BackendUnavailableError, DataError, StvmError
from stvm_sdk.methods.parts.collective import Collective

if TYPE_CHECKING:
    from stvm_sdk.config import AdaptConfig
    from stvm_sdk.methods.base import Method
    from stvm_sdk.rundir import RunDir

log = logging.getLogger("stvm_sdk")
T = TypeVar("T")
BATCH_STREAM = 3  # step_generator stream of the step's draws (api.py's single-process stream)
RANK_STREAM = 1000  # + rank: each process's per-sample draws in a multi-process run
LAUNCHED_ENV = "STVM_LAUNCHER"  # set by stvm_sdk.launch for its workers: it reports failures itself


class PeerLostError(StvmError):
    """A collective failed: another process of the run stopped (its own message says why)."""


class RankZeroError(StvmError):
    """Rank 0 hit a user error (e.g. a bad --out); it printed the message, the others only stop."""


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


class _ProcessGroupOps(Collective):
    """:class:`Collective` over the default process group."""

    def __init__(self, rank: int, world: int, sync_bn: bool) -> None:
        self.rank, self.world, self.sync_bn = rank, world, sync_bn

    def gather(self, x: Tensor) -> Tensor:
        shapes = [torch.zeros(x.dim(), dtype=torch.long, device=x.device) for _ in range(self.world)]
        dist.all_gather(shapes, torch.tensor(x.shape, device=x.device))
        if any(not torch.equal(s, shapes[0]) for s in shapes):  # same answer on every process
            raise DataError("the processes' batches differ in size: set a crop (--crop HxW) or --resize")
        return all_gather_cat(x)

    def sync_buffers(self, module: nn.Module) -> None:
        if self.sync_bn:  # SyncBatchNorm already updated them with the same global statistics
            return
        bufs = [b for b in module.buffers() if b.is_floating_point()]
        if bufs:
            flat = torch.cat([b.reshape(-1) for b in bufs])  # one message, not one per layer
            dist.all_reduce(flat)
            flat /= self.world
            for b, v in zip(bufs, flat.split([b.numel() for b in bufs]), strict=True):
                b.copy_(v.view_as(b))


@dataclass
class DistContext:
    """This process's place in the run; ``world == 1`` (the default) is a single-process run."""

    device: torch.device
    rank: int = 0
    world: int = 1
    opened: list[RunDir] = field(default_factory=list)  # run folders this process locked (rank 0)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and return its result everywhere; its user error stops all ranks."""
        if self.world == 1:
            return fn()
        result: Any = None
        error: StvmError | None = None
        if self.is_main:
            try:
                result = fn()
            except StvmError as exc:
                error = exc
        box = [(result, None if error is None else str(error))]
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0][1] is not None:
            raise RankZeroError(box[0][1])
        return box[0][0]

    def open_run(
        self, out_dir: Any, cfg: AdaptConfig, resume: bool, inputs: dict[str, Any], input_paths: Any = ()
    ) -> RunDir:
        """Rank 0 creates (or reopens) the run directory; the others only learn its path."""
        from stvm_sdk.rundir import RunDir

        def open_() -> str:
            run = RunDir.open(out_dir, cfg, resume, inputs=inputs, input_paths=input_paths)
            self.opened.append(run)  # unlocked when the run's `join` block ends, however it ends
            return str(run.path)

        path = self.on_main(open_)
        return RunDir(Path(path))

    def step_generators(self, seed: int, step: int) -> tuple[torch.Generator, torch.Generator]:
        """``(per-sample generator of this process, generator shared by all processes)`` for ``step``."""
        shared = step_generator(seed, step, stream=BATCH_STREAM)
        if self.world == 1:
            return shared, shared  # one stream, exactly as a single-process run always drew
        return step_generator(seed, step, stream=RANK_STREAM + self.rank), shared

    def prepare(self, adapter: Method, cfg: AdaptConfig) -> None:
        """Make ``adapter`` data-parallel: rank 0's state everywhere, DDP wrappers, cross-process ops."""
        if self.world == 1 or adapter.optimizer is None:
            return
        if cfg.run.sync_bn and not adapter.batch_statistics:
            log.warning("run.sync_bn has no effect: the student's BatchNorm keeps fixed statistics")
        elif cfg.run.sync_bn:
            n = convert_sync_batchnorm(adapter.student, cuda=self.device.type == "cuda")
            log.info("sync_bn: %d BatchNorm layers normalise over the global batch", n)
        for t in adapter.state_dict().values():  # decision-0 statistics, a restored checkpoint, ...
            dist.broadcast(t, src=0)
        adapter.wrappers["student"] = self._ddp(adapter.student)
        if adapter.metric is not None:
            adapter.wrappers["metric"] = self._ddp(adapter.metric)
        adapter.comm = _ProcessGroupOps(self.rank, self.world, cfg.run.sync_bn)

    def _ddp(self, module: nn.Module) -> nn.Module:
        """``module`` under DDP, without DDP's per-forward broadcast of rank 0's buffers (the BN
        statistics are averaged after each step instead: module docstring)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:  # torch >= 2.14
            return DDP(module, device_ids=ids, forward_sync_buffers=False)
        return DDP(module, device_ids=ids, broadcast_buffers=False)

    def release(self, adapter: Method) -> None:
        """Undo :meth:`prepare` after checking the processes agree: plain networks, plain BatchNorm."""
        if not adapter.wrappers:
            return
        self.check_replicas(adapter)
        adapter.wrappers.clear()
        adapter.comm = Collective()
        revert_sync_batchnorm(adapter.student)

    def check_replicas(self, module: nn.Module) -> None:
        """Raise if any parameter or buffer differs between processes (bit for bit)."""
        if self.world == 1:
            return
        mine = {k: _digest(v) for k, v in module.state_dict().items()}
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, mine)
        bad = sorted({k for other in every for k in mine if other.get(k) != mine[k]})
        if bad:  # a bug, not a user error: keep the traceback
            raise RuntimeError(f"processes diverged on {len(bad)} tensors (e.g. {bad[:3]}); please report")

    def average_logs(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """Log values over processes: counts (integer tensors) summed, everything else averaged."""
        if self.world == 1:
            return sums
        out = {}
        for key in sorted(sums):  # the same order on every process
            t = sums[key].detach().to(self.device, copy=True)
            dist.all_reduce(t)
            out[key] = t if not t.is_floating_point() else t / self.world
        return out


def _digest(t: Tensor) -> str:
    return hashlib.sha256(
        t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    ).hexdigest()


@contextmanager
def join(device: torch.device) -> Iterator[DistContext]:
    """Join the process group torchrun describes (a world of one without it) for a ``with`` block.

    Initialises the default group unless the caller already did, places this process on GPU
    ``LOCAL_RANK``, and turns a failed collective (another process died) into :class:`PeerLostError`.
    """
    rank, world, local_rank = env_world()
    if world == 1:
        single = DistContext(device)
        try:
            yield single
        finally:
            _release(single)
        return
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise BackendUnavailableError(
                f"process {local_rank} needs GPU {local_rank} but this machine has "
                f"{torch.cuda.device_count()}: start at most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ctx = DistContext(device, dist.get_rank(), dist.get_world_size())
    try:
        yield ctx
    except (dist.DistError, RuntimeError) as exc:
        # gloo reports a dead peer as a plain RuntimeError from its transport layer.
        if not (isinstance(exc, dist.DistError) or "gloo/transport" in str(exc)):
            raise
        first = str(exc).strip().splitlines()[0][:160]
        raise PeerLostError(
            f"process {ctx.rank} of {ctx.world}: a collective failed ({first}); another process stopped "
            "(see its message): the run stops, its last checkpoint is kept for --resume"
        ) from None
    finally:
        _release(ctx)
        if owns:
            dist.destroy_process_group()


def _release(ctx: DistContext) -> None:
    """Unlock the run folders ``ctx`` opened."""
    while ctx.opened:
        ctx.opened.pop().release()
