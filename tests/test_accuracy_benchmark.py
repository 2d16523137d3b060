"""benchmarks/accuracy.py's bookkeeping: schedule order, cached cells -> table, partial runs.

The adaptations themselves are tested in tests/method and tests/test_api.py; here cells are written
by hand so the reporting code (what a reader of accuracy.md/json sees) is checked without training.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from support import benchmark_module


@pytest.fixture(scope="module")
def acc():
    with benchmark_module("accuracy") as module:
        yield module


def _write_cell(
    acc, cache: Path, arch: str, domain: str, name: str, seed: int, miou: float, plan=None
) -> None:
    plan = plan or acc.Plan()
    path = acc._cell_path(cache, arch, domain, "test", name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = {"miou": miou, "per_class_iou": {"road": miou + 1.0, "wall": None}, "seconds": 1.0}
    cell["settings"] = acc._settings(plan, arch, name, seed, "test", {})
    if name not in ("oracle", "source_only", "adabn"):
        cell |= {"miou_teacher": miou, "miou_student": miou - 1.0, "deliverable": "teacher"}
    path.write_text(json.dumps(cell))


def test_schedule_is_seed_major_over_all_archs_and_runs_deterministic_methods_once(acc) -> None:
    plan = acc.Plan()
    cells = acc.schedule(plan)
    seeds = [seed for *_, seed, _ in cells]
    assert seeds == sorted(seeds), "every block's seed-0 cell comes before any seed-1 cell"
    first = [(a, d) for a, d, _, seed, _ in cells if seed == plan.seeds[0] and d != "source"]
    assert set(first) == set(plan.blocks()), "all blocks at seed 0"
    order = list(dict.fromkeys(first))  # blocks in the order their first cell runs
    assert order[:4] == [(a, d) for d in ("mild", "moderate") for a in plan.archs], (
        "both archs' first blocks first"
    )
    names = [(arch, domain, name, seed) for arch, domain, name, seed, _ in cells]
    assert len(names) == len(set(names)), "no cell twice"
    for arch, domain in plan.blocks():
        for name in ("source_only", "adabn", "oracle"):
            assert sum(1 for a, d, n, _ in names if (a, d, n) == (arch, domain, name)) == 1
        assert sum(1 for a, d, n, _ in names if (a, d, n) == (arch, domain, "stvm")) == len(plan.seeds)
    # the sweep reuses the default threshold_st cell instead of running it twice, on every block
    sweep = [name for name, _ in acc.sweep_cells(plan)]
    assert "threshold_st" in sweep and len(sweep) == len(acc.SWEEP)
    for arch, domain in plan.blocks():
        swept = {n for a, d, n, s in names if (a, d) == (arch, domain) and n.startswith("threshold_st")}
        assert swept == set(sweep)
    assert plan.domains == ("mild", "moderate", "target", "fog") and plan.n_test >= 1000


def test_table_json_shape_and_partial_markdown(acc, tmp_path: Path) -> None:
    plan = acc.Plan()
    arch, domain = plan.archs[0], plan.domains[0]
    values = {"source_only": 10.0, "adabn": 12.0, "mean_teacher": 14.0, "oracle": 40.0}
    for name, miou in values.items():
        _write_cell(acc, tmp_path, arch, domain, name, 0, miou)
    for seed, miou in zip(plan.seeds[:2], (20.0, 24.0), strict=True):
        _write_cell(acc, tmp_path, arch, domain, "stvm", seed, miou)

    table = acc.build_table(plan, tmp_path)
    assert list(table) == [arch] and list(table[arch]) == [domain]  # blocks without cells are left out
    stvm = table[arch][domain]["stvm"]
    assert stvm["miou_per_seed"] == [20.0, 24.0]
    assert stvm["miou_mean"] == pytest.approx(22.0) and stvm["miou_std"] == pytest.approx(2.0)
    assert stvm["miou_teacher_mean"] == pytest.approx(22.0)
    assert stvm["miou_student_mean"] == pytest.approx(21.0)
    assert set(stvm) >= {"miou_mean", "miou_std", "miou_per_seed", "per_class_iou"}
    assert table[arch][domain]["oracle"]["per_class_iou"] == {"road": 41.0, "wall": None}

    out = tmp_path / "accuracy.md"
    acc.write_markdown(plan, table, {}, out, seconds=60.0, skipped=5)
    text = out.read_text()
    assert "**Incomplete:** 5 cells were not run" in text
    # (22 - 10) / (40 - 10) = 40% of the gap, above mean_teacher's 14
    assert "closes **40%**" in text and "it is above the best other method (mean_teacher, 14.00)" in text
    assert "| stvm | 22.00 ± 2.00 | 2 | 20.0, 24.0 | 22.00 | 21.00 |" in text


def test_gap_line_when_rows_are_missing(acc) -> None:
    block = {"source_only": {"miou_mean": 10.0}}
    assert "not computed" in acc._gap_line(block)


def test_a_cached_cell_is_reused_only_while_its_settings_are_unchanged(acc, tmp_path: Path) -> None:
    plan = acc.Plan()
    arch, domain = plan.archs[0], plan.domains[0]
    _write_cell(acc, tmp_path, arch, domain, "stvm", 0, 20.0)
    assert acc._cached_cell(tmp_path, plan, arch, domain, "stvm", 0, "test", {}) is not None
    longer = acc.Plan(adapt_iters={**plan.adapt_iters, arch: plan.adapt_iters[arch] + 1})
    assert acc._cached_cell(tmp_path, longer, arch, domain, "stvm", 0, "test", {}) is None
    assert acc._cached_cell(tmp_path, plan, arch, domain, "stvm", 0, "test", {"mix.tau": 0.1}) is None
    assert acc.build_table(longer, tmp_path) == {}  # stale cells never reach the table
    acc._cell_path(tmp_path, arch, domain, "test", "stvm", 0).write_text('{"miou": 2')  # cut off mid-write
    assert acc._cached_cell(tmp_path, plan, arch, domain, "stvm", 0, "test", {}) is None


def test_an_arch_with_its_own_blocks_runs_only_those(acc) -> None:
    """``arch_domains`` cuts an arch to some blocks of the ladder: its cells, oracles and sweep
    follow, the other archs keep every domain."""
    plan = acc.Plan(seeds=(0,), arch_domains={"deeplabv3_mobilenet_v3_large": ("mild", "moderate")})
    assert plan.domains_of("deeplabv3_mobilenet_v3_large") == ("mild", "moderate")
    assert plan.domains_of("lraspp_mobilenet_v3_large") == plan.domains
    assert len(plan.blocks()) == len(plan.domains) + 2
    blocks = {(c[0], c[1]) for c in acc.schedule(plan) if c[1] != "source"}
    assert blocks == set(plan.blocks())
    assert acc.Plan.quick().blocks() == [("lraspp_mobilenet_v3_large", "moderate")]


def test_cells_run_in_two_processes_are_cached_and_a_spent_budget_runs_none(acc, tmp_path: Path) -> None:
    """The real pipeline at toy size through the process pool: data, models, every cell of the
    schedule; a re-run finds everything cached, and a plan whose budget is spent starts no cell."""
    arch = "lraspp_mobilenet_v3_large"
    plan = acc.Plan(
        archs=(arch,),
        domains=("target",),
        seeds=(0,),
        size=(32, 64),
        n_source=8,
        n_target=8,
        n_test=4,
        source_iters=2,
        adapt_iters={arch: 2},
        warmup=1,
    )
    assert acc.run_cells(plan, tmp_path, None, jobs=2) == 0
    table = acc.build_table(plan, tmp_path)
    assert set(table[arch]["target"]) == {name for name, _ in acc.methods(plan)} | {"oracle"}
    assert len(acc.build_sweep(plan, tmp_path)) == len(acc.SWEEP)
    assert acc.run_cells(plan, tmp_path, None, jobs=2) == 0  # all cached: nothing re-run

    other = acc.Plan(**{**plan.__dict__, "n_test": 5})  # new settings: every cell is stale
    n_cells = len(acc.schedule(other))
    assert acc.run_cells(other, tmp_path, budget_s=0.0, jobs=2) == n_cells
    assert acc.build_table(other, tmp_path) == {}


def test_domain_gap_reports_the_accuracy_cells_and_the_gap_verdict(acc, tmp_path: Path) -> None:
    """benchmarks/domain_gap.py reads the accuracy benchmark's cells: its figures are the table's."""
    gap_mod = importlib.import_module("domain_gap")
    plan = acc.Plan()
    scores = {  # arch 0: gap 30, AdaBN closes 20% (met); arch 1: gap 15 (not met)
        plan.archs[0]: {"source_only": 10.0, "adabn": 16.0, "oracle": 40.0},
        plan.archs[1]: {"source_only": 10.0, "adabn": 12.0, "oracle": 25.0},
    }
    for arch, by_model in scores.items():
        for domain in plan.domains:
            for name, miou in by_model.items():
                _write_cell(acc, tmp_path, arch, domain, name, plan.seeds[0], miou)
    out = tmp_path / "domain_gap.md"
    assert gap_mod.main(["--cache", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert f"| {plan.archs[0]} | target | 10.00 | 16.00 | 40.00 | 30.00 | 20% | met |" in text
    assert f"| {plan.archs[1]} | target | 10.00 | 12.00 | 25.00 | 15.00 | 13% | **not met** |" in text
    res = json.loads(out.with_suffix(".json").read_text())
    assert res[plan.archs[0]]["fog"]["adabn"]["miou"] == 16.0


def test_tuning_rows_average_seeds_and_the_error_detection_of_each_score(acc) -> None:
    """benchmarks/tuning.py's table: mean ± std of the seeds' mIoU, mean AUROC/AUPR/AURC per score."""
    tuning = importlib.import_module("tuning")

    def det(auroc: float) -> dict:
        return {"auroc": auroc, "aupr_errors": 0.5, "aurc": 0.1, "error_rate": 0.3}

    cells = [
        {"miou": 10.0 + s, "error_detection": {"pseudo_label_accuracy": 0.6, "reliability": det(0.7 + s / 10),
                                               "confidence": det(0.6)}}
        for s in (0, 1, 2)
    ]  # fmt: skip
    row = tuning._row("stvm@clean", {"metric.clean": "confident"}, [0, 1, 2], cells)
    assert row == (
        "| stvm@clean | 0,1,2 | 11.00 ± 0.82 | 0.800 | 0.600 | 0.500 | 0.500 | 0.100 | 0.100 | 60.0 | "
        '`{"metric.clean": "confident"}` |'
    )
    assert (
        tuning._row("adabn", {}, [0], [{"miou": 12.0}])
        == "| adabn | 0 | 12.00 | - | - | - | - | - | - | - | `{}` |"
    )
    assert [n for n, _ in tuning.ROUND_3].count("stvm") == 1 and ("stvm@paper", acc.PAPER) in tuning.ROUND_3


def test_reliability_figures_are_the_seed_means_of_stvms_cells(acc, tmp_path: Path) -> None:
    plan = acc.Plan()
    arch, domain = plan.archs[0], plan.domains[0]
    for seed in plan.seeds:
        path = acc._cell_path(tmp_path, arch, domain, "test", "stvm", seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        det = {
            "pseudo_label_accuracy": 0.6,
            "reliability": {"auroc": 0.7 + seed / 100, "aupr_errors": 0.5, "aurc": 0.2, "error_rate": 0.4,
                            "risk_coverage": [0.1, 0.4]},
            "confidence": {"auroc": 0.72, "aupr_errors": 0.45, "aurc": 0.21, "error_rate": 0.4,
                           "risk_coverage": [0.2, 0.4]},
        }  # fmt: skip
        settings = acc._settings(plan, arch, "stvm", seed, "test", {})
        path.write_text(json.dumps({"miou": 1.0, "settings": settings, "error_detection": det}))
    rel = acc.build_reliability(plan, tmp_path)
    assert list(rel) == [arch] and list(rel[arch]) == [domain]
    f = rel[arch][domain]
    assert f["auroc_reliability"] == pytest.approx(0.71) and f["auroc_confidence"] == pytest.approx(0.72)
    assert f["aupr_errors_reliability"] == 0.5 and f["risk_coverage_reliability"] == pytest.approx([0.1, 0.4])
    assert f["seeds"] == len(plan.seeds)


def _write_frames(acc, cache: Path, arch: str, domain: str, name: str, seed: int, wrong: float) -> None:
    """Per-frame confusions of a labelling with the share ``wrong`` of its pixels moved off the
    diagonal, on 50 frames shared by every method (the same seeds: paired)."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(7)
    right = torch.randint(50, 100, (50, 3), generator=g).double()
    per_frame = torch.diag_embed(right * (1 - wrong))
    per_frame[:, 0, 1] += right[:, 0] * wrong
    per_frame[:, 1, 2] += right[:, 1] * wrong
    per_frame[:, 2, 0] += right[:, 2] * wrong
    path = acc._frames_path(acc._cell_path(cache, arch, domain, "test", name, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, per_frame=per_frame.round().numpy().astype(np.uint32))


def test_paired_intervals_severity_and_the_ladder_summary(acc, tmp_path: Path) -> None:
    """diff_ci of (STvM - method) from the cells' per-frame confusions; the block's ratio and
    pseudo-label accuracy in the meta; the ladder lines name each verdict."""
    plan = acc.Plan(archs=("lraspp_mobilenet_v3_large",), domains=("moderate",), seeds=(0, 1))
    arch, domain = plan.archs[0], plan.domains[0]
    wrong = {"source_only": 0.5, "adabn": 0.4, "mean_teacher": 0.2, "oracle": 0.05}
    for name, w in wrong.items():
        _write_cell(acc, tmp_path, arch, domain, name, 0, 100 * (1 - w), plan)
        _write_frames(acc, tmp_path, arch, domain, name, 0, w)
    for seed in plan.seeds:
        _write_cell(acc, tmp_path, arch, domain, "stvm", seed, 75.0, plan)
        _write_frames(acc, tmp_path, arch, domain, "stvm", seed, 0.25)
        _write_cell(acc, tmp_path, arch, domain, "confidence_weighted", seed, 75.0, plan)
        _write_frames(acc, tmp_path, arch, domain, "confidence_weighted", seed, 0.25)
    adabn = acc._cell_path(tmp_path, arch, domain, "test", "adabn", 0)
    adabn.write_text(json.dumps({**json.loads(adabn.read_text()), "pixel_accuracy": 61.0}))

    table = acc.build_table(plan, tmp_path)
    block = table[arch][domain]
    assert "diff_ci" not in block["stvm"]
    assert block["adabn"]["verdict"] == "better" and block["adabn"]["diff_ci"][0] > 0
    assert block["mean_teacher"]["verdict"] == "worse" and block["mean_teacher"]["diff_ci"][1] < 0
    same = block["confidence_weighted"]
    assert same["verdict"] == "level" and same["diff"] == 0.0 and same["diff_ci"] == [0.0, 0.0]
    lo, hi = block["adabn"]["diff_ci"]
    assert lo <= block["adabn"]["diff"] <= hi
    meta = acc.block_meta(plan, tmp_path, table)[arch][domain]
    assert meta["ratio"] == pytest.approx(50.0 / 95.0) and meta["pseudo_label_accuracy"] == 61.0
    lines = "\n".join(acc.ladder_lines(table, {arch: {domain: meta}}, {}))
    assert "| lraspp / moderate | 0.53 | 61.0 | 75.00 |" in lines
    assert "better" in lines and "worse" in lines and "level" in lines
