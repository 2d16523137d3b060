"""adapt(): the caller's model is untouched, runs are deterministic, outputs reload."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

from stvm_sdk import AdaptConfig, adapt, load_model
from stvm_sdk.errors import DataError, DivergedError, ModelLoadError
from stvm_sdk.methods import resolve

TINY = {
    "run.iters": 4,
    "methods.stvm.metric.warmup": 1,
    "data.batch_size": 2,
    "data.crop": [32, 64],
    "run.log_every": 2,
    "run.checkpoint_every": 2,
    "methods.stvm.mix.patch": 8,
}


def _cfg(**over: object) -> AdaptConfig:
    return AdaptConfig().with_overrides({**TINY, **over})


def test_adapt_leaves_the_source_model_untouched(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    tiny_net.train()
    before = copy.deepcopy(tiny_net.state_dict())
    result = adapt(tiny_net, frames[0], config=_cfg(), out_dir=tmp_path / "run", progress=False)
    for k, v in tiny_net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert tiny_net.training and all(p.requires_grad for p in tiny_net.parameters())
    assert result.model.module is not tiny_net
    # ...and the adapted model did change.
    assert any(not torch.equal(v, before[k]) for k, v in result.student.module.state_dict().items())


def test_adapt_leaves_a_source_file_untouched(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    digest = hashlib.sha256(lraspp_checkpoint.read_bytes()).hexdigest()
    result = adapt(
        lraspp_checkpoint, frames[0], config=_cfg(**{"run.iters": 2}), out_dir=tmp_path / "r", progress=False
    )
    assert hashlib.sha256(lraspp_checkpoint.read_bytes()).hexdigest() == digest
    reloaded = load_model(result.model_path)
    assert reloaded.arch == "lraspp_mobilenet_v3_large" and reloaded.class_names[0] == "road"


def test_same_seed_same_weights(tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path) -> None:
    a = adapt(tiny_net, frames[0], config=_cfg(), out_dir=tmp_path / "a", progress=False)
    b = adapt(tiny_net, frames[0], config=_cfg(), out_dir=tmp_path / "b", progress=False)
    c = adapt(tiny_net, frames[0], config=_cfg(**{"run.seed": 1}), out_dir=tmp_path / "c", progress=False)
    sa, sb, sc = (r.student.module.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_run_directory_holds_config_metrics_checkpoint_and_models(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    result = adapt(
        tiny_net, frames[0], labels_dir=frames[1], config=_cfg(), out_dir=tmp_path / "run", progress=False
    )
    run = result.run_dir
    assert (
        resolve(AdaptConfig.from_dict(json.loads((run / "config.json").read_text())))[0] == resolve(_cfg())[0]
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]  # a record every run.log_every steps
    # and the label-free signals of every candidate: the start, 1, 2, 3 (run.candidates = 4) and the end
    assert [r["step"] for r in records if "label_free" in r] == [0, 1, 2, 3, 4]
    for key in ("loss", "loss_metric", "mean_weight", "pseudo_hist", "lr", "images_per_s"):
        assert key in records[-1], key
    assert len(records[-1]["pseudo_hist"]) == 5 and "loss_st" in records[-1]
    assert (run / "checkpoints" / "last.pt").is_file()
    for name in ("model.pt", "teacher.pt", "student.pt", "summary.json"):
        assert (run / name).is_file(), name
    m = result.metrics
    assert m["steps"] == 4 and m["frames_used"] == 6 and m["images_skipped"]["total"] == 0
    assert 0 <= m["miou_before"] <= 100 and 0 <= m["miou_after"] <= 100
    assert set(m["per_class_iou"]) == {"before", "after"}
    # One versioned frame for every run's summary; a renamed key keeps its old name for one version.
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["schema"], summary["kind"], summary["run_dir"]) == (2, "adapt", str(run))
    assert summary["images_used"] == summary["frames_used"] and "images_used" in summary["deprecated"]
    assert json.loads((run / "run.json").read_text())["kind"] == "adapt"
    # A Python caller gets the figures the README promises for a run with labels.
    assert (Path(m["figures_dir"]) / "curves.png").is_file()


@pytest.mark.parametrize("method", ["source_only", "adabn"])
def test_methods_without_training_save_the_right_model(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    result = adapt(tiny_net, frames[0], config=_cfg(method=method), out_dir=tmp_path / method, progress=False)
    assert result.metrics["steps"] == 0
    src_mean = tiny_net.state_dict()["backbone.1.running_mean"]
    out_mean = result.model.module.state_dict()["backbone.1.running_mean"]
    assert torch.equal(src_mean, out_mean) == (method == "source_only")


def test_existing_run_needs_resume_and_resume_needs_same_config(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    adapt(tiny_net, frames[0], config=_cfg(), out_dir=tmp_path / "run", progress=False)
    with pytest.raises(DataError, match="--resume"):
        adapt(tiny_net, frames[0], config=_cfg(), out_dir=tmp_path / "run", progress=False)
    from stvm_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="config differs"):
        adapt(
            tiny_net,
            frames[0],
            config=_cfg(**{"run.iters": 9}),
            out_dir=tmp_path / "run",
            resume=True,
            progress=False,
        )


def test_wrong_class_count_is_rejected(tiny_net: torch.nn.Module, frames: tuple[Path, Path]) -> None:
    with pytest.raises(ModelLoadError, match="outputs 5 classes but --num-classes is 19"):
        adapt(tiny_net, frames[0], config=_cfg(), num_classes=19, progress=False)


@pytest.mark.parametrize(
    "when",
    [{"run.log_every": 1}, {"run.log_every": 100, "run.checkpoint_every": 1}],
    ids=["at-log-record", "at-checkpoint"],
)
def test_divergence_stops_with_one_actionable_error_and_saves_nothing(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path, when: dict[str, int]
) -> None:
    out = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"diverged at step \d+ \(loss (nan|inf)\).*optim.lr") as err:
        adapt(tiny_net, frames[0], config=_cfg(**{"optim.lr": 1e12, **when}), out_dir=out)
    assert "\n" not in str(err.value)
    assert not (out / "model.pt").exists() and not (out / "student.pt").exists()
    ckpt = out / "checkpoints" / "last.pt"
    if ckpt.exists():  # a checkpoint from before the divergence holds only finite numbers
        state = torch.load(ckpt, weights_only=True)["state"]["method"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_snapshots_keep_the_deliverable_at_the_steps_asked_for(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    """``run.snapshots``: the deliverable after step 1 and 2 of 4 is saved and listed; a snapshot at
    the last step is the run's model itself; the step-2 snapshot differs from the final model."""
    cfg = _cfg(**{"method": "mean_teacher", "run.snapshots": [1, 2, 4]})
    result = adapt(lraspp_checkpoint, frames[0], config=cfg, out_dir=tmp_path / "run", progress=False)
    listed = result.metrics["snapshots"]
    assert [s["step"] for s in listed] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == [
        "step_000001.safetensors",
        "step_000002.safetensors",
    ]
    two = load_model(listed[1]["path"]).module.state_dict()
    final = result.model.module.state_dict()
    assert two.keys() == final.keys()
    assert any(not torch.equal(two[k], final[k]) for k in final if final[k].is_floating_point())
    with pytest.raises(Exception, match="run.snapshots must be increasing"):
        _cfg(**{"run.snapshots": [2, 1]})
