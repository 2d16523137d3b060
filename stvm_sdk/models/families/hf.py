"""Hugging Face transformers semantic-segmentation models whose output is per-pixel logits.

Read from a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``) with
``local_files_only=True``, ``use_safetensors=True`` and no remote code, for the classes in
:data:`ARCHS` only (chosen from ``config.architectures``). The HF model is wrapped in
:class:`HFLogits`, a thin module returning the ``.logits`` tensor, so the SDK's contract
(``[B,K,h,w]``; SegFormer and BEiT give 1/4 resolution, the SDK upsamples) and tracing hold.
Normalisation comes from ``preprocessor_config.json`` when the folder has one (else ImageNet), class
names from ``config.id2label``. Written back with ``save_pretrained`` (``hf/``), loadable with
``XxxForSemanticSegmentation.from_pretrained(folder)``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.families import register_family
from stvm_sdk.models.families.base import Built, ExportNeeds, Family, read_json

# Each supported class and its classifier head inside it (read from transformers' modeling code):
# the head's input is F(x), and it holds the K-output conv the metric network swaps.
ARCHS = {
    "SegformerForSemanticSegmentation": "decode_head.classifier",  # a bare 1x1 Conv2d
    "UperNetForSemanticSegmentation": "decode_head.classifier",  # auxiliary_head is left out
    "DPTForSemanticSegmentation": "head.head",  # Sequential(conv, bn, relu, dropout, conv K, upsample)
    "BeitForSemanticSegmentation": "decode_head.classifier",
    "MobileViTV2ForSemanticSegmentation": "segmentation_head.classifier",  # ConvLayer around a conv
}
# What the ONNX export of each class needs (checked with torch 2.14, transformers 5.24): pyramid pooling
# (UperNet, BEiT: adaptive_avg_pool2d to fixed bins) cannot be exported on symbolic sizes, and the legacy
# exporter refuses it even at a fixed size unless every bin count divides the feature map (UperNet's
# default scales 1, 2, 3, 6 do not divide 512x1024 / 32); BEiT's size-dependent position bias and
# MobileViTV2's unfold/fold (Col2Im, opset 18) defeat the legacy exporter outright. The dynamo exporter
# at opset 18 traces all three at a fixed size (TensorRT >= 10 parses opset 18; Col2Im not at all).
EXPORT_NEEDS = {
    "UperNetForSemanticSegmentation": ExportNeeds(
        "its pyramid pooling needs fixed sizes", static=True, exporter="dynamo", opset=18
    ),
    "BeitForSemanticSegmentation": ExportNeeds(
        "its pyramid pooling and position bias need fixed sizes", static=True, exporter="dynamo", opset=18
    ),
    "MobileViTV2ForSemanticSegmentation": ExportNeeds(
        "its unfold/fold attention needs fixed sizes and opset 18", static=True, exporter="dynamo", opset=18
    ),
}
_DEFAULT_LABEL = re.compile(r"LABEL_\d+")


class HFLogits(nn.Module):
    """An HF ``...ForSemanticSegmentation`` model as ``x [B,3,H,W] -> logits [B,K,h,w]``."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        super().__init__()
        self.model = model
        self.arch = arch

    def forward(self, x: Tensor) -> Tensor:
        m: Any = self.model
        if self.arch == "DPTForSemanticSegmentation":
            return _dpt_logits(m, x)
        if self.arch == "BeitForSemanticSegmentation":  # position bias for any input size
            return m(pixel_values=x, interpolate_pos_encoding=True).logits  # type: ignore[no-any-return]
        return m(pixel_values=x).logits  # type: ignore[no-any-return]


def _dpt_logits(m: Any, x: Tensor) -> Tensor:
    """DPT's semantic forward with the patch grid passed on: transformers' own forward assumes a square
    input (its neck reshapes tokens to sqrt(n) x sqrt(n)); same modules, same math otherwise."""
    out = m.dpt(x, output_hidden_states=True)
    if m.config.is_hybrid:
        hidden = list(out.intermediate_activations)
        hidden += [h for i, h in enumerate(out.hidden_states[1:]) if i in m.config.backbone_out_indices[2:]]
    else:
        hidden = [h for i, h in enumerate(out.hidden_states[1:]) if i in m.config.backbone_out_indices]
    patch = m.config.patch_size
    hidden = m.neck(hidden, x.shape[-2] // patch, x.shape[-1] // patch)
    return m.head(hidden)  # type: ignore[no-any-return]


@register_family
class HuggingFace(Family):
    name = "hf"
    library = "transformers"
    extra = "hf"
    title = "a Hugging Face model"

    @classmethod
    def reads_folder(cls, path: Path) -> bool:
        config = read_json(path / "config.json")
        return config is not None and "model_type" in config and "_model_class" not in config

    @classmethod
    def load_folder(cls, path: Path) -> Built:
        config = read_json(path / "config.json") or {}
        arch = cls._arch(config.get("architectures") or [], path)
        if not any((path / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
            raise ModelLoadError(
                f"{path} has no model.safetensors (a pytorch_model.bin is a pickle, not read): "
                "re-save it with save_pretrained(folder) (safetensors is its default)"
            )
        tf = cls.require()
        try:
            model = getattr(tf, arch).from_pretrained(
                str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
        except Exception as exc:
            raise ModelLoadError(
                f"transformers cannot load {path}: {str(exc).splitlines()[0][:200]}"
            ) from None
        pre = read_json(path / "preprocessor_config.json")
        return cls._built(model.eval(), arch, pre)

    @classmethod
    def recognise(cls, module: nn.Module) -> Built | None:
        if isinstance(module, HFLogits):
            return cls._built(module.model, module.arch, None)
        tf = sys.modules.get(cls.library)
        if tf is None or not isinstance(module, tf.PreTrainedModel) or type(module).__name__ not in ARCHS:
            return None
        return cls._built(module, type(module).__name__, None)

    @classmethod
    def _arch(cls, archs: list[str], where: Path | str) -> str:
        arch = next((a for a in archs if a in ARCHS), None)
        if arch is None:
            raise ModelLoadError(
                f"{where} is a Hugging Face {'/'.join(archs) or 'model without architectures'}; "
                f"the SDK reads "
                f"the semantic-segmentation classes {', '.join(ARCHS)}"
            )
        return arch

    @classmethod
    def _built(cls, model: Any, arch: str, pre: dict[str, Any] | None) -> Built:
        module = HFLogits(model, arch)
        names = [str(model.config.id2label[i]) for i in sorted(model.config.id2label)]
        if all(_DEFAULT_LABEL.fullmatch(n) for n in names):
            names = []  # transformers' placeholders: the SDK's defaults are as good
        mean = std = None
        if pre is not None and pre.get("do_normalize", True) is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        elif pre is not None and "image_mean" in pre and "image_std" in pre:
            mean, std = tuple(pre["image_mean"]), tuple(pre["image_std"])
        config = {"hf_config": model.config.to_dict(), "preprocessor": pre}
        k = int(model.config.num_labels)
        return Built(module, arch, k, config, cls.classifier(module, arch), mean, std, names or None)  # type: ignore[arg-type]

    @classmethod
    def build(cls, arch: str, num_classes: int, config: dict[str, Any]) -> nn.Module:
        cls._arch([arch], f"arch '{arch}'")
        tf = cls.require()
        model_cls = getattr(tf, arch)
        hf_config = model_cls.config_class.from_dict(dict(config.get("hf_config") or {}))
        if int(hf_config.num_labels) != num_classes:
            raise ModelLoadError(
                f"the recorded HF config has {hf_config.num_labels} labels, not {num_classes}"
            )
        return HFLogits(model_cls(hf_config).eval(), arch)

    @classmethod
    def classifier(cls, module: nn.Module, arch: str) -> str:
        return f"model.{ARCHS[arch]}"

    @classmethod
    def export_needs(cls, arch: str) -> ExportNeeds | None:
        return EXPORT_NEEDS.get(arch)

    @classmethod
    def save_native(cls, module: nn.Module, arch: str, num_classes: int, config: dict[str, Any],
                    class_names: list[str], folder: Path) -> Path:  # fmt: skip
        import json

        model: Any = module.model if isinstance(module, HFLogits) else module
        model.config.architectures = [arch]
        model.config.id2label = dict(enumerate(class_names))
        model.config.label2id = {n: i for i, n in enumerate(class_names)}
        model.save_pretrained(str(folder))  # config.json + model.safetensors
        if config.get("preprocessor"):
            (folder / "preprocessor_config.json").write_text(
                json.dumps(config["preprocessor"], indent=2) + "\n"
            )
        return folder
