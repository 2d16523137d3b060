"""The segmentation-model contract (docs/method.md decision 1).

``model(x[B,3,H,W])`` returns logits ``[B,K,h,w]``, a dict with ``"out"`` (torchvision), an object
with a ``.logits`` tensor (Hugging Face), or a tuple/list whose first element is the logits. The SDK
always works on :func:`forward_logits`, which picks the logits out and resizes to the input size. The
classifier C is a named sub-module; F(x) is C's *input*, captured with a forward hook, so any model
with a head works without a rewrite.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from stvm_sdk.errors import ModelLoadError

log = logging.getLogger("stvm_sdk")

# Where torchvision's segmentation models keep their classifier, per family.
KNOWN_CLASSIFIERS = ("classifier", "head", "decode_head", "seg_head")


def logits_of(out: object) -> Tensor | None:
    """The logits in a model's output: the tensor itself, a ``.logits`` tensor (Hugging Face
    ``ModelOutput``, a dict subclass, so read first), ``out["out"]`` (torchvision), or the first
    element of a tuple/list; None when there is none."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, dict):
        return logits_of(out["out"]) if "out" in out else None
    if isinstance(out, (tuple, list)) and out:
        return out[0] if isinstance(out[0], Tensor) else None
    return None


def forward_logits(model: nn.Module, x: Tensor) -> Tensor:
    """Run ``model`` on normalised images ``x [B,3,H,W]`` and return logits ``[B,K,H,W]``."""
    raw = model(x)
    out = logits_of(raw)
    if out is None:
        raise ModelLoadError(f"the model must return logits [B,K,h,w]; it returned {type(raw).__name__}")
    if out.shape[-2:] != x.shape[-2:]:
        out = nnf.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


@contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """Run a probe forward pass that changes nothing: every module in eval mode (BatchNorm reads its
    running statistics and never updates them; dropout is off), no gradients; afterwards every
    module's train/eval flag is put back as it was (a model may mix them)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """Return ``model``'s sub-module at dotted ``path`` or raise a clear error."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ModelLoadError(
            f"the model has no module '{path}'; its top-level modules are {names}: "
            "name the classifier with --classifier"
        ) from None


def _out_width(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.out_features
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else None


def classifier_problem(model: nn.Module, classifier: str, num_classes: int) -> str | None:
    """Why ``classifier`` looks wrong as the head (one line), or None when it holds a conv with
    ``num_classes`` outputs (what STvM's metric network copies and re-initialises)."""
    try:
        head = model.get_submodule(classifier)
    except AttributeError:
        return f"the model has no module '{classifier}'"
    if any(isinstance(m, nn.Conv2d) and m.out_channels == num_classes for m in head.modules()):
        return None
    return (
        f"the classifier '{classifier}' holds no conv with {num_classes} outputs, so it is probably not "
        "the head: name the head with --classifier"
    )


def find_classifier(model: nn.Module, num_classes: int, probe: Tensor | None = None) -> str:
    """Find the classifier module path: a known name, else the head holding the logits layer.

    The probe runs ``model`` once in eval mode without gradients and changes nothing in it
    (:func:`probing`). The logits layer is the last conv/linear (in call order) that emits
    ``num_classes`` channels; parameter-free modules after it (upsampling, activation, identity) are
    not it. The head is that layer's parent. When no such layer emits the logits, the guess is the
    parent of the last module that does, and a warning says it is a weak one.

    Args:
        model: the segmentation model.
        num_classes: K, used to recognise the logits-producing module when probing.
        probe: a normalised input ``[1,3,H,W]`` to run when no known name exists.
    """
    names = dict(model.named_modules())
    for name in KNOWN_CLASSIFIERS:
        if name in names and name:
            return name
    if probe is None:
        raise ModelLoadError("no classifier module found: name it with --classifier (e.g. 'decode_head')")
    layers: list[str] = []  # conv/linear layers with K outputs that emitted a K-channel map
    leaves: list[str] = []  # any leaf that did
    handles = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):

            def hook(m: nn.Module, i: tuple, o: object, name: str = name) -> None:
                if not isinstance(o, Tensor) or o.dim() < 3:
                    return
                if _out_width(m) == num_classes and num_classes in (o.shape[1], o.shape[-1]):
                    layers.append(name)
                elif o.dim() == 4 and o.shape[1] == num_classes:
                    leaves.append(name)

            handles.append(mod.register_forward_hook(hook))
    try:
        with probing(model):
            forward_logits(model, probe)
    finally:
        for h in handles:
            h.remove()
    if layers:
        leaf = layers[-1]
        return leaf.rsplit(".", 1)[0] if "." in leaf else leaf
    if not leaves:
        raise ModelLoadError(
            f"no module emits {num_classes}-channel logits: name the classifier with --classifier"
        )
    leaf = leaves[-1]
    guess = leaf.rsplit(".", 1)[0] if "." in leaf else leaf
    log.warning(
        "weak guess of the classifier head: '%s' (no conv or linear layer emits the %d-channel logits; "
        "the last module that does is the parameter-free '%s'): name the head with --classifier",
        guess, num_classes, leaf,
    )  # fmt: skip
    return guess


class FeatureHook:
    """Captures the input of the classifier (F(x)) on every forward pass of a model."""

    def __init__(self, model: nn.Module, classifier: str) -> None:
        # The classifier's first positional input, as is: a tensor, or a dict of feature maps
        # (torchvision's LRASPP head takes {"low", "high"}); the metric network takes the same.
        self.features: Any = None
        module = get_submodule(model, classifier)
        self._handle = module.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple) -> None:
        self.features = inputs[0]

    def pop(self) -> Any:
        """Return the last captured features and forget them (so stale features never leak)."""
        if self.features is None:
            raise RuntimeError("no features captured: run the model first")
        f, self.features = self.features, None
        return f

    def remove(self) -> None:
        self._handle.remove()


@contextmanager
def capture_features(model: nn.Module, classifier: str) -> Iterator[FeatureHook]:
    """Context manager around :class:`FeatureHook`."""
    hook = FeatureHook(model, classifier)
    try:
        yield hook
    finally:
        hook.remove()


def check_contract(model: nn.Module, num_classes: int | None, size: tuple[int, int] = (64, 128)) -> int:
    """Run a probe forward pass (:func:`probing`: changes nothing in the model) and check the output
    holds logits ``[B,K,h,w]`` (see :func:`logits_of`); return K."""
    try:
        with probing(model):
            out = model(torch.zeros(1, 3, *size))
    except Exception as exc:  # the user's model failed on a plain image batch
        raise ModelLoadError(f"the model failed on a 1x3x{size[0]}x{size[1]} input: {exc}") from None
    logits = logits_of(out)
    if logits is None and isinstance(out, dict):
        raise ModelLoadError(
            f"the model returns a dict without 'out' or 'logits' (keys: {sorted(map(str, out))})"
        )
    if logits is None or logits.dim() != 4 or logits.shape[0] != 1:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(out).__name__
        raise ModelLoadError(f"the model must return logits [B,K,h,w]; it returned {shape}")
    k = int(logits.shape[1])
    if num_classes is not None and k != num_classes:
        raise ModelLoadError(f"the model outputs {k} classes but --num-classes is {num_classes}")
    return k


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``[B,3,H,W]`` images in [0,1] -> the model's input space ``(x - mean) / std``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
