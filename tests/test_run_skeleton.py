"""One run skeleton for offline runs and streams: one versioned checkpoint schema, one summary frame;
run folders written before it still resume, and a folder of the other kind is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import TinySegNet

from stvm_sdk import AdaptConfig, adapt, load_run
from stvm_sdk.errors import ConfigError, DataError
from stvm_sdk.inputs import as_segmodel
from stvm_sdk.stream import StreamConfig
from stvm_sdk.stream.run import adapt_stream

CFG = AdaptConfig().with_overrides(
    {"run.iters": 4, "run.checkpoint_every": 2, "run.log_every": 2, "data.batch_size": 2,
     "data.crop": (32, 64), "methods.stvm.metric.warmup": 1, "methods.stvm.mix.patch": 8}
)  # fmt: skip


def _as_schema_1(run: Path) -> None:
    """Rewrite a finished run folder as the SDK wrote it before the skeleton was shared: root-level
    method knobs in config.json, a checkpoint of {step, world, adapter, optimizer}, no run.json."""
    cfg = json.loads((run / "config.json").read_text())
    stvm = cfg["methods"].pop("stvm")
    cfg["optim"]["ema_max"] = stvm.pop("ema_max")
    cfg.update(student_bn=stvm.pop("student_bn"), deliverable=stvm.pop("deliverable"))
    cfg.update(metric=stvm.pop("metric"), mix=stvm.pop("mix"), aug=stvm.pop("aug"))
    cfg["reliability"] = {**stvm.pop("reliability"), "normalize": stvm.pop("normalize")}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "run.json").unlink()
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    old = {"step": ckpt["step"], "world": 1, "adapter": ckpt["state"]["method"],
           "optimizer": ckpt["state"]["optimizer"]}  # fmt: skip
    torch.save(old, run / "checkpoints" / "last.pt")


def test_checkpoints_of_both_kinds_share_one_versioned_schema(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    adapt(tiny_net, frames[0], config=CFG, out_dir=tmp_path / "a", progress=False)
    source = as_segmodel(TinySegNet(), classifier="classifier")
    adapt_stream(
        source, frames[0], stream_config=StreamConfig(batch_size=2, window=3), out_dir=tmp_path / "s"
    )
    for kind, run in (("adapt", tmp_path / "a"), ("stream", tmp_path / "s")):
        ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert (ckpt["schema"], ckpt["kind"]) == (2, kind)
        assert {"method", "optimizer"} <= set(ckpt["state"]), kind
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["schema"], summary["kind"], summary["run_dir"]) == (2, kind, str(run))
        assert {"model_path", "metrics_path", "method"} <= set(summary)


def test_a_run_folder_of_the_previous_schema_resumes_and_loads(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cut = CFG.with_overrides({"run.iters": 2})
    adapt(tiny_net, frames[0], config=cut, out_dir=run, progress=False)
    _as_schema_1(run)
    # The old folder resumes with today's config (the migrated one compares equal), to 4 steps.
    with pytest.raises(ConfigError, match="the config differs"):  # still refused when it differs
        adapt(tiny_net, frames[0], config=cut.with_overrides({"optim.lr": 1e-3}), out_dir=run, resume=True)
    done = adapt(tiny_net, frames[0], config=cut, out_dir=run, resume=True, progress=False)
    assert done.metrics["steps"] == 2
    loaded = load_run(run, trust_pickle=True)  # a user's own module class: saved as a pickle
    assert loaded.config.methods["stvm"]["metric"]["warmup"] == 1 and "metric" in loaded.extras


def test_a_stream_folder_is_not_resumed_as_an_offline_run_nor_the_reverse(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    source = as_segmodel(TinySegNet(), classifier="classifier")
    adapt_stream(
        source, frames[0], stream_config=StreamConfig(batch_size=2, window=3), out_dir=tmp_path / "s"
    )
    with pytest.raises(ConfigError, match="holds a stream run, not an adapt run") as err:
        adapt(tiny_net, frames[0], config=CFG, out_dir=tmp_path / "s", resume=True, progress=False)
    assert "\n" not in str(err.value)
    adapt(tiny_net, frames[0], config=CFG, out_dir=tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="holds an adapt run, not a stream run"):
        adapt_stream(source, frames[0], out_dir=tmp_path / "a", resume=True)


def test_a_checkpoint_of_a_newer_schema_is_one_line(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    adapt(tiny_net, frames[0], config=CFG.with_overrides({"run.iters": 2}), out_dir=run, progress=False)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**ckpt, "schema": 99}, run / "checkpoints" / "last.pt")
    with pytest.raises(DataError, match="schema 99, newer than this stvm_sdk reads"):
        adapt(tiny_net, frames[0], config=CFG.with_overrides({"run.iters": 2}), out_dir=run, resume=True)
