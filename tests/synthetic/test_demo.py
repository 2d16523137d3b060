"""`stvm demo` end to end at toy size: generate -> train source -> adapt -> eval -> export -> bench.

Every stage is the real one (synthetic generator, supervised training, STvM, the ONNX checker and an
ONNX Runtime session, the benchmark); only the sizes are tiny. The second call must reuse the cache.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from stvm_sdk.demo import DemoSettings, run_demo

TINY = DemoSettings(
    size=(64, 128), n_source=6, n_target=6, n_val=3, source_iters=3, adapt_iters=3, warmup=1, bench_iters=2
)


def test_demo_runs_every_stage_and_caches_data_and_source_model(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "runs"
    summary = run_demo(TINY, cache=cache, out_dir=out, progress=False)

    assert 0.0 <= summary["miou_before"] <= 100.0 and 0.0 <= summary["miou_after"] <= 100.0
    assert summary["val_frames"] == TINY.n_val
    figures = Path(summary["figures_dir"])
    assert len(list(figures.glob("panel_*.png"))) == TINY.n_val and (figures / "curves.png").is_file()
    for key in ("source_model", "model_path", "onnx_path", "sidecar_path"):
        assert Path(summary[key]).is_file(), key
    assert summary["verification"]["argmax_agreement"] > 99.0  # the ONNX graph computes the same model
    sidecar = json.loads(Path(summary["sidecar_path"]).read_text())
    assert sidecar["num_classes"] == 19
    assert {(r["backend"], r["precision"]) for r in summary["bench"]} >= {("torch", "fp32"), ("ort", "fp32")}
    assert set(summary["timings_s"]) == {
        "data_s",
        "source_model_s",
        "adapt_s",
        "eval_s",
        "export_s",
        "bench_s",
    }
    json.dumps(summary)  # `stvm demo --json` prints exactly this
    _check_human_summary(summary)

    model_mtime = Path(summary["source_model"]).stat().st_mtime_ns
    again = run_demo(TINY, cache=cache, out_dir=tmp_path / "runs2", progress=False)
    assert again["source_model"] == summary["source_model"]
    assert Path(again["source_model"]).stat().st_mtime_ns == model_mtime  # cached, not retrained

    # a demo run left by other settings (an older SDK, --quick vs full) is replaced, not an error
    other = run_demo(
        replace(TINY, adapt_iters=TINY.adapt_iters + 1), cache=cache, out_dir=out, progress=False
    )
    assert other["settings"]["adapt_iters"] == TINY.adapt_iters + 1


def _check_human_summary(summary: dict) -> None:
    """What `stvm demo` prints: one distinct row per benchmarked file, full paths, stages in words."""
    import io

    from rich.console import Console
    from stvm_sdk.cli.demo_cmd import _print

    con = Console(width=100, record=True, file=io.StringIO())
    _print(summary, con)
    text = con.export_text()
    assert "…" not in text and "{" not in text, text  # no cut path, no raw dict
    for key in ("source_model", "run_dir", "figures_dir", "model_path", "onnx_path", "sidecar_path"):
        assert f"{key}: {summary[key]}" in text, key
    latency = [line.split("│")[1].strip() for line in text.splitlines() if "latency" in line]
    assert len(latency) == len(summary["bench"]) == len(set(latency)), latency
    assert any("model.safetensors" in r and "ONNX Runtime" in r for r in latency), latency
    assert any("model.onnx" in r for r in latency), latency
    assert "source model" in text and "export" in text
    lf = summary["label_free"]  # what the run knew without labels
    gate = [line for line in text.splitlines() if "without labels: gate" in line]
    assert lf["gate"] in ("pass", "worse_than_source", "collapsed") and lf["gate"] in gate[0], text
