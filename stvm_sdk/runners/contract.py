"""The deploy contract of an exported artifact: what a runner must know to feed it and to read it.

The facts (input name, layout and normalisation, mean/std, classes, output kind, precision) live in two
places: the JSON sidecar `stvm export` writes beside the artifact (``model.onnx`` -> ``model.json``,
``m.engine`` -> ``m.engine.json``) and, for an ONNX graph, the graph's own ``metadata_props`` (key
:data:`GRAPH_METADATA_KEY`, the same facts as one JSON object), so a graph that lost its sidecar still
says how to feed it. Both are read through one schema (:func:`check_sidecar`): every field has a type, a
range, finiteness and a length, and a violation is one line naming the file, the field, what it holds
and what is expected. A sidecar that is not JSON is called corrupt, not missing. Where both sources
exist, the facts they share must agree (:func:`merge`), and the facts must fit the graph itself
(:func:`check_graph`: input name and shape, output kind, class count against the output channels).

A graph whose input normalisation no source states cannot be fed correctly ([0,1] RGB and normalised
input both run, and give different answers): :func:`unknown_input_line` is the line every command that
feeds it frames refuses it with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stvm_sdk.boundary.fields import MAX_CLASSES, MEAN_RANGE, STD_RANGE, FileFields, shown
from stvm_sdk.errors import ModelLoadError

SIDECAR_FORMAT = "stvm_sdk.deploy/1"
GRAPH_METADATA_KEY = "stvm_sdk.deploy"
MAX_SIDECAR_BYTES = 16 << 20  # a sidecar is a few kB; anything this large is not one
PRECISION_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_CC = re.compile(r"\d{1,2}\.\d{1,2}")


def sidecar_path(artifact: Path) -> Path:
    """The sidecar JSON of an artifact: ``m.onnx`` -> ``m.json``, ``m.engine`` -> ``m.engine.json``.

    Engines keep their suffix in the name so an engine and the ONNX it came from never share a sidecar.
    ``stvm_sdk.export.sidecar`` writes what runners read here.
    """
    if artifact.suffix.lower() == ".onnx":
        return artifact.with_suffix(".json")
    return artifact.with_name(artifact.name + ".json")


def read_sidecar(artifact: Path) -> dict[str, Any] | None:
    """The artifact's sidecar, checked against the schema; None when there is none.

    Raises:
        ModelLoadError: the sidecar cannot be read, is corrupt (not a JSON object) or a field is invalid.
    """
    p = sidecar_path(artifact)
    if not p.exists() and not p.is_symlink():
        return None
    fix = f"restore the .json stvm export wrote beside {artifact.name}, or export it again"
    try:
        if p.is_dir():
            raise ModelLoadError(f"{p}: the sidecar of {artifact.name} is a folder, not a JSON file; {fix}")
        size = p.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise ModelLoadError(f"{p}: the sidecar of {artifact.name} is corrupt ({size:,} bytes); {fix}")
        raw = p.read_bytes()
    except OSError as exc:
        raise ModelLoadError(
            f"{p}: the sidecar of {artifact.name} cannot be read ({exc.strerror}); {fix}"
        ) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelLoadError(
            f"{p}: the sidecar of {artifact.name} is corrupt (binary, not JSON); {fix}"
        ) from None
    except ValueError as exc:
        why = str(exc).split(":")[0][:80]
        raise ModelLoadError(
            f"{p}: the sidecar of {artifact.name} is corrupt (invalid JSON: {why}); {fix}"
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"{p}: the sidecar of {artifact.name} is corrupt (holds {shown(data)}, not a JSON object); {fix}"
        )
    engine = artifact.suffix.lower() in (".engine", ".plan")
    return check_sidecar(data, p, engine=engine)


def read_graph_metadata(props: Mapping[str, str], artifact: Path) -> dict[str, Any] | None:
    """The facts an ONNX graph states about itself (``metadata_props``), checked; None when it has none."""
    text = props.get(GRAPH_METADATA_KEY)
    if text is None:
        return None
    where = f"{artifact} (metadata_props '{GRAPH_METADATA_KEY}')"
    try:
        data = json.loads(text)
    except ValueError:
        raise ModelLoadError(
            f"{where}: is corrupt (holds {shown(text)}, not JSON); export the graph again"
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{where}: is corrupt (holds {shown(data)}, not a JSON object); export it again")
    return check_sidecar(data, where)


def _optional_text(f: FileFields, meta: Mapping[str, Any], key: str, prefix: str = "", **kw: Any) -> None:
    if key in meta and meta[key] is not None:
        f.text(prefix + key, meta[key], **kw)


def _dims(f: FileFields, name: str, value: Any, ranks: Sequence[int]) -> list[int | str]:
    """A tensor shape: ``ranks`` items, each an integer >= 1 or a dimension name."""
    expected = f"a list of {' or '.join(map(str, ranks))} dimensions (integers >= 1 or names)"
    if value is None:
        f.missing(name, expected)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) not in ranks:
        f.fail(name, value, expected)
    for d in value:
        named = isinstance(d, str) and 0 < len(d) <= 64
        if not named and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            f.fail(name, value, expected)
    return list(value)


def _input(f: FileFields, inp: Any) -> None:
    f.mapping("input", inp)
    _optional_text(f, inp, "name", "input.")
    _optional_text(f, inp, "dtype", "input.", choices=("float32",))
    _optional_text(f, inp, "layout", "input.", choices=("NCHW",))
    _optional_text(f, inp, "color", "input.", choices=("RGB",))
    _optional_text(f, inp, "range", "input.")
    if "shape" in inp:
        shape = _dims(f, "input.shape", inp["shape"], (4,))
        if isinstance(shape[1], int) and shape[1] != 3:
            f.fail("input.shape", shape, "3 channels (RGB) in the second dimension")
    if "normalization_baked" in inp:
        f.boolean("input.normalization_baked", inp["normalization_baked"])
    if "size" in inp:
        f.integers("input.size", inp["size"], length=2, lo=1)


def _output(f: FileFields, out: Any, num_classes: int | None) -> None:
    f.mapping("output", out)
    _optional_text(f, out, "name", "output.")
    kind = out.get("kind")
    if kind is not None:
        f.text("output.kind", kind, choices=("logits", "classes"))
    if "dtype" in out:
        dtypes = {"logits": ("float32",), "classes": ("uint8",)}.get(kind or "", ("float32", "uint8"))
        f.text("output.dtype", out["dtype"], choices=dtypes)
    if "shape" in out:
        ranks = {"logits": (4,), "classes": (3,)}.get(kind or "", (3, 4))
        shape = _dims(f, "output.shape", out["shape"], ranks)
        if len(shape) == 4 and num_classes is not None and isinstance(shape[1], int):
            f.agree("num_classes", num_classes, shape[1], "field 'output.shape'")


def _verification(f: FileFields, v: Any) -> None:
    f.mapping("verification", v)
    if "passed" in v:
        f.boolean("verification.passed", v["passed"])
    if "n_frames" in v:
        f.integer("verification.n_frames", v["n_frames"], lo=0)
    if "argmax_agreement" in v:
        f.number("verification.argmax_agreement", v["argmax_agreement"], lo=0, hi=100)
    for key in ("miou_eager", "miou_onnx"):
        if v.get(key) is not None:
            f.number(f"verification.{key}", v[key], lo=0, hi=100)
    for key in ("max_abs_diff", "max_abs_logit"):
        if v.get(key) is not None:
            f.number(f"verification.{key}", v[key], lo=0)


def _profile(f: FileFields, prof: Any) -> None:
    f.mapping("profile", prof)
    shapes = [f.integers(f"profile.{k}", prof.get(k), length=4, lo=1) for k in ("min", "opt", "max")]
    if not all(a <= b <= c for a, b, c in zip(*shapes, strict=True)):
        f.fail("profile", prof, "min <= opt <= max in every dimension")


def check_sidecar(meta: Mapping[str, Any], where: object, *, engine: bool = False) -> dict[str, Any]:
    """Every field of a sidecar (or of a graph's own metadata) that is present, checked; the fields a
    runner needs, required: ``mean`` and ``std`` when the input is not normalised inside the graph.

    The same schema reads the ONNX sidecar, the engine sidecar (``engine=True``: its TensorRT fields)
    and a graph's ``metadata_props``; ``where`` names the file in every message.
    """
    f = FileFields(where, ModelLoadError)
    if "format" in meta:
        f.text("format", meta["format"], choices=(SIDECAR_FORMAT,))
    for key in ("file", "exporter", "onnx", "external_data", "trtexec", "created"):
        _optional_text(f, meta, key, max_len=4096)
    for key in ("sha256", "external_data_sha256", "onnx_sha256"):
        if meta.get(key) is not None:
            f.hexdigest(key, meta[key])
    if "size_bytes" in meta:
        f.integer("size_bytes", meta["size_bytes"], lo=1)
    if "precision" in meta:
        prec = f.text("precision", meta["precision"], max_len=32)
        if not PRECISION_NAME.fullmatch(prec):
            f.fail("precision", prec, "a precision name such as fp32, fp16 or int8")
    if "opset" in meta:
        f.integer("opset", meta["opset"], lo=1, hi=1000)
    k = f.integer("num_classes", meta["num_classes"], lo=1, hi=MAX_CLASSES) if "num_classes" in meta else None
    if "classes" in meta:
        k = k if k is not None else len(meta["classes"]) if isinstance(meta["classes"], list) else None
        f.texts("classes", meta["classes"], length=k)
        if k == 0:
            f.fail("classes", meta["classes"], "a list of at least 1 name")
    if "palette" in meta:
        pal = meta["palette"]
        if not isinstance(pal, list) or (k is not None and len(pal) != k):
            f.fail("palette", pal, f"a list of {k if k is not None else 'K'} [r, g, b] colours")
        for colour in pal:
            f.integers("palette", colour, length=3, lo=0, hi=255)
    if "mean" in meta:
        f.numbers("mean", meta["mean"], length=3, lo=MEAN_RANGE[0], hi=MEAN_RANGE[1])
    if "std" in meta:
        f.numbers("std", meta["std"], length=3, positive=True, lo=STD_RANGE[0], hi=STD_RANGE[1])
    if "input" in meta:
        _input(f, meta["input"])
        if meta["input"].get("normalization_baked") is False:
            for key, lo_hi in (("mean", MEAN_RANGE), ("std", STD_RANGE)):
                if key not in meta:
                    f.missing(
                        key, f"a list of 3 numbers in [{lo_hi[0]}, {lo_hi[1]}] (the input is normalised)"
                    )
    if "output" in meta:
        _output(f, meta["output"], k)
    if "source_model" in meta:
        src = f.mapping("source_model", meta["source_model"])
        _optional_text(f, src, "path", "source_model.", max_len=4096)
        _optional_text(f, src, "arch", "source_model.")
        if src.get("sha256") is not None:
            f.hexdigest("source_model.sha256", src["sha256"])
    if "tools" in meta:
        for name, version in f.mapping("tools", meta["tools"]).items():
            f.text(f"tools.{name}", version, max_len=100)
    if "verification" in meta:
        _verification(f, meta["verification"])
    if "tensorrt_parser_check" in meta:
        trt = f.mapping("tensorrt_parser_check", meta["tensorrt_parser_check"])
        if "ok" in trt:
            f.boolean("tensorrt_parser_check.ok", trt["ok"])
        if "problems" in trt:
            f.texts("tensorrt_parser_check.problems", trt["problems"], max_len=4096)
    for key in ("calibration",):
        if key in meta:
            f.mapping(key, meta[key])
    if "profile" in meta:
        _profile(f, meta["profile"])
    if engine:
        _optional_text(f, meta, "tensorrt", max_len=40)
        _optional_text(f, meta, "gpu")
        _optional_text(f, meta, "input_name")
        if "compute_capability" in meta:
            cc = f.text("compute_capability", meta["compute_capability"], max_len=8)
            if not _CC.fullmatch(cc):
                f.fail("compute_capability", cc, "MAJOR.MINOR, e.g. 8.7")
        if "workspace_mib" in meta:
            f.integer("workspace_mib", meta["workspace_mib"], lo=1)
    return dict(meta)


@dataclass(frozen=True)
class Contract:
    """What an artifact's sidecar and its own metadata state (None: stated nowhere)."""

    baked: bool | None = None  # normalisation inside the graph: the input is [0,1] RGB
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: list[str] | None = None
    num_classes: int | None = None
    precision: str | None = None
    output_kind: str | None = None  # "logits" or "classes"
    input_name: str | None = None
    input_shape: list[int | str] | None = None
    output_name: str | None = None
    source: str = ""  # where the facts come from, for messages ("model.json", "model.onnx metadata")


def _facts(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's fields as one checked source states them (absent ones left out)."""
    inp, out = meta.get("input") or {}, meta.get("output") or {}
    classes = meta.get("classes")
    k = meta.get("num_classes", len(classes) if classes is not None else None)
    found = {
        "baked": inp.get("normalization_baked"),
        "mean": tuple(meta["mean"]) if "mean" in meta else None,
        "std": tuple(meta["std"]) if "std" in meta else None,
        "class_names": list(classes) if classes is not None else None,
        "num_classes": k,
        "precision": meta.get("precision"),
        "output_kind": out.get("kind"),
        "input_name": inp.get("name"),
        "input_shape": inp.get("shape"),
        "output_name": out.get("name"),
    }
    return {key: v for key, v in found.items() if v is not None}


# The facts two sources must agree on (they change what the graph is fed or how its output is read),
# with the field that states each.
_SHARED = {
    "baked": "input.normalization_baked",
    "mean": "mean",
    "std": "std",
    "num_classes": "num_classes",
    "output_kind": "output.kind",
    "input_name": "input.name",
}


def merge(
    sidecar: Mapping[str, Any] | None,
    sidecar_where: object,
    graph: Mapping[str, Any] | None,
    graph_where: str,
) -> Contract:
    """One contract from a checked sidecar and the graph's checked metadata: each fact from whichever
    states it; where both do, they must agree (a sidecar of another export is refused, not trusted)."""
    side = _facts(sidecar or {})
    own = _facts(graph or {})
    f = FileFields(sidecar_where, ModelLoadError)
    for key, field_name in _SHARED.items():
        if key in side and key in own:
            a, b = side[key], own[key]
            if key in ("mean", "std"):
                same = all(abs(x - y) <= 1e-6 for x, y in zip(a, b, strict=True))
            else:
                same = a == b
            if not same:
                f.fail(field_name, list(a) if isinstance(a, tuple) else a,
                       f"{shown(list(b) if isinstance(b, tuple) else b)} as {graph_where} states "
                       "(is the sidecar from another export?)")  # fmt: skip
    sources = [str(s) for s, d in ((sidecar_where, sidecar), (graph_where, graph)) if d is not None]
    return Contract(**{**own, **side}, source=" and ".join(sources))


def check_graph(
    contract: Contract,
    artifact: Path,
    inputs: Sequence[tuple[str, Sequence[Any], str]],
    outputs: Sequence[tuple[str, Sequence[Any], str]],
) -> int | None:
    """The contract against the graph's own inputs and outputs ``(name, shape, type)`` (as ONNX Runtime
    reports them); returns the graph's class count when its output shape fixes it.

    Raises:
        ModelLoadError: a graph the SDK cannot feed (not one float ``[B,3,H,W]`` input), or a stated
            fact the graph contradicts (input name or shape, output kind, class count).
    """
    f = FileFields(contract.source or artifact, ModelLoadError)
    if not inputs or not outputs:
        raise ModelLoadError(
            f"{artifact}: the graph has {len(inputs)} input(s) and {len(outputs)} output(s); "
            "the SDK runs graphs with one image input and one output"
        )
    name, shape, dtype = inputs[0]
    shape = list(shape)
    if dtype != "tensor(float)" or len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise ModelLoadError(
            f"{artifact}: input '{name}' is {dtype} {shown(shape)}; the SDK feeds float32 [B,3,H,W] RGB "
            "(export the model with stvm export)"
        )
    if contract.input_name is not None:
        f.agree("input.name", contract.input_name, name, f"{artifact.name}'s graph")
    if contract.input_shape is not None:
        for i, (said, real) in enumerate(zip(contract.input_shape, shape, strict=True)):
            if isinstance(said, int) and isinstance(real, int) and said != real:
                f.fail(
                    "input.shape", contract.input_shape, f"{shown(shape)} (dimension {i}), as the graph has"
                )
    out_name, out_shape, out_type = outputs[0]
    kind = "classes" if out_type == "tensor(uint8)" else "logits"
    if contract.output_kind is not None:
        f.agree(
            "output.kind",
            contract.output_kind,
            kind,
            f"{artifact.name}'s graph (output '{out_name}' is {out_type})",
        )
    out_shape = list(out_shape)
    channels = (
        out_shape[1] if kind == "logits" and len(out_shape) == 4 and isinstance(out_shape[1], int) else None
    )
    if channels is not None:
        _classes_fit(contract, channels, "the output channels of", artifact)
    return channels


def _classes_fit(contract: Contract, found: int, what: str, artifact: Path) -> None:
    """The stated class count against the one the graph shows (``what`` says how it shows it)."""
    if contract.num_classes is None or contract.num_classes == found:
        return
    f = FileFields(contract.source or artifact, ModelLoadError)
    if contract.class_names is not None:
        f.fail("classes", f"{len(contract.class_names)} names", f"{found} classes, {what} {artifact.name}")
    f.fail("num_classes", contract.num_classes, f"{found} classes, {what} {artifact.name}")


def check_output(out: Any, contract: Contract, artifact: Path) -> None:
    """A run's output against the stated class count (a graph whose output channels are symbolic shows
    them only when it runs): other logits channels, or class ids beyond the classes, refuse the classes."""
    if contract.num_classes is None:
        return
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) == 4:
        _classes_fit(contract, int(shape[1]), "the output channels of", artifact)
    elif len(shape) == 3 and int(getattr(out, "size", 0)):
        top = int(out.max())
        if top >= contract.num_classes:
            _classes_fit(contract, top + 1, "as the class ids output by", artifact)


def unknown_input_line(artifact: Path) -> str:
    """Why an artifact whose normalisation is stated nowhere is refused, and what to do (one line)."""
    side = sidecar_path(artifact).name
    where = (
        f"neither a sidecar {side} nor the graph's '{GRAPH_METADATA_KEY}' metadata states it"
        if artifact.suffix.lower() == ".onnx"
        else f"no sidecar {side} states it"
    )
    return (
        f"{artifact.name}: whether the input is normalised inside the graph is unknown ({where}), and "
        "[0,1] RGB and normalised input give different answers: keep the .json stvm export wrote beside "
        "it, or export the model again with stvm export"
    )
