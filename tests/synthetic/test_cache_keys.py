"""Cache keys of the synthetic benchmark: settings plus fingerprints of what the code produces.

A refactor (moved or reformatted code) must keep every key; a change in what the generator renders or
in how the trainer computes its loss must change them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import stvm_sdk
from stvm_sdk.errors import OutputError
from stvm_sdk.supervised import TrainConfig
from stvm_sdk.synthetic import cache
from stvm_sdk.synthetic import dataset as synthetic

ARCH = "lraspp_mobilenet_v3_large"
TINY = cache.DomainSpec("target", "val", 2, (32, 64), 3)


@pytest.fixture(autouse=True)
def _fresh_fingerprints():
    """Each test computes the fingerprints itself (a patched one must not leak into the next test)."""
    cache.generator_fingerprint.cache_clear()
    cache.trainer_fingerprint.cache_clear()
    yield
    cache.generator_fingerprint.cache_clear()
    cache.trainer_fingerprint.cache_clear()


def _recompute_generator() -> str:
    cache.generator_fingerprint.cache_clear()
    return cache.generator_fingerprint("target")


def _recompute_trainer() -> str:
    cache.trainer_fingerprint.cache_clear()
    return cache.trainer_fingerprint(ARCH)


def test_fingerprints_are_deterministic_and_cached_per_process() -> None:
    gen, trainer = cache.generator_fingerprint("target"), cache.trainer_fingerprint(ARCH)
    assert len(gen) == len(trainer) == 16 and gen != trainer
    assert cache.generator_fingerprint.cache_info().hits == 0
    assert cache.generator_fingerprint("target") == gen and cache.generator_fingerprint.cache_info().hits == 1
    assert cache.generator_fingerprint("fog") != gen  # one key per domain
    assert _recompute_generator() == gen
    assert _recompute_trainer() == trainer
    assert cache.trainer_fingerprint(ARCH, 19, False) != trainer  # full frames: another code path


def test_a_moved_and_reformatted_copy_of_the_package_gives_the_same_keys(tmp_path: Path) -> None:
    """A fresh process importing a relocated copy whose source files differ byte for byte."""
    copy = tmp_path / "moved"
    shutil.copytree(
        Path(stvm_sdk.__file__).parent, copy / "stvm_sdk", ignore=shutil.ignore_patterns("__pycache__")
    )
    edited = [*sorted((copy / "stvm_sdk" / "synthetic").rglob("*.py")), copy / "stvm_sdk" / "supervised.py"]
    for path in edited:
        path.write_text(path.read_text() + "\n# reformatted: this comment changes the file, not the code\n")
    script = (
        "import json, stvm_sdk\n"
        "from stvm_sdk.synthetic import cache\n"
        "print(json.dumps([stvm_sdk.__file__, cache.generator_fingerprint('target'), "
        f"cache.trainer_fingerprint({ARCH!r})]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    where, gen, trainer = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(where).is_relative_to(copy)  # the copy was imported, not the repository
    assert gen == cache.generator_fingerprint("target")
    assert trainer == cache.trainer_fingerprint(ARCH)


def test_generator_fingerprint_follows_the_rendered_pixels_and_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = cache.generator_fingerprint("target")
    render = synthetic.render_frame

    def brighter(*args, **kwargs):
        image, labels = render(*args, **kwargs)
        return np.minimum(image.astype(np.int32) + 1, 255).astype(np.uint8), labels

    def relabelled(*args, **kwargs):
        image, labels = render(*args, **kwargs)
        labels = labels.copy()
        labels[0, 0] = 0 if labels[0, 0] else 7
        return image, labels

    monkeypatch.setattr(synthetic, "render_frame", brighter)
    assert _recompute_generator() != base
    monkeypatch.setattr(synthetic, "render_frame", relabelled)
    assert _recompute_generator() != base
    monkeypatch.undo()
    assert _recompute_generator() == base


def test_trainer_fingerprint_follows_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    import stvm_sdk.supervised as supervised

    base = cache.trainer_fingerprint(ARCH)
    smoothed = functools.partial(supervised.nnf.cross_entropy, label_smoothing=0.1)
    monkeypatch.setattr(supervised.nnf, "cross_entropy", smoothed)
    assert _recompute_trainer() != base
    monkeypatch.undo()
    monkeypatch.setattr(supervised, "_jitter", lambda images, g: images)  # no augmentation
    assert _recompute_trainer() != base
    monkeypatch.undo()
    assert _recompute_trainer() == base


def test_trainer_fingerprint_leaves_the_callers_state_alone(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(123)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    with caplog.at_level(logging.INFO, logger="stvm_sdk"):
        cache.trainer_fingerprint(ARCH)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert not [r for r in caplog.records if r.name == "stvm_sdk" and r.levelno < logging.WARNING]
    assert not logging.getLogger("stvm_sdk").filters


def test_ensure_domain_is_keyed_by_settings_and_generator_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = cache.ensure_domain(TINY, tmp_path)
    meta = json.loads((root / "meta.json").read_text())
    assert meta == json.loads(json.dumps(cache.domain_meta(TINY)))
    assert meta["generator"] == cache.generator_fingerprint("target")
    assert meta["generator_version"] == synthetic.GENERATOR_VERSION
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert cache.ensure_domain(TINY, tmp_path) == root and (root / "meta.json").stat().st_mtime_ns == stamp

    monkeypatch.setattr(cache, "generator_fingerprint", lambda _domain: "another-output")
    assert cache.ensure_domain(TINY, tmp_path) == root
    assert json.loads((root / "meta.json").read_text())["generator"] == "another-output"  # regenerated


def test_an_entry_the_sdk_did_not_make_is_never_deleted(tmp_path: Path) -> None:
    theirs = tmp_path / "data" / TINY.key / "notes.txt"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("mine")
    with pytest.raises(OutputError, match="not made by stvm_sdk"):
        cache.ensure_domain(TINY, tmp_path)
    assert theirs.read_text() == "mine"


def test_ensure_trained_is_keyed_by_settings_and_both_fingerprints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrainConfig(arch=ARCH, iters=1, batch_size=1, crop=None, device="cpu", precise_bn_frames=1)
    model = cache.ensure_trained(TINY, cfg, tmp_path, progress=False)
    meta = json.loads((model.parent / "meta.json").read_text())
    assert meta["trainer"] == cache.trainer_fingerprint(ARCH, 19, False)
    assert meta["generator"] == cache.generator_fingerprint("target")
    assert meta["train"]["iters"] == 1 and meta["data"]["domain"] == "target"
    stamp = model.stat().st_mtime_ns
    assert cache.ensure_trained(TINY, cfg, tmp_path, progress=False) == model
    assert model.stat().st_mtime_ns == stamp  # reused

    import stvm_sdk.supervised as supervised

    trained: list[Path] = []
    monkeypatch.setattr(supervised, "train_source", lambda _i, _l, out, *_a, **_k: trained.append(Path(out)))
    monkeypatch.setattr(cache, "trainer_fingerprint", lambda *_: "another-trainer")
    assert cache.ensure_trained(TINY, cfg, tmp_path, progress=False) == model
    assert trained == [model]  # retrained under the new key
    assert json.loads((model.parent / "meta.json").read_text())["trainer"] == "another-trainer"
    monkeypatch.undo()
    other = cache.trained_meta(TINY, replace(cfg, lr=1e-3))
    assert other["trainer"] == meta["trainer"] and other["train"]["lr"] == 1e-3  # settings stay in the key
