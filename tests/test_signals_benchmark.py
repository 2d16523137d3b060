"""benchmarks/signals.py: error signals and labelling rules measured by forward passes only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import TinySegNet, benchmark_module

from stvm_sdk import AdaptConfig, adapt
from stvm_sdk.data import scan_frames
from stvm_sdk.inputs import as_segmodel


@pytest.fixture(scope="module")
def signals():
    with benchmark_module("signals") as module:
        yield module


def test_signal_table_scores_every_rule_and_signal_and_fits_the_combination_on_val(
    signals, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    model = as_segmodel(TinySegNet(), classifier="classifier")
    source = as_segmodel(TinySegNet(), classifier="classifier")
    images, labels = signals.load_split(scan_frames(*frames), (32, 48))
    half = len(images) // 2
    table = signals.signal_table(
        model, source, (images[:half], labels[:half]), (images[half:], labels[half:])
    )
    for split in ("val", "test"):
        acc = table[split]["pseudo_label_accuracy"]
        assert set(acc) == {"argmax", "flip", "centroid"} and all(0 <= v <= 100 for v in acc.values())
        scored = table[split]["signals"]
        assert {"confidence", "centroid", "source_agreement", "logistic"} <= set(scored)
        assert all(0 <= s["auroc"] <= 1 and 0 <= s["aupr_errors"] <= 1 for s in scored.values())
    assert set(table["logistic_weights"]) == set(table["val"]["signals"]) - {"logistic"}
    signals.write_markdown(table, tmp_path / "t.md", ["# t"])
    assert "| logistic (fitted on val) |" in (tmp_path / "t.md").read_text()


def test_a_stvm_run_adds_its_metric_reliability(signals, frames: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = AdaptConfig().with_overrides(
        {"run.iters": 2, "data.batch_size": 2, "data.crop": (32, 48), "methods.stvm.metric.warmup": 1,
         "methods.stvm.mix.patch": 8}
    )  # fmt: skip
    result = adapt(TinySegNet(), frames[0], config=cfg, out_dir=tmp_path / "run", progress=False)
    images, labels = signals.load_split(scan_frames(*frames), (32, 48))
    assert result.teacher is not None
    centroids = signals.class_centroids(result.teacher, images)
    z_centroids = signals.metric_centroids(result.teacher, result.extras["metric"], images)
    assert torch.allclose(z_centroids.norm(dim=1), torch.ones(len(z_centroids)), atol=1e-5)
    rules, sig = signals.pixel_signals(
        result.teacher, result.teacher, images[:2], centroids, result, z_centroids
    )
    assert rules["argmax"].shape == labels[:2].shape
    for name in ("reliability", "confidence_x_reliability", "metric_centroid", "metric_gamma4",
                 "conf^0.75_x_metric_gamma4"):  # fmt: skip
        r = sig[name]
        assert r.shape == labels[:2].shape and float(r.min()) >= 0 and float(r.max()) <= 1, name
    assert torch.isfinite(torch.stack(list(sig.values()))).all()
