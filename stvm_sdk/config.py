"""The run's configuration as a frozen, validated dataclass tree (evidence: docs/method.md).

The root holds what every method shares: which method, decision 0's BatchNorm start, the batches
(``[data]``), the optimiser (``[optim]``) and the run (``[run]``). A method's own knobs live in its
section ``[methods.<name>]``, the ``Options`` dataclass the method declares in its own module (STvM's
metric network, reliability and mixing; the mean teacher's loss normalisation, EMA and augmentation;
tent's learning rate). This module never imports the methods: ``AdaptConfig`` keeps the sections as
plain mappings and :func:`stvm_sdk.methods.resolve` validates them where the method is resolved.

``AdaptConfig.from_file`` reads TOML, YAML or JSON and rejects unknown keys, so a typo in a config
file is an error, not a silently ignored setting; a key that moved names its new place.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from stvm_sdk.boundary.args import check_device, suggest
from stvm_sdk.errors import ConfigError

CONFIG_SCHEMA = 2  # 1: STvM's and the mean teacher's knobs at the root; 2: in [methods.<name>]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class DataConfig:
    """How target frames become training batches."""

    batch_size: int = 4  # target frames per step (per process)
    crop: tuple[int, int] | None = (256, 512)  # random crop (H, W) of each frame; none: whole frames
    resize: tuple[int, int] | None = None  # resize every frame to (H, W) first; none: keep each frame's size
    workers: int = 2  # decoding threads

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        for name in ("crop", "resize"):
            v = getattr(self, name)
            _check(v is None or (len(v) == 2 and min(v) >= 8), f"data.{name} must be (H, W) >= 8, got {v}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (decisions 8-9)."""

    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 2.5e-4  # base learning rate
    head_lr_mult: float = 10.0  # classifier lr multiplier
    momentum: float = 0.9  # SGD momentum (AdamW beta1)
    weight_decay: float = 5e-4  # weight decay
    poly_power: float = 0.9  # power of the polynomial learning-rate decay

    def __post_init__(self) -> None:
        _check(self.optimizer in ("sgd", "adamw"), f"optim.optimizer must be sgd|adamw, got {self.optimizer}")
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class RunConfig:
    """Loop length, logging, checkpoints, devices."""

    iters: int = 2000  # adaptation steps
    seed: int = 0  # seed of batches, crops and mixing
    log_every: int = 10  # steps between records in metrics.jsonl (and progress lines' losses)
    checkpoint_every: int = 100  # steps between checkpoints (what --resume continues from)
    device: str = "auto"  # where the run computes: auto (a GPU if there is one), cpu, cuda or cuda:N
    kernel_backend: str = "auto"  # auto | triton | torch
    amp: bool = False  # bf16 autocast on CUDA
    bn_init_frames: int = 200  # frames used to re-estimate BN statistics (decision 0)
    eval_size: tuple[int, int] | None = None  # inference size for evaluation; None = native
    # Multi-process runs only: normalise the student's BatchNorm with statistics over the global
    # batch (all processes), so N processes with batch B train like one process with batch N*B.
    # Off: each process normalises by its own B images (plain DDP); see stvm_sdk/distributed.py.
    sync_bn: bool = False
    # Steps at which the deliverable is also saved to <out>/snapshots/step_<N> (a run's curve, or
    # checkpoints to choose from); steps at or beyond run.iters are the run's own model.
    snapshots: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check(
            all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.snapshots)
            and list(self.snapshots) == sorted(set(self.snapshots)),
            f"run.snapshots must be increasing steps >= 1, got {list(self.snapshots)}",
        )
        _check(
            self.iters >= 1, f"run.iters must be >= 1, got {self.iters} (source_only and adabn train nothing)"
        )
        _check(
            self.log_every >= 1 and self.checkpoint_every >= 1,
            "run.log_every and run.checkpoint_every must be >= 1, "
            f"got {self.log_every}, {self.checkpoint_every}",
        )
        _check(
            self.kernel_backend in ("auto", "triton", "torch"), "run.kernel_backend must be auto|triton|torch"
        )
        check_device(self.device)


@dataclass(frozen=True)
class AdaptConfig:
    """The whole adaptation: which method, BN start, batches, optimiser, run, and each method's section."""

    method: str = "stvm"  # adaptation method
    bn_init: str = "target"  # decision 0: "target" re-estimates BN statistics first, "source" keeps them
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Each method's own knobs by method name, as read (``[methods.stvm.mix] tau = 0.6``): validated
    # against the method's ``Options`` by stvm_sdk.methods.resolve, which also fills in the defaults.
    methods: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(
            isinstance(self.method, str) and self.method.isidentifier(),
            f"method must be a method name, got {self.method!r}",
        )
        _check(self.bn_init in ("target", "source"), f"bn_init must be target|source, got {self.bn_init}")
        for name, section in self.methods.items():
            _check(isinstance(section, dict), f"config section 'methods.{name}' must be a mapping")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def section(self) -> dict[str, Any]:
        """The chosen method's own section as read (``methods.<method>``; empty when not given)."""
        return dict(self.methods.get(self.method, {}))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptConfig:
        """Build from nested dicts; unknown keys, moved keys and wrong types raise :class:`ConfigError`."""
        if isinstance(data, dict):
            _refuse_moved(data, str(data.get("method", cls.method)))
        return build_section(cls, data, "")

    @classmethod
    def from_file(cls, path: str | Path) -> AdaptConfig:
        """Read a TOML, YAML or JSON config file (unknown keys are errors)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            text = p.read_text()
            if p.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            elif p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            elif p.suffix == ".json":
                data = json.loads(text)
            else:
                raise ConfigError(f"config {p}: use a .toml, .yaml/.yml or .json file")
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"cannot parse config {p}: {str(exc)[:200]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {p} must hold a mapping of sections")
        return cls.from_dict(data)

    @classmethod
    def preset(cls, name: str) -> AdaptConfig:
        """A named configuration from :data:`PRESETS` (e.g. ``"stvm_paper"``, the faithful reconstruction)."""
        if name not in PRESETS:
            raise ConfigError(
                f"unknown preset '{name}': choose one of {', '.join(PRESETS)}{suggest(name, list(PRESETS))}"
            )
        return cls().with_overrides(PRESETS[name])

    def with_overrides(self, overrides: dict[str, Any], *, skip_none: bool = True) -> AdaptConfig:
        """A copy with dotted keys replaced (``{"run.iters": 10, "methods.stvm.mix.tau": 0.6}``); None
        values are skipped (with ``skip_none=False`` they set the field to None). Keys under
        ``methods.<name>.`` are checked when the method is resolved."""
        data = self.to_dict()
        method = str(overrides.get("method") or data["method"])
        for key, value in overrides.items():
            if value is None and skip_none:
                continue
            moved = moved_key(key, method)
            if moved is not None:
                raise ConfigError(f"config key '{key}' moved to '{moved}': set that key instead")
            node = data
            *parents, leaf = key.split(".")
            for i, part in enumerate(parents):
                if part not in node and i >= 1 and parents[0] == "methods":
                    node[part] = {}  # a method's section (or sub-section) not written out yet
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown config key '{key}'{_known(node)}")
                node = node[part]
            if leaf not in node and parents[:1] != ["methods"]:
                raise ConfigError(f"unknown config key '{key}'{_known(node)}")
            node[leaf] = value
        return AdaptConfig.from_dict(data)


def _known(node: dict[str, Any]) -> str:
    return f"; known here: {', '.join(sorted(node))}" if node else ""


# Keys of schema 1 that now live in the method's section: old root key -> key inside methods.<name>.
MOVED: dict[str, str] = {
    "metric": "metric",
    "reliability.normalize": "normalize",
    "reliability": "reliability",
    "mix": "mix",
    "aug": "aug",
    "student_bn": "student_bn",
    "deliverable": "deliverable",
    "optim.ema_max": "ema_max",
}


def moved_key(key: str, method: str) -> str | None:
    """The new place of a schema-1 key (``metric.warmup`` -> ``methods.stvm.metric.warmup``), or None."""
    for old, new in MOVED.items():  # longest first where they overlap (reliability.normalize)
        if key == old or key.startswith(old + "."):
            return f"methods.{method}.{new}{key[len(old) :]}"
    return None


def _refuse_moved(data: dict[str, Any], method: str) -> None:
    """One line naming the new key for the first schema-1 key in ``data`` (a config file written
    before the methods owned their knobs)."""
    for key in _dotted(data):
        moved = moved_key(key, method)
        if moved is not None:
            raise ConfigError(
                f"config key '{key}' moved to '{moved}' (the method's own section): move it there; "
                "`stvm config` prints the current layout"
            )


def _dotted(data: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k == "methods" and not prefix:
            continue
        out += _dotted(v, key + ".") if isinstance(v, dict) else [key]
    return out


def migrate_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict of schema 1 (a run folder written before the methods owned their knobs) in
    today's layout: the moved keys go into the chosen method's section. Keys the method never read go
    with them; :func:`stvm_sdk.methods.resolve` drops those of a schema-1 config."""
    data = copy.deepcopy(data)
    method = str(data.get("method", AdaptConfig.method))
    section = data.setdefault("methods", {}).setdefault(method, {})
    for old, new in MOVED.items():
        *parents, leaf = old.split(".")
        node = data
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and leaf in node:
            section.setdefault(new, node.pop(leaf))
    return data


# Named configurations (`stvm adapt --preset NAME`). `stvm_paper` is STvM as first reconstructed from
# the paper (docs/method.md): student BatchNorm in train mode, the valid-pixel loss, the metric network
# on every pseudo-label, reliability = the metric softmax, MOCM without rare-class preference. The
# accuracy table keeps it as a row, so it shows what every later decision buys.
PRESETS: dict[str, dict[str, Any]] = {
    "stvm_paper": {
        "method": "stvm",
        "methods.stvm.student_bn": "train",
        "methods.stvm.normalize": "valid",
        "methods.stvm.weight_scale": "raw",
        "methods.stvm.reliability.mode": "softmax",
        "methods.stvm.reliability.scale": 16.0,
        "methods.stvm.reliability.confidence_power": 0.5,
        "methods.stvm.reliability.classwise": False,
        "methods.stvm.metric.clean": "all",
        "methods.stvm.metric.proxies": "learned",
        "methods.stvm.mix.rare_power": 0.0,
        "methods.stvm.mix.prob": 1.0,
        "methods.stvm.mix.keep_clean": False,
    },
}

T = TypeVar("T")


def build_section(cls: type[T], data: Any, prefix: str) -> T:
    """An instance of the dataclass ``cls`` from the mapping ``data``: unknown keys and wrong types
    are one :class:`ConfigError` line naming the full key (``prefix`` + field)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        hint = suggest(unknown[0], sorted(known))
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}{hint}; known: {sorted(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"config section '{prefix or 'root'}': {exc}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, key + ".")  # type: ignore[arg-type]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:  # `methods`: each method's section as read, checked on resolution
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{key}' must be a mapping of method names to their options")
        return copy.deepcopy(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # a list of any length
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, key) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key '{key}' must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' must be float, got {value!r}")
    if tp in (int, str, bool) and not (isinstance(value, tp) and (tp is bool or not isinstance(value, bool))):
        raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {value!r}")
    return value
