"""The sidecar JSON written next to every deployed artifact (``model.onnx`` -> ``model.json``).

It carries what the integrator on the car needs and what an auditor needs to trust the file:
classes and palette, the input contract (size, layout, range, mean/std, whether normalisation is
baked in), opset and precision, tool versions, the file's SHA-256 and the verification figures.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from stvm_sdk.boundary.fingerprint import sha256
from stvm_sdk.export.artifacts import SIDECAR_FORMAT, tool_versions
from stvm_sdk.export.palette import palette_for
from stvm_sdk.export.trt_ops import TRT_OPS_SOURCE
from stvm_sdk.models.io import SegModel


def io_contract(
    model: SegModel, *, baked_normalize: bool, argmax: bool, dynamic: bool, size: tuple[int, int]
) -> dict[str, Any]:
    """The ``input``/``output`` sections: names, dtypes, shapes and value ranges."""
    h, w = ("height", "width") if dynamic else size
    batch = "batch" if dynamic else 1
    inp = {
        "name": "image",
        "dtype": "float32",
        "layout": "NCHW",
        "color": "RGB",
        "shape": [batch, 3, h, w],
        "range": "[0,1]" if baked_normalize else "(x/255 - mean) / std",
        "normalization_baked": baked_normalize,
        "size": list(size),
    }
    if argmax:
        out = {"name": "classes", "dtype": "uint8", "kind": "classes", "shape": [batch, h, w]}
    else:
        out = {
            "name": "logits",
            "dtype": "float32",
            "kind": "logits",
            "shape": [batch, model.num_classes, h, w],
        }
    return {"input": inp, "output": out}


def onnx_sidecar(
    model: SegModel,
    path: Path,
    *,
    precision: str,
    opset: int,
    exporter: str,
    io: dict[str, Any],
    verification: dict[str, Any],
    trt_problems: list[str],
    trtexec: str,
    profile: dict[str, Any],
    source: Path | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sidecar dict for an ONNX file at ``path`` (hashed here, so call it on the final bytes)."""
    data = path.with_name(path.name + ".data")
    return {
        "format": SIDECAR_FORMAT,
        "file": path.name,
        "sha256": sha256(path),
        "size_bytes": path.stat().st_size,
        "external_data": data.name if data.is_file() else None,
        "external_data_sha256": sha256(data) if data.is_file() else None,
        "precision": precision,
        "opset": opset,
        "exporter": exporter,
        "num_classes": model.num_classes,
        "classes": list(model.class_names),
        "palette": palette_for(model.num_classes),
        **io,
        "mean": list(model.mean),
        "std": list(model.std),
        "source_model": {
            "path": str(source) if source else None,
            "sha256": sha256(source) if source else None,
            "arch": model.arch,
        },
        "tools": tool_versions(),
        "verification": verification,
        "tensorrt_parser_check": {"source": TRT_OPS_SOURCE, "ok": not trt_problems, "problems": trt_problems},
        "profile": profile,
        "trtexec": trtexec,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def engine_sidecar(onnx_meta: dict[str, Any], engine: Path, build: dict[str, Any]) -> dict[str, Any]:
    """Sidecar of an engine: the ONNX sidecar's contract plus TensorRT version, GPU and profile."""
    keep = (
        "precision",
        "num_classes",
        "classes",
        "palette",
        "input",
        "output",
        "mean",
        "std",
        "verification",
    )
    return {
        "format": SIDECAR_FORMAT,
        "file": engine.name,
        "sha256": sha256(engine),
        "size_bytes": engine.stat().st_size,
        "onnx": onnx_meta.get("file"),
        "onnx_sha256": onnx_meta.get("sha256"),
        **{k: onnx_meta[k] for k in keep if k in onnx_meta},
        **build,
        "tools": tool_versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
