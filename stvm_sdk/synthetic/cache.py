"""Cached synthetic benchmark assets: generated domains and trained source/oracle models.

The demo and the accuracy benchmark share these so a second run reuses the first one's data and
models. A cache entry is valid when its ``meta.json`` matches the request exactly; it is written
last, so an interrupted generation or training is redone, never half-used.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stvm_sdk.boundary.outputs import claim_dir, read_marker, write_json_atomic
from stvm_sdk.errors import OutputError

DEFAULT_CACHE = Path(".stvm_cache")


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


def generator_fingerprint() -> str:
    """A hash of the generator's source: cached data is regenerated whenever the generator changes."""
    import hashlib

    import stvm_sdk.synthetic.dataset as dataset

    files = [Path(dataset.__file__), *sorted((Path(dataset.__file__).parent / "render").glob("*.py"))]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
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


def ensure_domain(spec: DomainSpec, cache: Path = DEFAULT_CACHE) -> Path:
    """The dataset root (Cityscapes layout) of ``spec``, generated on first use."""
    from stvm_sdk.synthetic.dataset import generate

    root = cache / "data" / spec.key
    meta = {"kind": "synthetic", **asdict(spec), "generator": generator_fingerprint()}
    if not _valid(root, meta):
        _discard(root, "synthetic")
        generate(root, spec.domain, spec.n, seed=spec.seed, size=spec.size, split=spec.split)
        write_json_atomic(meta, root / "meta.json")  # last: an interrupted generation is redone
    return root


def ensure_trained(data: DomainSpec, cfg: Any, cache: Path = DEFAULT_CACHE, *, progress: bool = True) -> Path:
    """A model trained with labels on ``data`` (source model, or the oracle on target), cached."""
    from stvm_sdk.supervised import train_source

    root = ensure_domain(data, cache)
    out = cache / "models" / f"{cfg.arch}-{data.key}-{cfg.iters}it-b{cfg.batch_size}-s{cfg.seed}"
    meta = {
        "kind": "supervised",
        "data": asdict(data),
        "train": asdict(cfg),
        "generator": generator_fingerprint(),
    }
    if not _valid(out, meta):
        _discard(out, "supervised")
        claim_dir(out, "cache")
        train_source(root, root, out / "model.pt", cfg, progress=progress)
        write_json_atomic(meta, out / "meta.json")
    return out / "model.pt"
