"""AdaptConfig: defaults from docs/method.md, files in three formats, unknown keys rejected, each
method's knobs in its own section, moved keys named, old run configs read into today's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stvm_sdk import AdaptConfig
from stvm_sdk.errors import ConfigError
from stvm_sdk.methods import method_keys, resolve
from stvm_sdk.methods.registry import migrate


def test_defaults_are_method_md_decisions() -> None:
    cfg, _ = resolve(AdaptConfig())
    s = cfg.methods["stvm"]
    assert (
        cfg.method,
        cfg.bn_init,
        s["metric"]["embed_dim"],
        s["metric"]["alpha"],
        s["metric"]["delta"],
    ) == (
        "stvm",
        "target",
        128,
        32.0,
        0.1,
    )
    assert (s["reliability"]["scale"], s["mix"]["patch"], s["mix"]["tau"], s["metric"]["warmup"]) == (
        4.0,
        32,
        0.5,
        40,
    )
    rel, metric = s["reliability"], s["metric"]
    assert (rel["mode"], rel["confidence_power"], metric["proxies"], metric["centroid_momentum"]) == (
        "combined",
        0.75,
        "centroid",
        0.99,
    )
    assert s["mix"]["prob"] == 1.0 and s["mix"]["keep_clean"] and cfg.run.snapshots == ()
    assert s["weight_scale"] == "class_mean"  # decision 6, also confidence_weighted's; raw elsewhere
    others = resolve(AdaptConfig(method="confidence_weighted"))[0].section["weight_scale"]
    assert (others, resolve(AdaptConfig(method="mean_teacher"))[0].section["weight_scale"]) == (
        "class_mean",
        "raw",
    )
    paper = resolve(AdaptConfig.preset("stvm_paper"))[0].section
    assert paper["weight_scale"] == "raw" and not paper["mix"]["keep_clean"]
    assert (paper["reliability"]["mode"], paper["reliability"]["scale"], paper["metric"]["proxies"]) == (
        "softmax",
        16.0,
        "learned",
    )
    assert (cfg.optim.lr, cfg.optim.head_lr_mult, cfg.optim.momentum, cfg.optim.weight_decay) == (
        2.5e-4,
        10.0,
        0.9,
        5e-4,
    )
    assert s["ema_max"] == 0.999 and s["metric"]["proxy_lr_mult"] == 100.0
    assert (s["normalize"], s["student_bn"], s["deliverable"]) == ("class_sqrt", "frozen", "teacher")


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_reads_toml_yaml_json(tmp_path: Path, suffix: str) -> None:
    text = {
        ".toml": 'method = "mean_teacher"\n[run]\niters = 7\n[data]\ncrop = [64, 128]\n'
        "[methods.mean_teacher]\nema_max = 0.99\n",
        ".yaml": "method: mean_teacher\nrun:\n  iters: 7\ndata:\n  crop: [64, 128]\n"
        "methods:\n  mean_teacher:\n    ema_max: 0.99\n",
        ".json": json.dumps(
            {
                "method": "mean_teacher",
                "run": {"iters": 7},
                "data": {"crop": [64, 128]},
                "methods": {"mean_teacher": {"ema_max": 0.99}},
            }  # fmt: skip
        ),
    }[suffix]
    p = tmp_path / f"c{suffix}"
    p.write_text(text)
    c, _ = resolve(AdaptConfig.from_file(p))
    assert (c.method, c.run.iters, c.data.crop) == ("mean_teacher", 7, (64, 128))
    assert c.methods["mean_teacher"]["ema_max"] == 0.99


def test_unknown_keys_and_bad_values_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"methods\.stvm\.metric\.alfa"):
        resolve(AdaptConfig.from_dict({"methods": {"stvm": {"metric": {"alfa": 3}}}}))
    with pytest.raises(ConfigError, match="unknown method"):
        resolve(AdaptConfig.from_dict({"method": "magic"}))
    with pytest.raises(ConfigError, match="must be int"):
        AdaptConfig.from_dict({"run": {"iters": "many"}})
    with pytest.raises(ConfigError, match=r"methods\.stvm\.mix.*tau"):
        resolve(AdaptConfig().with_overrides({"methods.stvm.mix.tau": 3.0}))
    with pytest.raises(ConfigError, match=r"methods\.mean_teacher\.student_bn"):
        resolve(
            AdaptConfig(method="mean_teacher").with_overrides({"methods.mean_teacher.student_bn": "often"})
        )
    with pytest.raises(ConfigError, match="has no options"):
        resolve(AdaptConfig.from_dict({"methods": {"adabn": {"x": 1}}}))
    p = tmp_path / "c.ini"
    p.write_text("x")
    with pytest.raises(ConfigError, match="toml"):
        AdaptConfig.from_file(p)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"metric": {"warmup": 3}}, "methods.stvm.metric.warmup"),
        ({"reliability": {"normalize": "valid"}}, "methods.stvm.normalize"),
        ({"mix": {"tau": 0.6}}, "methods.stvm.mix.tau"),
        ({"method": "mean_teacher", "optim": {"ema_max": 0.9}}, "methods.mean_teacher.ema_max"),
        ({"student_bn": "train"}, "methods.stvm.student_bn"),
    ],
)
def test_a_config_file_with_a_moved_key_gets_one_line_naming_the_new_key(
    tmp_path: Path, old: dict[str, object], new: str
) -> None:
    p = tmp_path / "old.json"
    p.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=rf"moved to '{new}'"):
        AdaptConfig.from_file(p)
    section = next(k for k in old if k != "method")
    value = old[section]
    dotted = f"{section}.{next(iter(value))}" if isinstance(value, dict) else section
    with pytest.raises(ConfigError, match=rf"moved to '{new}'"):
        AdaptConfig(method=str(old.get("method", "stvm"))).with_overrides({dotted: 1})


def test_config_module_holds_no_method_knob() -> None:
    """The root has what every method shares; STvM's and the mean teacher's knobs are theirs."""
    assert set(AdaptConfig.__dataclass_fields__) == {"method", "bn_init", "data", "optim", "run", "methods"}


def test_resolve_fills_the_chosen_method_section_and_keeps_given_values() -> None:
    cfg, cls = resolve(AdaptConfig().with_overrides({"methods.stvm.mix.tau": 0.6}))
    assert cls.name == "stvm" and cfg.methods["stvm"]["mix"]["tau"] == 0.6
    assert cfg.methods["stvm"]["mix"]["patch"] == 32  # filled with the default
    assert resolve(cfg)[0] == cfg  # resolving twice changes nothing


def test_method_keys_give_each_method_the_options_it_has() -> None:
    plan = {"metric.warmup": 40, "mix.patch": 16, "ema_max": 0.99, "lr": 1e-3}
    assert method_keys("mean_teacher", plan) == {"methods.mean_teacher.ema_max": 0.99}
    assert method_keys("tent", plan) == {"methods.tent.lr": 1e-3}
    assert method_keys("adabn", plan) == {}
    assert set(method_keys("stvm", plan)) == {
        "methods.stvm.metric.warmup",
        "methods.stvm.mix.patch",
        "methods.stvm.ema_max",
    }


def test_a_schema_1_run_config_reads_into_todays_layout() -> None:
    old = {
        "method": "stvm", "student_bn": "train", "deliverable": "teacher",
        "metric": {"warmup": 5}, "reliability": {"normalize": "valid", "mode": "cosine"},
        "mix": {"tau": 0.4}, "aug": {"blur_prob": 0.1}, "optim": {"ema_max": 0.99, "lr": 1e-3},
    }  # fmt: skip
    cfg = migrate(old)
    s = cfg.methods["stvm"]
    assert (s["student_bn"], s["normalize"], s["ema_max"], s["metric"]["warmup"]) == (
        "train",
        "valid",
        0.99,
        5,
    )
    assert (s["reliability"]["mode"], s["mix"]["tau"], s["aug"]["blur_prob"]) == ("cosine", 0.4, 0.1)
    assert cfg.optim.lr == 1e-3
    # A mean-teacher run of schema 1 carried STvM's sections it never read: they are dropped.
    mt = migrate({**old, "method": "mean_teacher"}).methods["mean_teacher"]
    assert "metric" not in mt and mt["ema_max"] == 0.99


def test_round_trip_and_frozen() -> None:
    c, _ = resolve(AdaptConfig().with_overrides({"run.iters": 3}))
    assert resolve(AdaptConfig.from_dict(json.loads(json.dumps(c.to_dict()))))[0] == c
    with pytest.raises(AttributeError):
        c.method = "tent"  # type: ignore[misc]


def test_presets_use_the_method_sections() -> None:
    cfg, _ = resolve(AdaptConfig.preset("stvm_paper"))
    assert cfg.methods["stvm"]["student_bn"] == "train" and cfg.methods["stvm"]["normalize"] == "valid"
