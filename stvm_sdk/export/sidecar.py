"""The sidecar JSON written next to every deployed artifact (``model.onnx`` -> ``model.json``).

It carries what the integrator on the car needs and what an auditor needs to trust the file:
classes and palette, the input contract (size, layout, range, mean/std, whether normalisation is
baked in), opset and precision, tool versions, the file's SHA-256 and the verification figures.

The facts a runner needs to feed the graph and read its output (:func:`graph_facts`) are also written
into the ONNX file's own ``metadata_props``, so a graph that lost its sidecar still says how to run it.
:mod:`stvm_sdk.runners.contract` reads both through one schema.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from stvm_sdk.boundary.fingerprint import sha256
from stvm_sdk.export.artifacts import SIDECAR_FORMAT, tool_versions
from stvm_sdk.export.palette import palette_for
from stvm_sdk.export.trt_ops import TRT_OPS_SOURCE
from stvm_sdk.models.io import SegModel
from stvm_sdk.runners.contract import GRAPH_METADATA_KEY, check_sidecar


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


def graph_facts(
    model: SegModel,
    *,
    precision: str,
    baked_normalize: bool,
    argmax: bool,
    dynamic: bool,
    size: tuple[int, int],
) -> dict[str, Any]:
    """What a runner needs to feed a graph and read its output: precision, classes, input contract
    (name, layout, normalisation, mean/std) and output kind; written into the graph's metadata."""
    io = io_contract(model, baked_normalize=baked_normalize, argmax=argmax, dynamic=dynamic, size=size)
    io["input"].pop("size")  # the verification size, not a fact of the graph (a static one has its shape)
    return {
        "format": SIDECAR_FORMAT,
        "precision": precision,
        "num_classes": model.num_classes,
        "classes": list(model.class_names),
        **io,
        "mean": list(model.mean),
        "std": list(model.std),
    }


def set_graph_facts(proto: Any, facts: dict[str, Any], where: object) -> None:
    """Put ``facts`` (checked with the schema runners read them with) into an ``onnx.ModelProto``'s
    ``metadata_props``, replacing an earlier entry."""
    check_sidecar(facts, where)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != GRAPH_METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in [*kept, (GRAPH_METADATA_KEY, json.dumps(facts, separators=(",", ":")))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def stamp_graph(path: Path, facts: dict[str, Any]) -> None:
    """Write ``facts`` into the ONNX file at ``path`` (its weights, inline or external, are untouched)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    set_graph_facts(proto, facts, path)
    onnx.save_model(proto, str(path))


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
