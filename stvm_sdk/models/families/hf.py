"""Hugging Face transformers semantic-segmentation models whose output is per-pixel logits.

Read from a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``) with
``local_files_only=True``, ``use_safetensors=True`` and no remote code, for the classes in
:data:`ARCHS` only (chosen from ``config.architectures``). The HF model is wrapped in
:class:`HFLogits`, a thin module returning the ``.logits`` tensor, so the SDK's contract
(``[B,K,h,w]``; SegFormer and BEiT give 1/4 resolution, the SDK upsamples) and tracing hold.
Normalisation comes from ``preprocessor_config.json`` when the folder has one (else ImageNet), class
names from ``config.id2label``. Written back with ``save_pretrained`` (``hf/``), loadable with
``XxxForSemanticSegmentation.from_pretrained(folder)``. A config that would make transformers load
anything from elsewhere (a named backbone, a timm model, a Hub attention kernel, a shard outside the
folder) is refused (:func:`check_hf_config`), and so is a label count the classifier's weights disagree with.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stvm_sdk.boundary.fields import MAX_CLASSES, ModelFields, shown
from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.families import register_family
from stvm_sdk.models.families.base import Built, ExportNeeds, Family, read_json, read_json_strict

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
# Backbones transformers would load from elsewhere: a name it looks up on the Hub, in timm or as a local
# folder (``backbone``, with ``backbone_kwargs`` for timm), pretrained weights (``use_pretrained_backbone``),
# or a timm model (whose name may be timm's "local-dir:" or "hf-hub:"). A model file names none: its
# backbone is the config's own ``backbone_config`` and its weights are in the folder.
_TIMM_TYPES = ("timm_backbone", "timm_wrapper")
# Attention implementations transformers has built in ("eager", "sdpa", "flash_attention_2", ...); a name
# with a '/' is a kernel it fetches from the Hub (or a folder) and runs.
_ATTENTION = re.compile(r"[a-z0-9_]{1,40}")
_SHARD = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}\.safetensors")
_NESTING = 8  # sub-configs inside sub-configs; deeper is not a model's config


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


def check_hf_config(config: dict[str, Any], f: ModelFields, prefix: str) -> int:
    """Check the fields of transformers' config (a folder's config.json, or the one the SDK recorded)
    that the SDK reads or that would make transformers load something else; return the label count.

    ``num_labels`` and ``id2label`` (ids 0..K-1, one name each) agree and are at most
    :data:`MAX_CLASSES` (transformers builds K placeholder names before anything else); no config,
    nested ones included, names a backbone to load from elsewhere (see ``_TIMM_TYPES``).
    """
    _nothing_from_elsewhere(config, f, prefix, 0)
    num_labels = config.get("num_labels")
    if num_labels is not None:
        num_labels = f.integer(f"{prefix}num_labels", num_labels, lo=1, hi=MAX_CLASSES)
    id2label = config.get("id2label")
    if id2label is None:
        return num_labels if num_labels is not None else 2  # transformers' default
    expected = f"an object of 1-{MAX_CLASSES} labels with the ids 0..K-1, one name each"
    if not isinstance(id2label, dict):
        f.fail(f"{prefix}id2label", id2label, expected)
    labels: dict[Any, Any] = id2label
    n = len(labels)
    if not 1 <= n <= MAX_CLASSES:
        f.fail(f"{prefix}id2label", f"{n} labels", expected)
    ids = sorted(_label_id(key) for key in labels)
    if ids != list(range(n)):
        f.fail(f"{prefix}id2label", labels, expected)
    f.texts(f"{prefix}id2label", list(labels.values()))
    if num_labels is not None and num_labels != n:
        f.fail(f"{prefix}num_labels", num_labels, f"{n}, the number of labels in id2label")
    return n


def _label_id(key: Any) -> int:
    """An id2label key as an int: a JSON key is a string of digits, one recorded in a .pt an int."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    return int(key) if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 10 else -1


def _nothing_from_elsewhere(config: dict[str, Any], f: ModelFields, prefix: str, depth: int) -> None:
    if depth > _NESTING:
        f.fail(prefix.rstrip("."), "a deeper config", f"at most {_NESTING} nested configs")
    if config.get("backbone") is not None:
        f.fail(
            f"{prefix}backbone", config["backbone"], "null: a model file's backbone is its backbone_config"
        )
    if config.get("backbone_kwargs"):
        f.fail(
            f"{prefix}backbone_kwargs", config["backbone_kwargs"], "null (nothing is passed to a backbone)"
        )
    if config.get("use_pretrained_backbone"):
        f.fail(
            f"{prefix}use_pretrained_backbone",
            config["use_pretrained_backbone"],
            "false (nothing is downloaded)",
        )
    for key in ("attn_implementation", "_attn_implementation"):
        if config.get(key) is not None:
            f.matching(f"{prefix}{key}", config[key], _ATTENTION, "null or a built-in name such as 'sdpa'")
    if config.get("quantization_config") is not None:
        f.fail(
            f"{prefix}quantization_config",
            config["quantization_config"],
            "null (the SDK adapts fp32 weights)",
        )
    if config.get("model_type") in _TIMM_TYPES:
        f.fail(
            f"{prefix}model_type",
            config["model_type"],
            "a transformers model type (a timm name can open files)",
        )
    # Sub-configs (backbone_config, ...) are checked alike.
    for key, value in config.items():
        if isinstance(value, dict) and ("model_type" in value or str(key).endswith("config")):
            _nothing_from_elsewhere(value, f, f"{prefix}{str(key)[:60]}.", depth + 1)


def normalisation(
    pre: dict[str, Any] | None, f: ModelFields
) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None]:
    """Mean and std from a ``preprocessor_config.json`` (None, None: not stated, the SDK's default).

    ``do_normalize`` false: none (mean 0, std 1). ``image_mean`` / ``image_std`` are three numbers each,
    or one number for all three channels (as transformers takes them); one without the other is refused.
    """
    if pre is None:
        return None, None
    do_normalize = pre.get("do_normalize")
    if do_normalize is not None and f.boolean("do_normalize", do_normalize) is False:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if mean is None and std is None:
        return None, None
    return f.normalisation("image_mean", _per_channel(mean), "image_std", _per_channel(std))


def _per_channel(value: Any) -> Any:
    """One number for all three channels as three; anything else as it is (checked by the caller)."""
    return [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _check_index(where: Path) -> None:
    """A sharded save's index names its shards as files of the folder itself (none elsewhere)."""
    index = read_json_strict(where)
    if index is None:
        return
    f = ModelFields(where, ModelLoadError)
    for name in f.mapping("weight_map", index.get("weight_map")).values():
        f.matching("weight_map", name, _SHARD, "names of .safetensors files in the model's folder")


def _classifier_outputs(path: Path, head: str) -> int | None:
    """The output channels of the last conv under ``head`` in the folder's safetensors, read from the
    header (no tensor is loaded); None when it cannot be read (transformers' own load then reports)."""
    from safetensors import safe_open

    index = read_json(path / "model.safetensors.index.json")
    weight_map = index.get("weight_map") if index is not None else None
    files: dict[str, list[str]] = {}
    try:
        if isinstance(weight_map, dict):
            for key, name in weight_map.items():
                if isinstance(key, str) and key.startswith(f"{head}.") and isinstance(name, str):
                    files.setdefault(name, []).append(key)
        else:
            files["model.safetensors"] = []
        shapes: dict[str, list[int]] = {}
        for name, keys in files.items():
            shard = path / name
            if shard.parent != path or not shard.is_file():
                return None
            with safe_open(str(shard), framework="pt") as fh:
                for key in keys or [k for k in fh.keys() if k.startswith(f"{head}.")]:  # noqa: SIM118
                    shapes[key] = list(fh.get_slice(key).get_shape())
    except Exception:
        return None
    convs = [k for k, shape in shapes.items() if k.endswith(".weight") and len(shape) == 4]
    if not convs:
        return None
    last = max(convs, key=lambda k: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in k.split(".")])
    return shapes[last][0]


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
        where = path / "config.json"
        config = read_json_strict(where) or {}
        f = ModelFields(where, ModelLoadError)
        archs = f.texts("architectures", config.get("architectures") or [])
        arch = cls._arch(archs, path)
        k = check_hf_config(config, f, "")
        if not any((path / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
            raise ModelLoadError(
                f"{path} has no model.safetensors (a pytorch_model.bin is a pickle, not read): "
                "re-save it with save_pretrained(folder) (safetensors is its default)"
            )
        _check_index(path / "model.safetensors.index.json")
        outputs = _classifier_outputs(path, ARCHS[arch])
        if outputs is not None and outputs != k:
            label = "id2label" if config.get("id2label") is not None else "num_labels"
            shown_value = f"{k} labels" if label == "id2label" else k
            f.fail(
                label,
                shown_value,
                f"{outputs}: the classifier {ARCHS[arch]} in model.safetensors has {outputs} outputs",
            )
        pre_where = path / "preprocessor_config.json"
        pre = read_json_strict(pre_where)
        mean, std = normalisation(pre, ModelFields(pre_where, ModelLoadError))
        tf = cls.require()
        try:
            model, info = getattr(tf, arch).from_pretrained(
                str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False,
                dtype=torch.float32, output_loading_info=True,
            )  # fmt: skip
        except Exception as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelLoadError(f"transformers cannot load {path}: {why}") from None
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # transformers fills them with random values and carries on: a wrong model
            raise ModelLoadError(
                f"{path}/model.safetensors does not fit {arch}: it lacks {len(missing)} tensor(s) "
                f"(e.g. {', '.join(shown(m, 80) for m in missing[:3])}); re-save it with save_pretrained"
            )
        built = cls._built(model.eval(), arch, pre)
        built.mean, built.std = mean, std
        return built

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
        arch = next((a for a in archs if isinstance(a, str) and a in ARCHS), None)
        if arch is None:
            named = (
                shown("/".join(map(str, archs)), 120).strip("'\"") if archs else "model without architectures"
            )
            raise ModelLoadError(
                f"{where} is a Hugging Face {named}; "
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
        config = {"hf_config": model.config.to_dict(), "preprocessor": pre}
        k = int(model.config.num_labels)
        return Built(module, arch, k, config, cls.classifier(module, arch), None, None, names or None)

    @classmethod
    def check_config(
        cls, arch: str, num_classes: int, config: dict[str, Any], f: ModelFields, prefix: str = "config."
    ) -> dict[str, Any]:
        """``hf_config`` (transformers' config as a dict, checked as a folder's config.json is, its label
        count the model's) and ``preprocessor`` (an object or null, written back as it is)."""
        f.only(config, ["hf_config", "preprocessor"], "a field of a Hugging Face model's config", prefix)
        hf_config = f.mapping(f"{prefix}hf_config", config.get("hf_config") or {})
        k = check_hf_config(hf_config, f, f"{prefix}hf_config.")
        if k != num_classes:
            f.fail(f"{prefix}hf_config.id2label", f"{k} labels", f"{num_classes}, the model's class count")
        pre = config.get("preprocessor")
        return {
            "hf_config": hf_config,
            "preprocessor": None if pre is None else f.mapping(f"{prefix}preprocessor", pre),
        }

    @classmethod
    def build(cls, arch: str, num_classes: int, config: dict[str, Any]) -> nn.Module:
        cls._arch([arch], f"arch {shown(arch)}")
        # Checked again here: no caller hands transformers a config that loads a backbone from elsewhere.
        config = cls.check_config(arch, num_classes, config, ModelFields(f"HF {arch} config", ModelLoadError))
        tf = cls.require()
        model_cls = getattr(tf, arch)
        try:
            hf_config = model_cls.config_class.from_dict(dict(config["hf_config"]))
            return HFLogits(model_cls(hf_config).eval(), arch)
        except Exception as exc:  # values of the right types that do not fit together
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelLoadError(
                f"transformers cannot build {arch} from the recorded config: {why}"
            ) from None

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
