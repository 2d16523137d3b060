"""The segmentation-model contract (docs/method.md decision 1).

``model(x[B,3,H,W])`` returns logits ``[B,K,h,w]`` or a dict with ``"out"`` (torchvision). The SDK
always works on :func:`forward_logits`, which picks ``"out"`` and resizes to the input size. The
classifier C is a named sub-module; F(x) is C's *input*, captured with a forward hook, so any model
with a head works without a rewrite.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from stvm_sdk.errors import ModelLoadError

# Where torchvision's segmentation models keep their classifier, per family.
KNOWN_CLASSIFIERS = ("classifier", "head", "decode_head", "seg_head")


def forward_logits(model: nn.Module, x: Tensor) -> Tensor:
    """Run ``model`` on normalised images ``x [B,3,H,W]`` and return logits ``[B,K,H,W]``."""
    out = model(x)
    if isinstance(out, dict):
        out = out["out"]
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if out.shape[-2:] != x.shape[-2:]:
        out = nnf.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


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


def find_classifier(model: nn.Module, num_classes: int, probe: Tensor | None = None) -> str:
    """Find the classifier module path: a known name, else the module whose output is the logits.

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
    # Probe: the last leaf module (in call order) that emits a K-channel 4-D map produces the logits;
    # its parent is the classifier head whose input is F(x).
    hits: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):

            def hook(m: nn.Module, i: tuple, o: object, name: str = name) -> None:
                if isinstance(o, Tensor) and o.dim() == 4 and o.shape[1] == num_classes:
                    hits.append(name)

            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            forward_logits(model, probe)
    finally:
        for h in handles:
            h.remove()
    if not hits:
        raise ModelLoadError(
            f"no module emits {num_classes}-channel logits: name the classifier with --classifier"
        )
    leaf = hits[-1]
    return leaf.rsplit(".", 1)[0] if "." in leaf else leaf


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
    """Run a probe forward pass and check the output is ``[B,K,h,w]``; return K."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, *size)
            out = model(x)
    except Exception as exc:  # the user's model failed on a plain image batch
        raise ModelLoadError(f"the model failed on a 1x3x{size[0]}x{size[1]} input: {exc}") from None
    finally:
        model.train(was_training)
    if isinstance(out, dict):
        if "out" not in out:
            raise ModelLoadError(f"the model returns a dict without 'out' (keys: {sorted(out)})")
        out = out["out"]
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelLoadError(f"the model must return logits [B,K,h,w]; it returned {shape}")
    k = int(out.shape[1])
    if num_classes is not None and k != num_classes:
        raise ModelLoadError(f"the model outputs {k} classes but --num-classes is {num_classes}")
    return k


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``[B,3,H,W]`` images in [0,1] -> the model's input space ``(x - mean) / std``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
