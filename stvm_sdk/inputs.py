"""What a run reads, checked before anything is written: the source model, the method's fit to it,
the inputs' fingerprints (recorded in a run; a resume must match them), frames smaller than the crop,
a batch too large for this machine, and an out-of-memory failure named with the options to lower.

Shared by the offline run (:func:`stvm_sdk.api.adapt`) and the stream (:mod:`stvm_sdk.stream.run`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from stvm_sdk.boundary.args import (
    check_batch_memory,
    check_batch_pixels,
    check_int_arg,
    check_path,
    type_name,
)
from stvm_sdk.boundary.fields import MAX_CLASSES
from stvm_sdk.boundary.fingerprint import frames_sha256, module_sha256, sha256
from stvm_sdk.config import AdaptConfig
from stvm_sdk.data.frames import FrameFolder, image_root
from stvm_sdk.errors import (
    ArgumentTypeError,
    ConfigError,
    ModelLoadError,
    ResourceError,
    is_out_of_memory,
    out_of_memory,
)
from stvm_sdk.methods.base import Method
from stvm_sdk.methods.registry import ladder
from stvm_sdk.models.io import SegModel, load_model, wrap_module

log = logging.getLogger("stvm_sdk")
T = TypeVar("T")


def as_segmodel(
    source: nn.Module | SegModel | str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    classifier: str | None = None,
) -> SegModel:
    """Accept a path, an ``nn.Module`` or a :class:`SegModel`; always return an independent copy.

    Raises:
        ArgumentTypeError: ``source`` is none of those (a tensor, a dict, a number), or ``num_classes``
            / ``classifier`` has the wrong type; ConfigError: ``num_classes`` is out of range.
    """
    if num_classes is not None:
        check_int_arg(num_classes, "num_classes", lo=1, hi=MAX_CLASSES)
    if classifier is not None and not isinstance(classifier, str):
        raise ArgumentTypeError(f"classifier must be a module path (str), got {type_name(classifier)}")
    if not isinstance(source, (SegModel, nn.Module)):
        if not isinstance(source, (str, os.PathLike)):
            raise ArgumentTypeError(
                "source_model must be an nn.Module, a SegModel or a model file path (str or os.PathLike), "
                f"got {type_name(source)}"
            )
        source = check_path(source, "source_model")
    if isinstance(source, SegModel):
        if num_classes is not None and num_classes != source.num_classes:
            raise ModelLoadError(
                f"the model has {source.num_classes} classes but num_classes is {num_classes}"
            )
        return source.clone()
    if isinstance(source, nn.Module):
        return wrap_module(copy.deepcopy(source), num_classes=num_classes, classifier=classifier)
    return load_model(source, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier)


def check_method_fits(model: SegModel, method: type[Method]) -> None:
    """Refuse, before any frame is read, a method that cannot run on this model or would change nothing
    in it (:meth:`Method.reach`); warn when it touches little of it (e.g. adabn on a LayerNorm model)."""
    if isinstance(model.module, torch.jit.ScriptModule) and method.eager_only:
        fits = [m.name for m in ladder() if not m.eager_only]
        raise ConfigError(
            f"--method {method.name} {method.eager_only}, which a TorchScript model does not allow: pass "
            f"the model as a checkpoint dict or (with --trust-pickle) a pickled module, or use --method "
            f"{' | '.join(fits)}"
        )
    reach = method.reach(model)
    if not reach.fits:  # it would report success and change nothing (or fail mid-run)
        raise ConfigError(f"--method {method.name} cannot adapt this model: it {reach.updates}")
    if reach.weak:
        log.warning("--method %s %s: it touches little of this model", method.name, reach.updates)


def run_inputs(source_path: Path | None, source: SegModel, folder: FrameFolder) -> dict[str, Any]:
    """What the run reads, with content fingerprints (recorded in the run; a resume must match)."""
    return {"source": source_fingerprint(source_path, source), "target": folder_fingerprint(folder)}


def source_fingerprint(source_path: Path | None, source: SegModel) -> dict[str, Any]:
    """The source model's file and SHA-256, or for an in-memory model the SHA-256 of its weights."""
    if source_path is not None:
        return {"path": str(source_path), "sha256": sha256(source_path)}
    return {"path": None, "sha256": module_sha256(source.module)}


def folder_fingerprint(folder: FrameFolder) -> dict[str, Any]:
    """A frames folder: its root, file count and a SHA-256 over every file found (usable or not)."""
    paths = [f.image for f in folder.frames] + [s.path for s in folder.skipped]
    base = image_root(folder.root)
    return {"path": str(folder.root), "frames": len(paths), "sha256": frames_sha256(sorted(paths), base)}


def check_batch_fits(folder: FrameFolder, cfg: AdaptConfig) -> None:
    """Refuse, before any batch is allocated, a step whose batch (frames x the crop, the resize or the
    largest frame) is over the pixel limit or whose copies alone do not fit in this machine's memory."""
    if cfg.data.crop is not None:
        hw, what = cfg.data.crop, "--batch-size x --crop (data.batch_size x data.crop)"
    elif cfg.data.resize is not None:
        hw, what = cfg.data.resize, "--batch-size x --resize (data.batch_size x data.resize)"
    else:
        sizes = [f.size for f in folder.frames if f.size is not None]
        if not sizes:
            return
        hw = max(sizes, key=lambda s: s[0] * s[1])
        what = "--batch-size x the largest frame (set --crop or --resize to batch smaller frames)"
    check_batch_pixels(cfg.data.batch_size, hw, what)
    check_batch_memory(cfg.data.batch_size, hw, what)


def memory_knobs(cfg: AdaptConfig, *, evaluates: bool = False) -> list[str]:
    """The options that size a run's memory, with their values: what an out-of-memory line names."""

    def hw(v: tuple[int, int] | None) -> str:
        return "none" if v is None else f"{v[0]}x{v[1]}"

    knobs = [
        f"--batch-size (data.batch_size, now {cfg.data.batch_size})",
        f"--crop (data.crop, now {hw(cfg.data.crop)})",
    ]
    if cfg.data.crop is None:
        knobs.append(f"--resize (data.resize, now {hw(cfg.data.resize)})")
    if evaluates:
        knobs.append(f"run.eval_size (now {hw(cfg.run.eval_size)})")
    return knobs


def naming_memory(knobs: list[str], run: Callable[[], T]) -> T:
    """``run()``, with an allocation failure (``MemoryError``, CUDA out of memory, PyTorch's CPU
    allocator) turned into one :class:`ResourceError` line naming ``knobs``; other errors pass.

    The line is raised outside the handler, so it does not chain the failure (whose traceback holds
    the step's tensors): catching it frees the memory."""
    error: ResourceError | None = None
    try:
        return run()
    except ResourceError:
        raise
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        error = out_of_memory(exc, knobs)
    raise error


def warn_small_frames(folder: FrameFolder, cfg: AdaptConfig) -> None:
    """Say when frames are smaller than the crop: they are padded with black borders to fit it."""
    if cfg.data.crop is None:
        return
    ch, cw = cfg.data.crop
    if cfg.data.resize is not None:
        small = folder.frames if (cfg.data.resize[0] < ch or cfg.data.resize[1] < cw) else []
    else:
        small = [f for f in folder.frames if f.size is not None and (f.size[0] < ch or f.size[1] < cw)]
    if small:
        h, w = cfg.data.resize or small[0].size or (0, 0)
        log.warning(
            "%d of %d frames (e.g. %s, %dx%d) are smaller than the crop %dx%d: they are padded with black "
            "borders to fit it; pass --crop HxW (at most the frame size) to train on image content only",
            len(small), len(folder.frames), small[0].rel, h, w, ch, cw,
        )  # fmt: skip
