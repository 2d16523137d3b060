"""The precision table: every row exports and verifies end to end, and a new row needs no other edit."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from stvm_sdk.errors import ConfigError
from stvm_sdk.export.pipeline import ExportOptions, export_model
from stvm_sdk.export.precisions import (
    PRECISIONS,
    Precision,
    Thresholds,
    engine_precisions,
    register,
)
from stvm_sdk.export.verify import Verification, judge


@contextlib.contextmanager
def registered(row: Precision) -> Iterator[Precision]:
    register(row)
    try:
        yield row
    finally:
        PRECISIONS.pop(row.name)


@pytest.mark.parametrize("argmax", [False, True], ids=["logits", "argmax"])
@pytest.mark.parametrize("name", list(PRECISIONS))
def test_every_row_exports_and_verifies_at_a_tiny_shape(
    name: str, argmax: bool, tiny_model, target_root: Path, tmp_path: Path
) -> None:
    row = PRECISIONS[name]
    opts = ExportOptions(
        out_dir=tmp_path, precisions=(name,), argmax=argmax, calib=target_root, shape="64x128",
        verify_frames=2, calib_frames=2, calib_methods=("minmax",),
    )  # fmt: skip
    art = export_model(tiny_model, opts).artifacts[-1]
    assert art.precision == name and art.onnx_path.name == f"model{row.suffix}.onnx"
    assert art.verification.passed and art.verification.n_frames == 2
    words = art.trtexec.split()
    assert words[len(words) - len(row.trtexec_flags) :] == row.trtexec_flags  # the engine flags come last
    assert json.loads(art.sidecar_path.read_text())["precision"] == name
    out_type = onnx.load(str(art.onnx_path)).graph.output[0].type.tensor_type.elem_type
    assert out_type == (onnx.TensorProto.UINT8 if argmax else onnx.TensorProto.FLOAT)


def test_an_unknown_precision_is_refused_with_the_known_ones(tiny_model, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown precision 'int9'.*fp32, fp16, int8.*'int8'"):
        export_model(tiny_model, ExportOptions(out_dir=tmp_path, precisions=("int9",)))


def test_engines_are_built_for_the_precisions_asked_for_or_else_the_base_one() -> None:
    assert engine_precisions(["fp32"]) == ["fp32"]
    assert engine_precisions(["fp32", "fp16", "int8"]) == ["fp16", "int8"]


# The fp32 exporter under another name, with fp16's engine flags and roofline figures and its own
# thresholds: a row only this test knows, so every place that picks it up reads the table.
ALT = replace(
    PRECISIONS["fp32"], name="alt", suffix="_alt", flag="--alt", help="Also write the alt graph.",
    thresholds=Thresholds(argmax_agreement=99.0), trt_flags=("FP16",), bytes_per_element=2,
    tensor_share=0.25,
)  # fmt: skip


def test_a_registered_row_is_a_flag_exported_verified_benched_and_estimated(
    checkpoint: Path, tmp_path: Path
) -> None:
    import typer
    from stvm_sdk.cli.commands import register_all
    from typer.testing import CliRunner

    from stvm_sdk.bench.run import bench_models

    with registered(ALT):
        app = typer.Typer()
        register_all(app)  # the command is built from the table as it is now
        args = ["export", checkpoint, "--alt", "--out", tmp_path / "out", "--shape", "32x64"]
        res = CliRunner().invoke(app, [str(a) for a in [*args, "--verify-frames", "1", "--json"]])
        assert res.exit_code == 0, res.output
        obj = json.loads(res.stdout.strip().splitlines()[-1])
        assert obj["precision"] == "alt" and Path(obj["onnx_path"]).name == "model_alt.onnx"
        assert obj["verification"]["passed"] and obj["trtexec"].endswith("model_alt.timing.cache --fp16")
        close = Verification("alt", 1, (32, 64), argmax_agreement=99.2)
        assert judge(close).passed and not judge(replace(close, precision="fp32")).passed
        report = bench_models(
            [obj["onnx_path"]], backends="ort", shape=(32, 64), warmup=0, iters=1, threads=1
        )
    assert [r.precision for r in report.rows] == ["alt"]
    assert report.edge is not None
    by = {(r["device"], r["precision"]): r for r in report.edge["rows"]}
    for device, prec in by:
        if prec == "alt":  # the same bytes and tensor share as fp16: the same bounds
            assert {**by[device, "alt"], "precision": "fp16"} == by[device, "fp16"]
    assert {p for _, p in by} == {"fp16", "int8", "alt"}
    assert "alt" not in PRECISIONS
