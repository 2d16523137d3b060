"""AdaptConfig: defaults from docs/method.md, files in three formats, unknown keys rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stvm_sdk import AdaptConfig
from stvm_sdk.errors import ConfigError


def test_defaults_are_method_md_decisions() -> None:
    c = AdaptConfig()
    assert (c.method, c.bn_init, c.metric.embed_dim, c.metric.alpha, c.metric.delta) == (
        "stvm",
        "target",
        128,
        32.0,
        0.1,
    )
    assert (c.reliability.scale, c.mix.patch, c.mix.tau, c.metric.warmup, c.metric.pixels_per_class) == (
        16.0,
        32,
        0.5,
        200,
        512,
    )
    assert (c.optim.lr, c.optim.head_lr_mult, c.optim.momentum, c.optim.weight_decay) == (
        2.5e-4,
        10.0,
        0.9,
        5e-4,
    )
    assert c.optim.ema_max == 0.999 and c.metric.proxy_lr_mult == 100.0


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_reads_toml_yaml_json(tmp_path: Path, suffix: str) -> None:
    text = {
        ".toml": 'method = "mean_teacher"\n[run]\niters = 7\n[data]\ncrop = [64, 128]\n',
        ".yaml": "method: mean_teacher\nrun:\n  iters: 7\ndata:\n  crop: [64, 128]\n",
        ".json": json.dumps({"method": "mean_teacher", "run": {"iters": 7}, "data": {"crop": [64, 128]}}),
    }[suffix]
    p = tmp_path / f"c{suffix}"
    p.write_text(text)
    c = AdaptConfig.from_file(p)
    assert (c.method, c.run.iters, c.data.crop) == ("mean_teacher", 7, (64, 128))


def test_unknown_keys_and_bad_values_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metric.alfa"):
        AdaptConfig.from_dict({"metric": {"alfa": 3}})
    with pytest.raises(ConfigError, match="unknown method"):
        AdaptConfig.from_dict({"method": "magic"})
    with pytest.raises(ConfigError, match="must be int"):
        AdaptConfig.from_dict({"run": {"iters": "many"}})
    with pytest.raises(ConfigError, match="tau"):
        AdaptConfig.from_dict({"mix": {"tau": 3.0}})
    with pytest.raises(ConfigError, match="student_bn"):
        AdaptConfig.from_dict({"student_bn": "sometimes"})
    p = tmp_path / "c.ini"
    p.write_text("x")
    with pytest.raises(ConfigError, match="toml"):
        AdaptConfig.from_file(p)


def test_round_trip_and_frozen() -> None:
    c = AdaptConfig().with_overrides({"run.iters": 3})
    assert AdaptConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(AttributeError):
        c.method = "tent"  # type: ignore[misc]
