"""Bench tables: every row says what tells it from the others; ONNX Runtime does not spin between
backends; matplotlib's own log lines stay off the user's terminal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from stvm_sdk.cli.app import app
from torch import nn
from typer.testing import CliRunner

from stvm_sdk.bench import run as bench_run
from stvm_sdk.bench.run import bench_models
from stvm_sdk.export.onnx import export_onnx
from stvm_sdk.models import from_module
from stvm_sdk.runners.dispatch import open_runner
from stvm_sdk.runners.ort import FORCE_SPINNING_STOP, no_spinning_after_run

HW = (32, 48)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A static and a dynamic ONNX export of the same tiny model."""
    torch.manual_seed(0)
    model = from_module(_Net().eval(), num_classes=4, classifier="classifier")
    d = tmp_path_factory.mktemp("rows")
    static = export_onnx(model, d / "static.onnx", dynamic=False, example_hw=HW).path
    return static, export_onnx(model, d / "dynamic.onnx", example_hw=HW).path


def _spin_stop(runner: Any) -> str | None:
    try:
        return str(runner.session.get_session_options().get_session_config_entry(FORCE_SPINNING_STOP))
    except RuntimeError:  # not set: ORT's default (spinning after a run)
        return None


def test_static_and_dynamic_rows_say_which_is_which_and_ort_stops_spinning(
    graphs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    timed: list[Any] = []
    real = bench_run.measure_interleaved

    def spy(runners: list[Any], *args: Any, **kwargs: Any) -> Any:
        timed.extend(runners)
        return real(runners, *args, **kwargs)

    monkeypatch.setattr(bench_run, "measure_interleaved", spy)
    report = bench_models(list(graphs), backends="ort", shape=HW, warmup=1, iters=3, edge=False)
    labels = [r.label for r in report.rows]
    assert labels == [
        f"static.onnx (ONNX Runtime, fp32, static {HW[0]}x{HW[1]})",
        "dynamic.onnx (ONNX Runtime, fp32, dynamic)",
    ]
    assert [r.variant for r in report.rows] == [f"static {HW[0]}x{HW[1]}", "dynamic"]
    assert [r.to_dict()["label"] for r in report.rows] == labels  # in --json too
    assert [_spin_stop(r) for r in timed] == ["1", "1"]  # bench sessions stop spinning after a run
    assert _spin_stop(open_runner(graphs[1], "ort")) is None  # other sessions keep ORT's default


def test_rows_the_same_but_for_the_file_or_nothing_still_differ(graphs: tuple[Path, Path]) -> None:
    from stvm_sdk.bench.timing import Stats, label_rows

    def row(model: str, **facts: Any) -> Stats:
        return Stats("ort", "fp32", model, 1, 1.0, 1.0, 1.0, 1.0, 1.0, None, "cpu", **facts)

    same = dict(shape="dynamic", exporter="legacy, opset 17")
    rows = label_rows([row("model.pt", origin="exported on the fly", **same), row("model.onnx", **same)])
    assert [r.label for r in rows] == [
        "model.pt (ONNX Runtime, fp32, exported on the fly)",
        "model.onnx (ONNX Runtime, fp32)",
    ]
    twice = label_rows([row("m.onnx", **same), row("m.onnx", **same)])
    assert [r.label for r in twice] == ["ONNX Runtime, fp32 #1", "ONNX Runtime, fp32 #2"]
    with no_spinning_after_run():
        assert _spin_stop(open_runner(graphs[0], "ort")) == "1"


def test_bench_cli_json_rows_carry_their_labels(graphs: tuple[Path, Path]) -> None:
    args = ["bench", *map(str, graphs), "--shape", f"{HW[0]}x{HW[1]}", "--iters", "2", "--warmup", "1"]
    res = CliRunner().invoke(app, [*args, "--no-edge", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout.strip().splitlines()[-1])["rows"]
    assert [(r["shape"], r["exporter"], r["origin"]) for r in rows] == [
        (f"static {HW[0]}x{HW[1]}", "opset 17", None),  # no sidecar: the exporter is not known
        ("dynamic", "opset 17", None),
    ]
    assert len({r["label"] for r in rows}) == 2


def test_matplotlib_font_manager_logs_nothing_at_the_cli_level(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from stvm_sdk.figures import quiet_matplotlib

    # HOME cannot hold matplotlib's cache (it is under a file): MPLCONFIGDIR goes to our own folder.
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "file" / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("MPLCONFIGDIR", "")
    quiet_matplotlib()
    mpl_dir = Path(os.environ["MPLCONFIGDIR"])
    assert mpl_dir.parent == Path(tempfile.gettempdir()) and os.access(mpl_dir, os.W_OK)
    for level in (logging.INFO, logging.WARNING):  # the CLI logs at INFO (stvm demo, adapt, stream)
        assert not logging.getLogger("matplotlib.font_manager").isEnabledFor(level)


def test_a_font_cache_rebuild_prints_nothing(tmp_path: Path) -> None:
    # A fresh MPLCONFIGDIR makes matplotlib rebuild its font cache, which it logs at INFO.
    code = (
        "import logging; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from stvm_sdk.figures import _pyplot\n"
        "plt = _pyplot(); plt.subplots(); import matplotlib.font_manager as fm; fm._load_fontmanager()\n"
    )
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mpl").is_dir() and any((tmp_path / "mpl").glob("fontlist*.json"))
    assert done.stdout == "" and "font" not in done.stderr.lower(), done.stderr


def test_a_static_graph_at_another_shape_is_one_line(graphs: tuple[Path, Path]) -> None:
    res = CliRunner().invoke(app, ["bench", str(graphs[0]), "--shape", "64x64", "--iters", "1", "--no-edge"])
    assert res.exit_code == 2 and res.output.strip() == (
        f"error: static.onnx is a static graph for {HW[0]}x{HW[1]} images: bench it with --shape "
        f"{HW[0]}x{HW[1]}"
    ), res.output
