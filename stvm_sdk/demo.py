"""`stvm demo`: the whole product on the built-in synthetic benchmark, end to end.

generate data (cached) -> train a source model (cached) -> adapt it with STvM on unlabeled target
frames -> evaluate before/after on held-out labelled target frames -> export to ONNX and verify it
against PyTorch -> benchmark eager PyTorch vs ONNX Runtime -> one summary with every file's path.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stvm_sdk.boundary.outputs import claim_dir
from stvm_sdk.config import AdaptConfig
from stvm_sdk.errors import ConfigError
from stvm_sdk.supervised import TrainConfig
from stvm_sdk.synthetic.cache import DEFAULT_CACHE, DomainSpec, ensure_domain, ensure_trained

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo: ``quick`` for tests, the full one for ``stvm demo`` (its measured time and
    mIoU are in the README's first section)."""

    arch: str = "lraspp_mobilenet_v3_large"
    domain: str = "target"
    size: tuple[int, int] = (128, 256)
    n_source: int = 400
    n_target: int = 300
    n_val: int = 60
    source_iters: int = 500  # training the source model is most of the demo's time
    # The accuracy benchmark's schedule: on this benchmark longer runs end lower (metric reliability
    # saturates; benchmarks/results/accuracy_tuning.md), so more steps would cost time and accuracy.
    adapt_iters: int = 120
    warmup: int = 30
    bench_iters: int = 20
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            size=(96, 192), n_source=120, n_target=80, n_val=24, source_iters=150, adapt_iters=50, warmup=15,
            bench_iters=5,
        )  # fmt: skip

    def adapt_config(self) -> AdaptConfig:
        h, w = self.size
        return AdaptConfig(method="stvm").with_overrides(
            {"run.iters": self.adapt_iters, "methods.stvm.metric.warmup": self.warmup, "data.crop": (h, w),
             "data.batch_size": 4, "run.seed": self.seed, "run.log_every": 10, "run.checkpoint_every": 50,
             "methods.stvm.mix.patch": max(8, h // 8)}
        )  # fmt: skip

    def train_config(self) -> TrainConfig:
        return TrainConfig(arch=self.arch, iters=self.source_iters, batch_size=8, crop=None, seed=self.seed)


def _adapt(source: Path, target: Path, cfg: AdaptConfig, adapt_dir: Path, progress: bool, say: Say) -> Any:
    """Adapt, continuing an interrupted demo run when it is this one (same config, same inputs).

    An earlier demo's run with other settings or another source model is the demo's own scratch
    output (inside the folder the demo claimed): it is replaced, not an error.
    """
    from stvm_sdk.api import adapt
    from stvm_sdk.rundir import RunDir

    resume = RunDir(adapt_dir).checkpoint.is_file()
    try:
        return adapt(source, target, config=cfg, out_dir=adapt_dir, progress=progress, resume=resume)
    except ConfigError as exc:
        if not resume:
            raise
        say(f"{adapt_dir}: an earlier demo run with other settings ({str(exc)[:80]}...); starting afresh")
    shutil.rmtree(adapt_dir)
    return adapt(source, target, config=cfg, out_dir=adapt_dir, progress=progress)


def run_demo(
    settings: DemoSettings,
    *,
    cache: Path = DEFAULT_CACHE,
    out_dir: Path = Path("runs/demo"),
    progress: bool = True,
    say: Say = lambda _m: None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run every stage; return the summary (``miou_before``, ``miou_after``, paths, timings).

    ``fresh`` starts the adaptation over instead of continuing an interrupted one.
    """
    claim_dir(out_dir, "demo", what="--out")  # never a user's folder: the demo deletes its own runs
    if fresh:
        shutil.rmtree(out_dir / "adapt", ignore_errors=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    s = settings
    source_spec = DomainSpec("source", "train", s.n_source, s.size, s.seed)
    target_root = ensure_domain(DomainSpec(s.domain, "train", s.n_target, s.size, s.seed), cache)
    val_root = ensure_domain(DomainSpec(s.domain, "val", s.n_val, s.size, s.seed), cache)
    say(f"data: {target_root} (unlabeled for adaptation), {val_root} (held-out labels)")
    timings["data_s"] = time.perf_counter() - t0
    source_path = ensure_trained(source_spec, s.train_config(), cache, progress=progress)
    timings["source_model_s"] = time.perf_counter() - t0 - sum(timings.values())
    say(f"source model: {source_path}")
    result = _adapt(source_path, target_root, s.adapt_config(), out_dir / "adapt", progress, say)
    timings["adapt_s"] = time.perf_counter() - t0 - sum(timings.values())
    from stvm_sdk.data.frames import scan_frames
    from stvm_sdk.eval import evaluate
    from stvm_sdk.figures import run_figures
    from stvm_sdk.models import load_model

    source_model = load_model(source_path)
    before = evaluate(source_model, val_root, val_root)
    after = evaluate(result.model, val_root, val_root)
    figures = run_figures(result, source_model, scan_frames(val_root, val_root))  # held-out frames
    say(f"figures (frame panels, curves): {figures}")
    timings["eval_s"] = time.perf_counter() - t0 - sum(timings.values())
    export = _export(result.model_path, val_root, out_dir / "export", s)
    timings["export_s"] = time.perf_counter() - t0 - sum(timings.values())
    bench = _bench(result.model_path, Path(export["onnx_path"]), s)
    timings["bench_s"] = time.perf_counter() - t0 - sum(timings.values())
    return {
        "miou_before": before.miou, "miou_after": after.miou,
        "per_class_iou": {"before": before.per_class_iou, "after": after.per_class_iou},
        "val_frames": after.n_images, "source_model": str(source_path), "run_dir": str(result.run_dir),
        "model_path": str(result.model_path), "figures_dir": str(figures), "onnx_path": export["onnx_path"],
        "sidecar_path": export["sidecar_path"], "verification": export["verification"], "bench": bench,
        "settings": dict(settings.__dict__), "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - t0, 1), "label_free": result.metrics.get("label_free"),
    }  # fmt: skip


def _export(model_path: Path, frames: Path, out: Path, s: DemoSettings) -> dict[str, Any]:
    from stvm_sdk.export.pipeline import ExportOptions, export_model
    from stvm_sdk.models import load_model

    opts = ExportOptions(
        out_dir=out, name="model", calib=frames, labels=frames, shape=f"{s.size[0]}x{s.size[1]}"
    )
    report = export_model(load_model(model_path), opts, source=model_path)
    return report.to_dict()


def _bench(model_path: Path, onnx_path: Path, s: DemoSettings) -> list[dict[str, Any]]:
    from stvm_sdk.bench.run import bench_models

    report = bench_models(
        [model_path, onnx_path], backends="torch,ort", shape=s.size, warmup=3, iters=s.bench_iters, edge=False
    )
    return [r.to_dict() for r in report.rows]
