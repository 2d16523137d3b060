"""What a model file holds (`stvm info`): a PyTorch model from its checkpoint, an exported graph from
its ONNX proto and the sidecar written next to it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stvm_sdk.runners.contract import read_sidecar, sidecar_path, unknown_input_line
from stvm_sdk.runners.dispatch import backend_of
from stvm_sdk.runners.ort import OrtRunner

_INPUT = "float32 [B,3,H,W], RGB in [0,1]"


def describe_model(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Format, classes, size and input/output contract of a ``.pt``/TorchScript model or an ``.onnx``."""
    p = Path(path)
    if backend_of(p) == "torch":
        return _describe_torch(p, trust_pickle)
    return _describe_onnx(p) if backend_of(p) == "ort" else _describe_engine(p)


def _describe_torch(p: Path, trust_pickle: bool) -> dict[str, Any]:
    from stvm_sdk.methods import reach
    from stvm_sdk.models import load_model
    from stvm_sdk.models.contract import classifier_problem

    seg = load_model(p, trust_pickle=trust_pickle)
    head = seg.classifier
    return {
        "path": str(p), "format": seg.kind, "family": seg.family, "arch": seg.arch,
        "num_classes": seg.num_classes, "classifier": head,
        "classifier_warning": classifier_problem(seg.module, head, seg.num_classes) if head else None,
        "parameters": sum(q.numel() for q in seg.module.parameters()),
        "input": f"{_INPUT} then (x - mean) / std", "mean": list(seg.mean), "std": list(seg.std),
        "output": f"logits [B,{seg.num_classes},H,W]", "class_names": seg.class_names,
        # what each method would update on this model, before any runs
        "methods": {name: r.to_dict() for name, r in reach(seg).items()},
    }  # fmt: skip


def _describe_onnx(p: Path) -> dict[str, Any]:
    import onnx

    runner = OrtRunner(p)  # the graph must load in ONNX Runtime, and its contract hold, or this is one line
    proto = onnx.load(str(p), load_external_data=False)
    meta = runner.sidecar or {}
    c = runner.contract
    k = runner.num_classes or "K"
    size = f"{runner.fixed_size[0]}x{runner.fixed_size[1]} (static)" if runner.fixed_size else "any (dynamic)"
    baked = (
        "normalisation UNKNOWN"
        if runner.baked is None
        else "normalisation inside the graph"
        if runner.baked
        else "then (x - mean) / std"
    )
    return {
        "path": str(p), "format": "onnx", "precision": runner.precision,
        "arch": (meta.get("source_model") or {}).get("arch"), "num_classes": runner.num_classes,
        "parameters": sum(math.prod(t.dims) for t in proto.graph.initializer),
        "input": f"{_INPUT}, {baked}; size {size}",
        "mean": list(c.mean) if c.mean else None, "std": list(c.std) if c.std else None,
        "output": "class ids uint8 [B,H,W] (argmax in the graph)" if runner.output == "classes"
        else f"logits [B,{k},H,W]",
        "class_names": runner.class_names,
        "opset": proto.opset_import[0].version if proto.opset_import else None,
        "sidecar": str(sidecar_path(p)) if runner.sidecar is not None else None,
        "contract_from": c.source or None, "verification": meta.get("verification"),
        # predict, eval and bench refuse such a graph with this line; info only describes it
        "warning": None if runner.input_known else unknown_input_line(p),
    }  # fmt: skip


def _describe_engine(p: Path) -> dict[str, Any]:
    """An engine from its sidecar only: no TensorRT object is made (it needs the GPU it was built for)."""
    from stvm_sdk.errors import ModelLoadError

    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}")
    meta = read_sidecar(p) or {}
    return {
        "path": str(p), "format": "tensorrt engine", "precision": meta.get("precision"),
        "num_classes": meta.get("num_classes"), "class_names": meta.get("classes"),
        "built_for": f"TensorRT {meta.get('tensorrt', '?')} on {meta.get('gpu', '?')}",
        "profile": meta.get("profile"), "sidecar": str(sidecar_path(p)) if meta else None,
        "warning": None if "normalization_baked" in (meta.get("input") or {}) else unknown_input_line(p),
    }  # fmt: skip
