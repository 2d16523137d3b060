"""`stvm bench` and its parts: statistics, interleaved timing, roofline counts, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from stvm_sdk.cli.app import app
from typer.testing import CliRunner

from stvm_sdk.bench.roofline import EDGE_DEVICES, edge_estimates, model_cost
from stvm_sdk.bench.timing import add_ratios, summarize
from stvm_sdk.runners.base import Runner

runner = CliRunner()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An lraspp checkpoint (the smallest torchvision segmentation model) and its ONNX export."""
    from stvm_sdk.export.onnx import export_onnx
    from stvm_sdk.models import build_torchvision, from_module, save_model

    torch.manual_seed(0)
    model = from_module(build_torchvision("lraspp_mobilenet_v3_large", 19), arch="lraspp_mobilenet_v3_large")
    d = tmp_path_factory.mktemp("bench")
    return save_model(model, d / "demo.pt"), export_onnx(model, d / "demo.onnx").path


def test_bench_json_has_a_row_per_backend_with_ratio_and_edge_estimate(model_files) -> None:
    pt, onnx_path = model_files
    res = runner.invoke(
        app,
        [
            "bench",
            str(pt),
            str(onnx_path),
            "--shape",
            "64x128",
            "--warmup",
            "1",
            "--iters",
            "4",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout.strip().splitlines()[-1])
    rows = obj["rows"]
    assert [(r["model"], r["backend"]) for r in rows] == [
        ("demo.pt", "torch"),
        ("demo.pt", "ort"),
        ("demo.onnx", "ort"),
    ]
    for r in rows:
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["mean_ms"] > 0 and r["throughput"] > 0
        assert r["precision"] == "fp32" and r["peak_mem_mb"] > 0
    assert rows[0]["ratio_to_torch"] == 1.0 and rows[1]["ratio_to_torch"] > 0
    edge = obj["edge_estimate"]
    assert "LOWER BOUND" in edge["label"] and {r["device"] for r in edge["rows"]} == {
        d.name for d in EDGE_DEVICES
    }


def test_explicit_backend_that_no_file_serves_is_an_error(model_files) -> None:
    _, onnx_path = model_files
    res = runner.invoke(app, ["bench", str(onnx_path), "--backend", "torch", "--shape", "64x128"])
    assert res.exit_code == 2 and "--backend torch needs a .pt checkpoint" in res.output


def test_bench_refuses_a_foreign_engine_and_a_shape_outside_its_profile(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not built here")
    meta = {
        "tensorrt": "10.3.0",
        "gpu": "Orin",
        "compute_capability": "8.7",
        "profile": {"min": [1, 3, 512, 1024], "opt": [1, 3, 512, 1024], "max": [1, 3, 512, 1024]},
    }
    (tmp_path / "m.engine.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["bench", str(engine), "--shape", "720x1280"])
    assert res.exit_code == 2 and "outside m.engine's profile" in res.output and "Traceback" not in res.output
    if not torch.cuda.is_available():
        res = runner.invoke(app, ["bench", str(engine), "--shape", "512x1024"])
        assert res.exit_code == 2 and "built for TensorRT 10.3.0 on Orin" in res.output


def test_missing_model_file_is_a_one_line_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2 and res.output.strip().startswith("error: model file not found")


class _Fake(Runner):
    """Only its labels matter to ``summarize``; inference is the identity."""

    backend, precision = "ort", "fp32"

    def run(self, prepared: np.ndarray) -> np.ndarray:
        return prepared


def test_stats_percentiles_throughput_and_ratio() -> None:
    fake = _Fake(Path("m.onnx"))
    times = list(np.arange(1.0, 101.0))
    s = summarize(times, fake, "m", batch=2, peak_mb=None)
    assert (s.mean_ms, s.p50_ms) == (50.5, 50.5) and abs(s.p99_ms - 99.01) < 1e-9
    assert abs(s.throughput - 2000.0 / 50.5) < 1e-9
    ref = summarize([100.0], type("T", (_Fake,), {"backend": "torch"})(Path("m.pt")), "m", 1, None)
    rows = add_ratios([ref, s])
    assert rows[0].ratio_to_torch == 1.0 and rows[1].ratio_to_torch == 0.505


def test_roofline_counts_conv_flops_and_bounds_latency() -> None:
    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 3, 3, 3], np.zeros(16 * 27, np.float32))
    node = helper.make_node("Conv", ["image", "w"], ["y"], pads=[1, 1, 1, 1])
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    cost = model_cost(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), (1, 3, 100, 200))
    assert cost.flops == 2 * 16 * 100 * 200 * 3 * 3 * 3 and cost.params == 16 * 27
    assert cost.io_elements == 3 * 100 * 200 + 16 * 100 * 200
    for row in edge_estimates(cost, "fp16"):
        assert (
            row["lower_bound_ms"]
            == max(row["compute_ms"], row["memory_ms"])
            <= row["unfused_memory_ms"] + row["compute_ms"]
        )


def test_roofline_of_a_real_export_matches_published_lraspp_cost(model_files) -> None:
    cost = model_cost(onnx.load(str(model_files[1])), (1, 3, 520, 520))
    # torchvision lists 2.09 GFLOPS (multiply-adds, 21 classes) for this model at 520x520; 19 here.
    assert 2.0e9 < cost.flops / 2 < 2.2e9
