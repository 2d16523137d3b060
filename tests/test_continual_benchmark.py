"""benchmarks/continual.py's bookkeeping: the stream's order (every frame once), and cells -> report.

The streams themselves are tested in tests/stream; here cells are written by hand so what a reader of
continual.md/json sees is checked without running a stream.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from support import benchmark_module


@pytest.fixture(scope="module")
def cont():
    with benchmark_module("continual") as module:
        yield module


def test_every_frame_of_the_stream_is_seen_once_in_sequence_order(cont) -> None:
    plan = replace(cont.Plan(), rounds=3, frames=4)
    order = cont.stream_order(plan)
    assert len(order) == 3 * 4 * 4
    seen = [(d, i) for _, _, d, i in order]
    assert len(set(seen)) == len(seen)  # no frame twice
    assert plan.counts() == {"target": 24, "fog": 12, "night": 12}
    for d, n in plan.counts().items():
        assert sorted(i for dd, i in seen if dd == d) == list(range(n))
    domains = [d for _, _, d, _ in order[:: plan.frames]]
    assert domains == ["target", "fog", "night", "target"] * 3


def _cell(plan, method: str, seed: int, seq: float, restores: int = 0) -> dict:
    rows = [[seq] * len(plan.sequence) for _ in range(plan.rounds)]
    cost = {
        "predict_ms_p50": 30.0, "predict_ms_p99": 40.0, "adapt_ms_p50": 500.0, "adapt_ms_p99": 700.0,
        "adapt_ms_per_frame": 250.0, "fps": 3.0, "frames": 10, "adapted_frames": 5, "threads": 1,
    }  # fmt: skip
    return {
        "arch": "lraspp_mobilenet_v3_large", "method": method, "seed": seed, "segment_miou": rows,
        "sequence_mean": seq, "domain_mean": {d: seq for d in dict.fromkeys(plan.sequence)},
        "round_mean": [seq] * plan.rounds, "before": {"target": 10.0, "source": 50.0},
        "after": {"target": 11.0, "source": 40.0}, "forgetting": {"target": 1.0, "source": -10.0},
        "restores": [{"frame": 40, "to": "last_healthy", "reasons": ["x"]}] * restores,
        "unhealthy_windows": restores, "windows": [], "cost": cost, "memory_bytes": {"buffer": 1},
    }  # fmt: skip


def test_report_states_the_target_verdict_from_the_cells(cont, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cont, "RESULTS", tmp_path)
    plan = replace(cont.Plan(), archs=("lraspp_mobilenet_v3_large",), seeds=(0, 1), rounds=2, tag="t")
    seqs = {"source_only": 10.0, "adabn": 11.0, "tent": 12.0, "mean_teacher": 12.5, "stvm": 13.0}
    cells = [
        _cell(plan, m, s, v + s * 0.1, restores=int(m == "mean_teacher"))
        for m, v in seqs.items()
        for s in (0, 1)
    ]
    text, summary = cont.report(plan, cells, 60.0, 2)
    assert "| stvm | sync | 13.05 ± 0.07 |" in text
    assert "online STvM 13.05 (seed spread 0.07) on the sequence mean, above every other method" in text
    assert "mean_teacher 2" in text  # restores are counted per method over seeds
    block = summary["blocks"]["lraspp_mobilenet_v3_large"]
    assert block["stvm"]["sequence_mean_per_seed"] == [13.0, 13.1]
    assert json.loads((tmp_path / "continual_t.json").read_text())["plan"]["rounds"] == 2
    cells[-1]["sequence_mean"] = cells[-2]["sequence_mean"] = 11.5
    text, _ = cont.report(plan, cells, 60.0, 2)
    assert "NOT above every other method" in text and "tent -0.55" in text
    assert "the best other row is mean_teacher at 12.55 (+1.05 over STvM)" in text


def test_rows_name_their_method_settings_seeds_and_mode(cont) -> None:
    plan = cont.Plan()
    assert plan.fps and plan.asynchronous and plan.threads == 2
    assert plan.row("bn_mix_0.5").method == "bn_mix"
    assert plan.method_cfg("bn_mix_0.5", 0).methods["bn_mix"]["source_share"] == 0.5
    assert plan.method_cfg("soft_teacher", 0).optim.lr == cont.SOFT_TEACHER_LR
    assert plan.stream_cfg("stvm_reset").reset_every == 100 and plan.stream_cfg("stvm").reset_every == 0
    assert plan.row_async("stvm") and not plan.row_async("stvm_sync") and not plan.row_async("adabn")
    assert plan.row_seeds("stvm") == (0, 1, 2) and plan.row_seeds("stvm_sync") == (0,)
    assert plan.row_seeds("bn_mix_0") == (0,)
    assert plan.stream_cfg("stvm_off").every > plan.rounds * plan.frames * len(plan.sequence)
    # a row's settings are part of its cache key: two rows of one method never share a cell
    s1, s2 = (cont._settings(plan, plan.archs[0], r, 0) for r in ("bn_mix_0", "bn_mix_0.8"))
    assert s1 != s2
