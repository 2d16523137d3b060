"""benchmarks/curves.py: a variant (``--set``/``--tag``) is a config of its own, cached under its own name."""

from __future__ import annotations

import pytest
from support import benchmark_module


@pytest.fixture(scope="module")
def curves():
    with benchmark_module("curves") as module:
        yield module


def test_a_variant_changes_the_method_config_and_the_cache_name(curves) -> None:
    over = curves.parse_sets(["weight_scale=raw", "metric.warmup=20", "run.iters=300"])
    assert over == {"weight_scale": "raw", "metric.warmup": 20, "run.iters": 300}
    plan = curves.Plan.quick()
    base = curves.curve_config(plan, plan.archs[0], "stvm_no_mocm", (100, 200))
    variant = curves.curve_config(plan, plan.archs[0], "stvm_no_mocm", (100, 200), over=over)
    assert base.methods["stvm_no_mocm"].get("weight_scale", "class_mean") == "class_mean"
    assert variant.methods["stvm_no_mocm"]["weight_scale"] == "raw"
    assert variant.methods["stvm_no_mocm"]["metric"]["warmup"] == 20
    assert variant.run.iters == 300 and base.run.iters == 200 and base.run.snapshots == (100,)
    key = curves.curve_key(plan, plan.archs[0], "moderate", base, 300)
    assert key["config"]["methods"]["stvm_no_mocm"]["weight_scale"] == "class_mean"  # defaults filled in
    assert key != curves.curve_key(plan, plan.archs[0], "moderate", variant, 300)
    assert curves.curve_label("stvm", "raw") == "stvm@raw" and curves.curve_label("stvm") == "stvm"
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        curves.parse_sets(["weight_scale"])
