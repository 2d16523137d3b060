"""Add your own adaptation method: one class, registered from Python, run by the SDK's own loop.

    python examples/custom_method.py [OUT_DIR]   # a short run on the synthetic benchmark (small sizes, CPU)

The method here, ``entropy_weighted``, is a mean teacher whose pixel weights are the teacher's
certainty, 1 - H(p)/log K, raised to a power: a baseline between ``mean_teacher`` (weight 1) and
``confidence_weighted`` (max-softmax). Everything else comes with registration: the CLI's config
validation, checkpoints and ``--resume``, multi-process runs, evaluation, the run folder and export.

A method is a :class:`stvm_sdk.Method` subclass. Self-training methods usually subclass
:class:`~stvm_sdk.methods.mean_teacher.MeanTeacher` and override ``weigh`` (which pseudo-labels count,
and how much) or ``mix`` (the student's input); others implement ``loss`` (see ``stvm_sdk/methods/``).
Its knobs are an ``Options`` dataclass, config section ``[methods.entropy_weighted]``: the mean
teacher's (it subclasses their dataclass) plus its own.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from stvm_sdk import AdaptConfig, adapt, register_method
from stvm_sdk.methods.mean_teacher import MeanTeacher, MeanTeacherOptions


@dataclass(frozen=True)
class EntropyOptions(MeanTeacherOptions):
    power: float = 1.0  # weight = certainty ** power


@register_method
class EntropyWeighted(MeanTeacher):
    """All pseudo-labels; each pixel weighted by the teacher's normalised certainty."""

    name = "entropy_weighted"
    summary = "mean teacher, each pixel weighted by 1 - normalised entropy"
    order = 55  # between confidence_weighted and stvm_no_mocm in tables
    Options = EntropyOptions

    def weigh(
        self,
        t_logits: Tensor,
        conf: Tensor,
        pseudo: Tensor,
        g_batch: torch.Generator,
        logs: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        logp = t_logits.log_softmax(1)
        entropy = -(logp.exp() * logp).sum(1) / math.log(self.num_classes)
        weights = (1.0 - entropy).clamp(0.0, 1.0) ** self.options.power
        return t_logits.new_zeros(()), weights, pseudo


def main(out: Path | None) -> None:
    """Adapt the synthetic benchmark's source model to its target domain with the new method
    (into ``out``, by default ``runs/entropy_weighted-<time>``)."""
    from stvm_sdk.supervised import TrainConfig
    from stvm_sdk.synthetic.cache import DomainSpec, ensure_domain, ensure_trained

    cache = Path(".stvm_cache")
    size = (64, 128)
    train = TrainConfig(iters=60, batch_size=8, crop=size)
    source = ensure_trained(DomainSpec("source", "train", 64, size), train, cache, progress=False)
    target = ensure_domain(DomainSpec("target", "train", 24, size), cache)
    cfg = AdaptConfig(method="entropy_weighted").with_overrides(
        {"methods.entropy_weighted.power": 2.0, "run.iters": 20, "data.batch_size": 4, "data.crop": size}
    )
    result = adapt(source, target, config=cfg, labels_dir=target, out_dir=out, progress=False)
    m = result.metrics
    print(f"{m['method']}: mIoU {m['miou_before']:.2f} -> {m['miou_after']:.2f} in {m['steps']} steps")
    print(f"adapted model: {result.model_path} (load it with stvm_sdk.load_model, export with `stvm export`)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
