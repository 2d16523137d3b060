"""The contract every adaptation method meets: what it trains, one step, which network it delivers.

The loop (:mod:`stvm_sdk.loop`) never asks which method runs. It re-estimates BatchNorm statistics on
the target (decision 0) when :attr:`Method.reestimate_bn`, builds the method with :meth:`Method.build`,
calls :meth:`Method.step` ``run.iters`` times when the method trains, checkpoints ``state_dict()`` and
the optimiser, and saves the network :attr:`Method.deliverable_role` names. Multi-process runs,
resume, evaluation and export come with it. A method is pure torch: no files, no printing, no host
syncs in the step.

To write one: subclass :class:`Method`, implement :meth:`Method.loss` (a method without it trains
nothing), optionally override :meth:`Method.param_groups` or :meth:`Method.after_step`, declare its
own knobs as an ``Options`` dataclass (config section ``[methods.<name>]``), and register it with
:func:`stvm_sdk.methods.register_method`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from stvm_sdk.methods.parts.collective import Collective
from stvm_sdk.methods.parts.norm import batchnorms, fixed_batchnorms
from stvm_sdk.methods.parts.options import options_of

if TYPE_CHECKING:
    from stvm_sdk.config import AdaptConfig
    from stvm_sdk.models.segmodel import SegModel

Logs = dict[str, Tensor]
PHASE_PREFIX = "step."  # names of a step's phases in torch.profiler traces (benchmarks/step_time.py)


@dataclass(frozen=True)
class Online:
    """What a method needs and does on a stream of frames (:mod:`stvm_sdk.stream` reads only this).

    The stream predicts every frame with the method's deliverable, then adapts on it: BatchNorm
    running statistics follow the stream when ``follow_bn``, and a training step runs when the method
    trains (:meth:`Method.trains`) and the buffer holds a batch of at least ``min_batch`` frames.
    """

    adapts: bool = True  # False: the method only predicts on a stream (nothing about it changes)
    # How BatchNorm normalises a predicted frame: "stream" (as the stream's settings say), "frame"
    # (always by the frame's own statistics: the method's test-time rule), "running" (always by the
    # running statistics) or "mix" (Method.source_share x the running statistics + the rest x the
    # frame's own).
    bn_predict: str = "stream"
    follow_bn: bool = True  # BatchNorm running statistics follow the stream's frames
    min_batch: int = 1  # frames a training step needs
    min_batch_why: str = ""  # why, for the refusal line
    # The method's own options on a stream, over its offline defaults (keys inside its section).
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bn_predict not in ("stream", "frame", "running", "mix"):
            raise ValueError(f"Online.bn_predict must be stream|frame|running|mix, got {self.bn_predict!r}")


@dataclass
class Reach:
    """What a method will update on one model, said before it runs (`stvm info`, `stvm adapt`)."""

    updates: str  # one line: what it changes on this model
    fits: bool = True  # False: it cannot run on this model or would change nothing (adapt refuses it)
    weak: bool = False  # it touches little of the model's normalisation (adapt warns)
    counts: dict[str, Any] = field(default_factory=dict)  # the numbers behind the line

    def to_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "fits": self.fits, "weak": self.weak, **self.counts}


def phase(name: str) -> torch.profiler.record_function:
    """A named phase of a training step, visible in profiler traces (free when no profiler runs)."""
    return torch.profiler.record_function(PHASE_PREFIX + name)


class Method(nn.Module):
    """An adaptation method: a student (and whatever else it trains) built from the source network.

    Attributes set for every method: ``student`` (a trainable copy of the source network), ``teacher``
    and ``metric`` (None unless the method has them), ``optimizer`` (None for methods that do not
    train), ``cfg``, ``num_classes``, ``classifier`` (module path of the head), ``mean``/``std``.
    """

    name: ClassVar[str] = ""  # set by register_method
    summary: ClassVar[str] = ""  # one line: what the method does (CLI, README, tables)
    updates: ClassVar[str] = ""  # what it changes in the network, for `stvm methods`
    order: ClassVar[int] = 100  # position in tables: baselines first, the ablation ladder, STvM last
    reestimate_bn: ClassVar[bool] = True  # start from target BatchNorm statistics (decision 0)
    eager_only: ClassVar[str | None] = None  # why a TorchScript model cannot be adapted with it
    Options: ClassVar[type | None] = None  # a dataclass of the method's own knobs, or None
    online: ClassVar[Online] = Online()  # what it needs and does on a stream
    # The field of ``Options`` holding the learning rate of a method that runs its own optimiser and
    # reads no ``optim.*`` key (tent: "lr"); None: it trains with the shared ``optim.*`` optimiser.
    own_lr: ClassVar[str | None] = None

    def __init__(self, source: SegModel, cfg: AdaptConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.cfg, self.num_classes, self.classifier = cfg, source.num_classes, source.classifier
        self.options: Any = options_of(type(self), cfg.methods.get(self.name))  # ``Options`` or None
        self.mean, self.std = source.mean, source.std
        self.student = copy.deepcopy(source.module).train()
        for p in self.student.parameters():
            p.requires_grad_(True)
        self.teacher: nn.Module | None = None
        self.metric: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        # Set by stvm_sdk.distributed for multi-process runs: the DistributedDataParallel wrappers the
        # step runs forward through, and the cross-process operations. A plain dict (not a module
        # attribute) keeps the wrappers out of state_dict, so checkpoint keys never change.
        self.wrappers: dict[str, nn.Module] = {}
        self.comm = Collective()

    @classmethod
    def build(cls, source: SegModel, cfg: AdaptConfig, generator: torch.Generator) -> Method:
        """The method with its networks made from ``source`` (not mutated) and its optimiser."""
        method = cls(source, cfg, generator)
        method.optimizer = method.make_optimizer() if cls.trains() else None
        return method

    @classmethod
    def trains(cls) -> bool:
        """Whether the method takes training steps (it implements :meth:`loss`)."""
        return cls.loss is not Method.loss

    @classmethod
    def source_share(cls, cfg: AdaptConfig) -> float:
        """The share of the source model's BatchNorm statistics kept beside the target's: after decision
        0 offline, and per predicted frame on a stream (``Online.bn_predict = "mix"``); 0 by default."""
        return 0.0

    @classmethod
    def lr_key(cls) -> str | None:
        """The config key of the learning rate this method reads (None: it does not train)."""
        if not cls.trains():
            return None
        return f"methods.{cls.name}.{cls.own_lr}" if cls.own_lr else "optim.lr"

    @classmethod
    def reach(cls, model: SegModel) -> Reach:
        """What this method will update on ``model`` (not mutated), before anything runs."""
        if isinstance(model.module, torch.jit.ScriptModule) and cls.eager_only:
            return Reach(f"cannot run on a TorchScript model ({cls.eager_only})", fits=False)
        return cls._reach(model)

    @classmethod
    def _reach(cls, model: SegModel) -> Reach:
        """:meth:`reach` for a model it can run on; the default: every student weight trains."""
        total = sum(p.numel() for p in model.module.parameters())
        head = f" (the head '{model.classifier}' at head_lr_mult x lr)" if model.classifier else ""
        line = f"trains all {total:,} parameters{head}"
        fixed = 0
        if cls.reestimate_bn:
            n, fixed = len(batchnorms(model.module)), fixed_batchnorms(model.module)
            line += f", from target statistics in {n} BatchNorm layer{'s' * (n != 1)}"
            if fixed:  # a traced model: its BatchNorm layers ignore train mode
                line += f" ({fixed} traced BatchNorm layers keep the source statistics)"
        counts = {"parameters": total, "parameters_total": total}
        return Reach(line, fits=total > 0, weak=fixed > 0, counts=counts)

    # --- what it trains ---------------------------------------------------------------------------

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: the student's body, and its classifier at ``optim.head_lr_mult`` x lr."""
        head = f"{self.classifier}." if self.classifier else "\0"
        named = list(self.student.named_parameters())
        return [
            {"params": [p for n, p in named if not n.startswith(head)], "lr_mult": 1.0},
            {"params": [p for n, p in named if n.startswith(head)], "lr_mult": self.cfg.optim.head_lr_mult},
        ]

    def make_optimizer(self) -> torch.optim.Optimizer:
        """SGD (decision 9) or AdamW over :meth:`param_groups` (empty groups dropped)."""
        o = self.cfg.optim
        groups = [g for g in self.param_groups() if g["params"]]
        if o.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)

    def lr_at(self, step: int) -> float:
        """Poly decay (decision 9): lr * (1 - t/T)^power; each group scales it by its ``lr_mult``."""
        total = max(self.cfg.run.iters, 1)
        return self.cfg.optim.lr * (1.0 - min(step, total - 1) / total) ** self.cfg.optim.poly_power

    # --- one step -----------------------------------------------------------------------------------

    def loss(
        self, images: Tensor, step: int, g: torch.Generator, g_batch: torch.Generator
    ) -> tuple[Tensor, Logs]:
        """The step's loss on target images ``[B,3,H,W]`` in [0,1], and detached tensors to log.

        ``g`` draws this process's per-sample randomness; ``g_batch`` draws over the global batch
        and is the same on every process (they are one generator in a single-process run).
        """
        raise TypeError(f"method {self.name!r} takes no training steps (it implements no loss)")

    def after_step(self, step: int) -> None:
        """Called after each optimiser step (the teacher's EMA update, for teacher methods)."""

    def step(
        self, images: Tensor, step: int, g: torch.Generator, g_batch: torch.Generator | None = None
    ) -> Logs:
        """One optimisation step on target images ``[B,3,H,W]`` in [0,1]; returns detached log tensors."""
        if self.optimizer is None:
            return {}
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        amp = self.cfg.run.amp and images.is_cuda
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            loss, logs = self.loss(images, step, g, g if g_batch is None else g_batch)
        self.optimizer.zero_grad(set_to_none=True)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            self.optimizer.step()
        # BN running statistics are not gradients, so DDP leaves them per-process: average them so
        # that whatever reads the student next (the teacher's EMA) sees the same network everywhere.
        self.comm.sync_buffers(self.student)
        with phase("after_step"):
            self.after_step(step)
        logs["loss"] = loss.detach()
        logs["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"])
        return logs

    def reset(self, state: dict[str, Tensor]) -> None:
        """Put back ``state`` (this method's ``state_dict``: every network it trains) and start the
        optimiser afresh, so momentum gathered before a restore does not carry on after it."""
        self.load_state_dict(state)
        if self.optimizer is not None:
            self.optimizer = self.make_optimizer()

    def net(self, name: str) -> nn.Module:
        """The network to run forward: its DDP wrapper when there is one, else the network itself."""
        wrapper = self.wrappers.get(name)  # not `or`: an empty nn.Sequential is falsy
        return wrapper if wrapper is not None else getattr(self, name)

    def extras(self) -> dict[str, nn.Module]:
        """Networks the method trains beside the student and teacher, by name (a run's
        :attr:`~stvm_sdk.result.AdaptResult.extras`); none by default."""
        return {}

    @classmethod
    def load_extras(cls, model: SegModel, cfg: AdaptConfig, state: dict[str, Tensor]) -> dict[str, nn.Module]:
        """:meth:`extras` rebuilt for ``model`` (the run's teacher) from the method's checkpointed
        ``state_dict`` (a finished run read back); none by default."""
        return {}

    @classmethod
    def has_pixel_weights(cls, extras: dict[str, nn.Module]) -> bool:
        """Whether :meth:`pixel_weights` can answer with these extras."""
        return False

    @classmethod
    def pixel_weights(
        cls, teacher: SegModel | None, extras: dict[str, nn.Module], cfg: AdaptConfig, images: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The teacher's pseudo-labels ``[B,H,W]`` and the weight ``[B,H,W]`` in [0,1] the method gives
        each, for images ``[B,3,H,W]`` in [0,1] (figures, benchmarks); a method without weights to show
        raises ``ValueError``."""
        raise ValueError(f"method {cls.name} has no per-pixel reliability to show (a metric network has)")

    @property
    def batch_statistics(self) -> bool:
        """Whether the student's BatchNorm normalises by batch statistics when it trains."""
        return True

    # --- what it delivers ---------------------------------------------------------------------------

    @property
    def deliverable_role(self) -> str:
        """``"teacher"`` or ``"student"``: the network saved as the run's model (decision 10)."""
        return "student"
