"""Cached synthetic benchmark assets: generated domains and trained source/oracle models.

The demo and the accuracy benchmark share these so a second run reuses the first one's data and
models. A cache entry is valid when its ``meta.json`` matches the request exactly; it is written
last, so an interrupted generation or training is redone, never half-used.

What an entry is keyed by (its ``meta.json``):

- its settings: the :class:`DomainSpec` fields, and for a model also the training settings
  (the ``TrainConfig`` fields);
- ``generator``: :func:`generator_fingerprint` of the entry's domain, a hash of a few tiny frames and
  labels the generator writes for that domain with fixed seeds (so adding or changing another domain
  keeps the entry), plus ``GENERATOR_VERSION`` (bumped by hand for a change that those frames
  might not show);
- ``trainer`` (models only): :func:`trainer_fingerprint`, a hash of the weights a two-step training
  run of the same architecture produces on a tiny fixed data set.

Both fingerprints are computed from what the code *produces*, never from its source text: moving,
renaming or reformatting code keeps every entry, while a change in what is rendered or in how
training computes its loss or steps its weights gives new keys, and the affected entries are rebuilt.
They are exact hashes of this machine's arithmetic (computed on the CPU, single-threaded, whatever
the caller's device and thread settings), so a cache copied to a machine whose numerics differ may be
rebuilt there, never misused. Each is computed once per process.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stvm_sdk.boundary.outputs import claim_dir, read_marker, write_json_atomic
from stvm_sdk.errors import OutputError

if TYPE_CHECKING:
    from stvm_sdk.supervised import TrainConfig

DEFAULT_CACHE = Path(".stvm_cache")

# What the fingerprints render and train: small enough to take about a second, large enough that the
# frames hold the street classes and the network sees real gradients.
_PROBE_SIZE = (48, 96)
_PROBE_FRAMES = 2
_PROBE_SPLITS = ("train", "val")
_PROBE_CROP = (32, 64)


@dataclass(frozen=True)
class DomainSpec:
    """One generated split of one domain."""

    domain: str
    split: str
    n: int
    size: tuple[int, int]
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.domain}-{self.split}-{self.n}-{self.size[0]}x{self.size[1]}-s{self.seed}"


def _hash_frames(root: Path, digest: Any) -> None:
    """Feed the decoded pixels of every PNG under ``root`` (with its relative path) into ``digest``.

    Decoded pixels, not file bytes: another zlib or PIL build may compress the same image differently.
    """
    import numpy as np
    from PIL import Image

    for path in sorted(root.rglob("*.png")):
        with Image.open(path) as img:
            pixels = np.asarray(img)
            mode = img.mode
        digest.update(f"{path.relative_to(root).as_posix()}|{mode}|{pixels.shape}|{pixels.dtype}\n".encode())
        digest.update(np.ascontiguousarray(pixels).tobytes())


@functools.cache
def generator_fingerprint(domain: str) -> str:
    """A hash of what the generator writes for ``domain``: its cached data (and the models trained on
    it) are regenerated whenever that changes.

    Renders ``_PROBE_FRAMES`` frames of ``domain`` for each of ``_PROBE_SPLITS`` at ``_PROBE_SIZE``
    with seed 0, written by :func:`~stvm_sdk.synthetic.dataset.generate` exactly as a cached data set
    is, and hashes the decoded images and label maps with their file names. The generator's source
    files are never read. Computed once per process and domain (``cache_clear()`` recomputes).
    """
    from stvm_sdk.synthetic.dataset import generate

    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="stvm_fingerprint_") as tmp:
        root = Path(tmp) / "data"
        for split in _PROBE_SPLITS:
            generate(root, domain, _PROBE_FRAMES, seed=0, size=_PROBE_SIZE, split=split, workers=1)
        _hash_frames(root, digest)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _quiet_and_isolated() -> Iterator[None]:
    """Single-threaded CPU arithmetic, the caller's RNG and thread count kept, the SDK's info lines off.

    One thread makes the result independent of how many threads the caller uses (a parallel
    reduction sums in another order); the training run reseeds the global generator and logs where it
    saved its throwaway model, neither of which the caller should see.
    """
    import torch

    threads = torch.get_num_threads()
    logger = logging.getLogger("stvm_sdk")

    def drop_info(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    logger.addFilter(drop_info)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.set_num_threads(1)
            yield
    finally:
        torch.set_num_threads(threads)
        logger.removeFilter(drop_info)


@functools.cache
def trainer_fingerprint(arch: str, num_classes: int = 19, cropped: bool = True) -> str:
    """A hash of what supervised training produces for ``arch``: models are retrained when it changes.

    Runs the real :func:`~stvm_sdk.supervised.train_source` for two steps (batch 2, seed 0, random
    crops when ``cropped``, BN re-estimation on two frames) on a tiny generated source data set, on
    the CPU with one thread, and hashes the resulting weights and buffers. They depend on the initial
    weights, the augmentation, the loss and its gradients, the optimiser and its schedule, so a change
    to any of them changes the hash; the trainer's source files are never read. Computed once per
    process and argument set (``cache_clear()`` recomputes).
    """
    import numpy as np

    from stvm_sdk.supervised import TrainConfig, train_source
    from stvm_sdk.synthetic.dataset import generate

    cfg = TrainConfig(
        arch=arch,
        num_classes=num_classes,
        iters=2,
        batch_size=2,
        crop=_PROBE_CROP if cropped else None,
        seed=0,
        device="cpu",
        precise_bn_frames=2,
    )
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="stvm_fingerprint_") as tmp, _quiet_and_isolated():
        data = generate(Path(tmp) / "data", "source", 3, seed=0, size=_PROBE_SIZE, workers=1)
        model = train_source(data, data, Path(tmp) / "model.pt", cfg, progress=False)
        for name, tensor in model.module.state_dict().items():
            values = np.ascontiguousarray(tensor.detach().cpu().numpy())
            digest.update(f"{name}|{values.shape}|{values.dtype}\n".encode())
            digest.update(values.tobytes())
    return digest.hexdigest()[:16]


def _valid(path: Path, meta: dict[str, Any]) -> bool:
    f = path / "meta.json"
    try:
        return f.is_file() and json.loads(f.read_text()) == json.loads(json.dumps(meta))
    except ValueError:
        return False  # cut short by a kill: redo the entry


def _discard(path: Path, kind: str) -> None:
    """Remove a stale cache entry, but only one the SDK wrote (its marker or its meta.json)."""
    if not path.exists():
        return
    ours = read_marker(path) is not None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        ours = ours or json.loads((path / "meta.json").read_text()).get("kind") == kind
    if not ours and any(path.iterdir()):
        raise OutputError(
            f"{path} is in the way of the cache and was not made by stvm_sdk: move it, or pass "
            "another --cache"
        )
    shutil.rmtree(path)


def _generator_key(domain: str) -> dict[str, str]:
    from stvm_sdk.synthetic.dataset import GENERATOR_VERSION

    return {"generator": generator_fingerprint(domain), "generator_version": GENERATOR_VERSION}


def domain_meta(spec: DomainSpec) -> dict[str, Any]:
    """The ``meta.json`` a generated domain is cached under: its settings and the generator's key."""
    return {"kind": "synthetic", **asdict(spec), **_generator_key(spec.domain)}


def trained_meta(data: DomainSpec, cfg: TrainConfig) -> dict[str, Any]:
    """The ``meta.json`` a trained model is cached under: data and training settings, both fingerprints."""
    trainer = trainer_fingerprint(cfg.arch, cfg.num_classes, cfg.crop is not None)
    return {
        "kind": "supervised",
        "data": asdict(data),
        "train": asdict(cfg),
        **_generator_key(data.domain),
        "trainer": trainer,
    }


def ensure_domain(spec: DomainSpec, cache: Path = DEFAULT_CACHE) -> Path:
    """The dataset root (Cityscapes layout) of ``spec``, generated on first use."""
    from stvm_sdk.synthetic.dataset import generate

    root = cache / "data" / spec.key
    meta = domain_meta(spec)
    if not _valid(root, meta):
        _discard(root, "synthetic")
        generate(root, spec.domain, spec.n, seed=spec.seed, size=spec.size, split=spec.split)
        write_json_atomic(meta, root / "meta.json")  # last: an interrupted generation is redone
    return root


def ensure_trained(
    data: DomainSpec, cfg: TrainConfig, cache: Path = DEFAULT_CACHE, *, progress: bool = True
) -> Path:
    """A model trained with labels on ``data`` (source model, or the oracle on target), cached."""
    from stvm_sdk.supervised import train_source

    root = ensure_domain(data, cache)
    out = cache / "models" / f"{cfg.arch}-{data.key}-{cfg.iters}it-b{cfg.batch_size}-s{cfg.seed}"
    meta = trained_meta(data, cfg)
    if not _valid(out, meta):
        _discard(out, "supervised")
        claim_dir(out, "cache")
        train_source(root, root, out / "model.pt", cfg, progress=progress)
        write_json_atomic(meta, out / "meta.json")  # last: an interrupted training is redone
    return out / "model.pt"
