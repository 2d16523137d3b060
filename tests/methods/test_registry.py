"""The method registry: built-in methods found by name, methods' own options, and a user's method
(examples/custom_method.py) running through the same loop, checkpoints, resume, processes and export."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from stvm_sdk.cli.app import app
from support import make_frames
from typer.testing import CliRunner

from stvm_sdk import AdaptConfig, adapt
from stvm_sdk.errors import ConfigError
from stvm_sdk.methods import get_method, ladder, method_names, register_method, resolve, unregister_method
from stvm_sdk.methods.base import Method
from stvm_sdk.methods.registry import builtin_names

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_method.py"
LADDER = (
    "source_only", "adabn", "bn_mix", "tent", "soft_teacher", "threshold_st", "mean_teacher",
    "confidence_weighted", "stvm_no_mocm", "stvm",
)  # fmt: skip


@pytest.fixture
def custom() -> Iterator[ModuleType]:
    """examples/custom_method.py imported (its method registered) for one test."""
    spec = importlib.util.spec_from_file_location("custom_method_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        unregister_method("entropy_weighted")
        del sys.modules[spec.name]


def test_every_builtin_module_registers_the_method_named_after_it() -> None:
    assert set(builtin_names()) == set(LADDER)
    for name in builtin_names():
        cls = get_method(name)
        assert issubclass(cls, Method) and cls.name == name and cls.__module__ == f"stvm_sdk.methods.{name}"
        assert cls.summary and cls.updates, f"{name} needs a summary and what it updates (stvm methods)"
    assert [c.name for c in ladder()] == list(LADDER)  # the table order: baselines first, STvM last
    assert [c.name for c in ladder() if not c.trains()] == ["source_only", "adabn", "bn_mix"]


def test_method_names_are_read_without_importing_torch() -> None:
    code = "import sys, stvm_sdk.methods as m; print(m.method_names()); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[1] == "False", out


def test_an_unknown_method_is_one_line_naming_the_nearest() -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'stvn': choose one of .*; did you mean 'stvm'\?"):
        resolve(AdaptConfig(method="stvn"))


def test_a_methods_options_are_its_own_config_section(tmp_path: Path) -> None:
    assert resolve(AdaptConfig(method="tent"))[0].methods["tent"] == {"lr": 1e-4}
    assert AdaptConfig().methods == {}  # as read: filled with the defaults when resolved
    assert "mix" in resolve(AdaptConfig())[0].methods["stvm"]  # STvM's metric/reliability/mix are its own
    cfg = AdaptConfig().with_overrides({"method": "threshold_st", "methods.threshold_st.keep": 0.3})
    assert resolve(cfg)[0].methods["threshold_st"]["keep"] == 0.3
    f = tmp_path / "c.toml"
    f.write_text('method = "tent"\n[methods.tent]\nlr = 0.001\n')
    loaded = resolve(AdaptConfig.from_file(f))[0]
    assert (
        loaded.methods["tent"]["lr"] == 0.001
        and resolve(AdaptConfig.from_dict(loaded.to_dict()))[0] == loaded
    )
    with pytest.raises(ConfigError, match="unknown config key.*methods.tent.betas"):
        resolve(AdaptConfig.from_dict({"method": "tent", "methods": {"tent": {"betas": 1}}}))
    with pytest.raises(ConfigError, match="methods.threshold_st.keep must be in"):
        resolve(AdaptConfig.from_dict({"method": "threshold_st", "methods": {"threshold_st": {"keep": 0}}}))
    with pytest.raises(ConfigError, match="method adabn has no options"):
        resolve(AdaptConfig.from_dict({"methods": {"adabn": {"x": 1}}}))
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        resolve(AdaptConfig().with_overrides({"methods.nope.x": 1}))


def test_a_subclass_options_extend_the_options_its_base_reads() -> None:
    from dataclasses import dataclass

    from stvm_sdk.methods.mean_teacher import MeanTeacher

    @dataclass(frozen=True)
    class Loose:
        power: float = 1.0

    with pytest.raises(TypeError, match="must subclass MeanTeacherOptions"):
        register_method(type("Bad", (MeanTeacher,), {"Options": Loose}), name="bad_options")


def test_register_method_refuses_what_is_not_a_method_or_takes_a_name_twice(custom: ModuleType) -> None:
    with pytest.raises(TypeError, match="subclass of stvm_sdk.methods.Method"):
        register_method(object)
    with pytest.raises(ValueError, match="already registered"):
        register_method(type("Other", (Method,), {}), name="entropy_weighted")
    with pytest.raises(ValueError, match="built-in"):
        unregister_method("stvm")
    assert method_names()[-1] == "entropy_weighted"


def test_stvm_methods_lists_every_method_with_its_options(custom: ModuleType) -> None:
    res = CliRunner().invoke(app, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["methods"]}
    cw = LADDER.index("confidence_weighted")
    assert list(rows) == [*LADDER[: cw + 1], "entropy_weighted", *LADDER[cw + 1 :]]
    assert rows["tent"]["options"] == {"lr": 1e-4} and rows["stvm"]["torchscript"] is False
    assert rows["entropy_weighted"]["options"]["power"] == 1.0


def test_readme_lists_every_builtin_method_in_table_order() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = re.findall(r"^\| `(\w+)` \|", readme, flags=re.M)
    assert [n for n in listed if n in set(builtin_names())] == [c.name for c in ladder()], listed


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]["method"]


def test_a_users_method_runs_through_the_loop_resume_evaluation_and_export(
    custom: ModuleType, lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    from stvm_sdk.export.pipeline import ExportOptions, export_model

    cfg = AdaptConfig(method="entropy_weighted").with_overrides({
        "methods.entropy_weighted.power": 2.0, "methods.entropy_weighted.student_bn": "train",
        "data.batch_size": 2,
        "data.crop": (32, 64), "run.iters": 4, "run.checkpoint_every": 2, "run.log_every": 1,
    })  # fmt: skip
    full = adapt(lraspp_checkpoint, frames[0], config=cfg, labels_dir=frames[1], out_dir=tmp_path / "full")
    assert full.metrics["method"] == "entropy_weighted" and full.metrics["steps"] == 4
    assert "miou_after" in full.metrics and full.metrics["deliverable"] == "teacher"
    section = json.loads((tmp_path / "full" / "config.json").read_text())["methods"]["entropy_weighted"]
    assert (section["power"], section["student_bn"], section["normalize"]) == (2.0, "train", "class_sqrt")

    def stop_after_the_first_checkpoint(record: dict) -> None:
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        adapt(
            lraspp_checkpoint,
            frames[0],
            config=cfg,
            out_dir=tmp_path / "cut",
            on_log=stop_after_the_first_checkpoint,
        )
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    adapt(lraspp_checkpoint, frames[0], config=cfg, out_dir=tmp_path / "cut", resume=True)
    a, b = _state(tmp_path / "full"), _state(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the uninterrupted one"

    report = export_model(
        full.model, ExportOptions(out_dir=tmp_path / "export", shape="32x64", verify_frames=2)
    )
    assert report.artifacts[0].verification.passed


def test_a_users_method_runs_in_two_processes(
    custom: ModuleType, lraspp_checkpoint: Path, tmp_path: Path
) -> None:
    images, _ = make_frames(tmp_path / "data")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "method": "entropy_weighted", "methods": {"entropy_weighted": {"student_bn": "train"}},
        "data": {"batch_size": 2, "crop": [32, 64]},
        "run": {"iters": 2, "log_every": 1},
    }))  # fmt: skip
    dump = tmp_path / "dump"
    dump.mkdir()
    worker = Path(__file__).resolve().parents[1] / "dist_worker.py"
    args = [str(lraspp_checkpoint), str(images), str(tmp_path / "run"), str(dump), str(config), str(EXAMPLE)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(worker),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for net in ("student", "teacher"):
        assert all(torch.equal(r0[net][k], r1[net][k]) for k in r0[net]), net
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "entropy_weighted" and summary["processes"] == 2
