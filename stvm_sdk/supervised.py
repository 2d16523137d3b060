"""Supervised training of a source model on a labelled folder (`stvm train-source`).

Used to make the benchmark's source models and useful for users who have labelled source data:
it writes the checkpoint format `stvm adapt` reads. Settings and arguments are checked first (types,
finite numbers, sizes a step can allocate); running out of memory is one line naming the options to
lower.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as nnf

from stvm_sdk.boundary.args import (
    check_batch_memory,
    check_batch_pixels,
    check_device,
    check_flag,
    check_path,
)
from stvm_sdk.boundary.fields import MAX_CLASSES
from stvm_sdk.boundary.labels import check_label_ids
from stvm_sdk.boundary.outputs import claim_file
from stvm_sdk.config import check_fields
from stvm_sdk.data.batches import BatchLoader, step_generator
from stvm_sdk.data.frames import FrameFolder, scan_frames
from stvm_sdk.errors import ArgumentTypeError, ConfigError
from stvm_sdk.inputs import naming_memory
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.models.io import (
    CITYSCAPES_CLASSES,
    SegModel,
    build_torchvision,
    from_module,
    is_sdk_checkpoint,
    load_model,
    save_model,
)

log = logging.getLogger("stvm_sdk")


@dataclass(frozen=True)
class TrainConfig:
    """Supervised-training settings (AdamW + poly decay; small models train from scratch)."""

    arch: str = "lraspp_mobilenet_v3_large"
    num_classes: int = 19
    iters: int = 1000
    batch_size: int = 8
    crop: tuple[int, int] | None = (128, 256)
    resize: tuple[int, int] | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    # torchvision's MobileNet BNs use momentum 0.01: after a short training their running statistics
    # still remember the initialisation. Re-estimate them on this many training frames at the end.
    precise_bn_frames: int = 200
    # Start from this checkpoint's weights instead of random ones (fine-tuning; its arch and class
    # count must match). The benchmark's oracles are the source model fine-tuned on target labels.
    init: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.init, os.PathLike):
            object.__setattr__(self, "init", os.fspath(self.init))
        labels = {
            f.name: f"--{f.name.replace('_', '-')} (TrainConfig.{f.name})" for f in dataclasses.fields(self)
        }
        check_fields(self, "", labels)
        if self.iters < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("train-source: iters >= 1, batch size >= 1 and lr > 0 are required")
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise ConfigError(
                f"train-source: --num-classes must be in [1, {MAX_CLASSES}], got {self.num_classes}"
            )
        if self.weight_decay < 0 or self.precise_bn_frames < 0:
            raise ConfigError("train-source: weight decay >= 0 and precise_bn_frames >= 0 are required")
        for name in ("crop", "resize"):
            v = getattr(self, name)
            if v is not None and min(v) < 8:
                raise ConfigError(f"train-source: --{name} must be (H, W) >= 8, got {v[0]}x{v[1]}")
        check_device(self.device)
        hw = self.crop or self.resize
        if hw is not None:
            check_batch_pixels(self.batch_size, hw, "--batch-size x --" + ("crop" if self.crop else "resize"))


def train_source(
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str] | None,
    out_path: str | Path,
    cfg: TrainConfig = TrainConfig(),
    *,
    progress: bool = True,
) -> SegModel:
    """Train ``cfg.arch`` with cross-entropy on labelled frames and save it to ``out_path``.

    Raises:
        StvmError: a one-line problem the caller can fix; ArgumentTypeError (a ``TypeError``) for an
            argument of the wrong type, ResourceError (a ``MemoryError``) when the batch does not fit.
    """
    images_dir = check_path(images_dir, "images_dir")
    labels_dir = images_dir if labels_dir is None else check_path(labels_dir, "labels_dir")
    out_path = check_path(out_path, "out_path")
    if not isinstance(cfg, TrainConfig):
        raise ArgumentTypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    check_flag(progress, "progress")
    folder = scan_frames(images_dir, labels_dir, require_labels=True)
    hw = cfg.crop or cfg.resize
    if hw is not None:
        check_batch_memory(cfg.batch_size, hw, "--batch-size x --" + ("crop" if cfg.crop else "resize"))
    out = claim_file(out_path, ours=is_sdk_checkpoint, inputs=(images_dir, labels_dir, cfg.init))
    size = "none" if hw is None else f"{hw[0]}x{hw[1]}"
    knobs = [
        f"--batch-size (now {cfg.batch_size})",
        f"--{'resize' if cfg.crop is None else 'crop'} (now {size})",
    ]
    return naming_memory(knobs, lambda: _train(folder, out, cfg, progress))


def _train(folder: FrameFolder, out: Path, cfg: TrainConfig, progress: bool) -> SegModel:
    from stvm_sdk.device import resolve_device
    from stvm_sdk.progress import progress_bar

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # torchvision draws initial weights from the global generator
    model = _initial_model(cfg)
    net = model.module.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = BatchLoader(
        folder.labelled,
        batch_size=cfg.batch_size,
        crop=cfg.crop,
        resize=cfg.resize,
        seed=cfg.seed,
        with_labels=True,
        on_reject=folder.reject,
        label_check=lambda label, frame: check_label_ids(label, cfg.num_classes, frame.label),
    )
    try:
        with progress_bar(cfg.iters, enabled=progress, description="train-source") as bar:
            for step in range(cfg.iters):
                images, labels = loader.labelled_batch(step)
                assert labels is not None
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * (1 - step / cfg.iters) ** 0.9
                images = _jitter(images, step_generator(cfg.seed, step, stream=4))
                logits = forward_logits(net, normalize(images.to(device), model.mean, model.std))
                loss = nnf.cross_entropy(logits, labels.to(device), ignore_index=255)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(step + 1, {"loss_st": float(loss.detach())} if (step + 1) % 10 == 0 else None)
    finally:
        loader.close()
    if cfg.precise_bn_frames:
        from stvm_sdk.methods.parts.norm import reestimate_bn

        frames = folder.labelled[: cfg.precise_bn_frames]
        loaded = ([x[0] for f in frames[i : i + 8] if (x := folder.load(f, cfg.resize)) is not None]
                  for i in range(0, len(frames), 8))  # fmt: skip
        chunks = (torch.stack(imgs) for imgs in loaded if imgs)
        reestimate_bn(net, (normalize(x.to(device), model.mean, model.std) for x in chunks))
    net.cpu().eval()
    save_model(model, out)
    log.info("saved %s", out)
    return model


def _initial_model(cfg: TrainConfig) -> SegModel:
    """Random weights of ``cfg.arch``, or the weights of ``cfg.init`` (checked against ``cfg``)."""
    if cfg.init is None:
        names = list(CITYSCAPES_CLASSES) if cfg.num_classes == 19 else None
        return from_module(build_torchvision(cfg.arch, cfg.num_classes), arch=cfg.arch, class_names=names)
    model = load_model(cfg.init, num_classes=cfg.num_classes)
    if model.arch != cfg.arch:
        raise ConfigError(
            f"--init {cfg.init} is a {model.arch} model but --arch is {cfg.arch}: pass the same arch"
        )
    return model


def _jitter(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild brightness/contrast jitter so the source model does not overfit exact colours."""
    b = images.shape[0]
    gain = 1 + 0.2 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    bias = 0.05 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    return (images * gain + bias).clamp(0, 1)
