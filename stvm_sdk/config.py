"""The run's configuration as a frozen, validated dataclass tree (evidence: docs/method.md).

The root holds what every method shares: which method, decision 0's BatchNorm start, the batches
(``[data]``), the optimiser (``[optim]``) and the run (``[run]``). A method's own knobs live in its
section ``[methods.<name>]``, the ``Options`` dataclass the method declares in its own module (STvM's
metric network, reliability and mixing; the mean teacher's loss normalisation, EMA and augmentation;
tent's learning rate). This module never imports the methods: ``AdaptConfig`` keeps the sections as
plain mappings and :func:`stvm_sdk.methods.resolve` validates them where the method is resolved.

``AdaptConfig.from_file`` reads TOML, YAML or JSON and rejects unknown keys, so a typo in a config
file is an error, not a silently ignored setting; a key that moved names its new place. A file that is
not text, not valid TOML/YAML/JSON or absurdly large is one line naming the file.

Every value, from a file, a ``key=value`` override, a flag or a dataclass built in Python, is checked
against its field's type by :func:`check_value`: a number is finite (``lr = inf`` or ``nan`` is
refused), an integer fits in 64 bits, an ``(H, W)`` has sides of at most
:data:`~stvm_sdk.boundary.args.MAX_SIDE`, and a count of frames held at once (``batch_size``,
``buffer``) is within :data:`~stvm_sdk.boundary.args.COUNT_LIMITS`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from stvm_sdk.boundary.args import (
    COUNT_LIMITS,
    INT64,
    check_batch_pixels,
    check_count,
    check_device,
    check_hw,
    suggest,
    type_name,
)
from stvm_sdk.errors import ArgumentTypeError, ConfigError, StvmError

CONFIG_SCHEMA = 2  # 1: STvM's and the mean teacher's knobs at the root; 2: in [methods.<name>]
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few kilobytes; a larger one is not a config


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
        check_fields(self, "data.")
        _check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        for name in ("crop", "resize"):
            v = getattr(self, name)
            _check(v is None or (len(v) == 2 and min(v) >= 8), f"data.{name} must be (H, W) >= 8, got {v}")
        _check(self.workers >= 0, f"data.workers must be >= 0, got {self.workers}")
        hw = self.crop or self.resize  # the size of every frame of a batch, when it is fixed
        if hw is not None:
            check_batch_pixels(
                self.batch_size, hw, "data.batch_size x data." + ("crop" if self.crop else "resize")
            )


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
        check_fields(self, "optim.")
        _check(self.optimizer in ("sgd", "adamw"), f"optim.optimizer must be sgd|adamw, got {self.optimizer}")
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(self.head_lr_mult >= 0, f"optim.head_lr_mult must be >= 0, got {self.head_lr_mult}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")


# The label-free validators (stvm_sdk.eval.label_free), named here so the config reads without torch.
VALIDATORS = (
    "consistency", "im", "im_consistency", "ensemble", "source_agreement", "confidence", "neg_entropy", "snd"
)  # fmt: skip


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
    # Label-free choice and deploy gate (docs/method.md, decision 15): candidates are the deliverable at
    # the start, at `candidates` - 1 evenly spaced steps, at every snapshot step and at the end.

    # score candidates without labels, choose one and gate it (false: no frame held out, nothing scored,
    # the last network delivered, no label_free section: the run as before decision 15)
    label_free: bool = True

    # share of the target frames (at most 32) held out from training to score candidates without labels;
    # 0: none, and the last network is delivered
    holdout: float = 0.1
    candidates: int = 4  # evenly spaced candidate steps (with the start and the end)
    validator: str = "consistency"  # label-free score that ranks the candidates
    gate_validator: str = "im"  # label-free score the deploy gate compares with the source model's
    deliver: str = "best"  # best: the candidate the validator ranks first; last: the run's last network
    gate_margin: float = 0.0  # the gate calls a model worse when its score's 95 % interval is below -margin
    # score the deliverable on the labelled frames every N steps (metrics.jsonl "miou"); 0: never
    eval_every: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "run.")
        _check(0.0 <= self.holdout <= 0.5, f"run.holdout must be a share in [0, 0.5], got {self.holdout}")
        _check(1 <= self.candidates <= 64, f"run.candidates must be in [1, 64], got {self.candidates}")
        _check(
            self.validator in VALIDATORS,
            f"run.validator must be one of {', '.join(VALIDATORS)}, got {self.validator!r}",
        )
        _check(
            self.gate_validator in VALIDATORS,
            f"run.gate_validator must be one of {', '.join(VALIDATORS)}, got {self.gate_validator!r}",
        )
        _check(self.deliver in ("best", "last"), f"run.deliver must be best|last, got {self.deliver!r}")
        _check(0.0 <= self.gate_margin <= 1.0, f"run.gate_margin must be in [0, 1], got {self.gate_margin}")
        _check(self.eval_every >= 0, f"run.eval_every must be >= 0, got {self.eval_every}")
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
        check_fields(self, "")
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
            _check_shape(data, "the config")
            _refuse_moved(data, str(data.get("method", cls.method)))
        return build_section(cls, data, "")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AdaptConfig:
        """Read a TOML, YAML or JSON config file (unknown keys are errors). Every problem is one
        :class:`ConfigError` line naming the file: missing, not a text file, not valid TOML/YAML/JSON,
        too large, or a wrong key or value (named)."""
        from stvm_sdk.boundary.args import check_path

        p = check_path(path, "config")
        if p.suffix not in (".toml", ".yaml", ".yml", ".json"):
            raise ConfigError(f"config {p}: use a .toml, .yaml/.yml or .json file")
        text = _read_config_text(p)
        kind = {".toml": "TOML", ".json": "JSON"}.get(p.suffix, "YAML")
        try:
            if kind == "TOML":
                import tomllib

                data = tomllib.loads(text)
            elif kind == "YAML":
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except RecursionError:
            raise ConfigError(f"cannot parse config {p}: not valid {kind} (nested too deeply)") from None
        except Exception as exc:  # each parser has its own error class; all mean "not this format"
            raise ConfigError(f"cannot parse config {p}: not valid {kind}: {_one_line(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {p} must hold a mapping of sections, got {type_name(data)}")
        _check_shape(data, f"config {p}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise type(exc)(f"config {p}: {exc}") from None

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


def as_adapt_config(value: Any, what: str = "config") -> AdaptConfig:
    """A public function's ``config`` argument as an :class:`AdaptConfig`: None (the defaults), an
    ``AdaptConfig``, a dict of sections (:meth:`AdaptConfig.from_dict`) or a config file's path
    (:meth:`AdaptConfig.from_file`); anything else is one :class:`ArgumentTypeError` line."""
    if value is None:
        return AdaptConfig()
    if isinstance(value, AdaptConfig):
        return value
    if isinstance(value, dict):
        return AdaptConfig.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        return AdaptConfig.from_file(value)
    raise ArgumentTypeError(
        f"{what} must be an AdaptConfig, a dict of config sections or a config file path, "
        f"got {type_name(value)}"
    )


def _read_config_text(p: Path) -> str:
    """The text of the config file ``p``: one line naming it when it is missing, unreadable, too large
    or not UTF-8 text."""
    try:
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config {p} is {size:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit: "
                "a config file is a few kilobytes of TOML, YAML or JSON"
            )
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot parse config {p}: not a text file (byte {exc.start} is not UTF-8): "
            "write it as TOML, YAML or JSON (`stvm config` prints one)"
        ) from None
    if "\x00" in text:
        raise ConfigError(
            f"cannot parse config {p}: not a text file (it holds NUL bytes): write it as TOML, YAML or JSON"
        )
    return text


MAX_CONFIG_DEPTH = 16  # sections within sections; a config has at most four levels
MAX_CONFIG_VALUES = 100_000  # values after YAML's aliases are expanded (an alias "bomb" is refused)


def _check_shape(data: Any, where: str) -> None:
    """Refuse a parsed config nested deeper than :data:`MAX_CONFIG_DEPTH` or holding more than
    :data:`MAX_CONFIG_VALUES` values (counted as the checks will walk them, without recursion)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{where} is nested more than {MAX_CONFIG_DEPTH} levels deep: not a config")
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{where} holds more than {MAX_CONFIG_VALUES:,} values (with YAML aliases expanded): "
                "not a config"
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """The first lines of ``exc``'s message joined into one line, cut to ``limit`` characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        raise ArgumentTypeError(
            f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping, got {type_name(data)}"
        )
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        hint = suggest(unknown[0], sorted(known))
        shown_keys = ", ".join(prefix + k[:60] for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ConfigError(f"unknown config key(s) {shown_keys}{hint}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    try:
        return cls(**kwargs)
    except StvmError:
        raise
    except TypeError as exc:
        raise ConfigError(f"config section '{prefix or 'root'}': {exc}") from None


def check_value(tp: Any, value: Any, key: str, label: str | None = None) -> Any:
    """``value`` checked against the type hint ``tp`` of the config field ``key`` (``"data.crop"``) and
    made its canonical form (a list becomes a tuple, an int a float where a float is declared).

    Wrong types raise :class:`ArgumentTypeError` and bad values :class:`ConfigError`, both one line
    naming ``label`` (default ``config key '<key>'``; a command line passes its flag): numbers must be
    finite, integers fit in 64 bits, ``(H, W)`` sides are at most ``MAX_SIDE`` and counts of frames
    (``batch_size``, ``buffer``) within ``COUNT_LIMITS``."""
    return _coerce(tp, value, key, label)


def check_fields(obj: Any, prefix: str, labels: dict[str, str] | None = None) -> None:
    """Check every field of the dataclass instance ``obj`` with :func:`check_value` (keys named
    ``prefix`` + field, or ``labels[field]`` in messages) and store the canonical values: a dataclass
    built in Python gets the checks a config file gets. Call it first in ``__post_init__``."""
    hints = _hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name == "methods" and isinstance(value, dict):
            continue  # each method's section is checked where the method is resolved
        label = (labels or {}).get(f.name)
        canonical = _coerce(hints[f.name], value, prefix + f.name, label)
        if canonical is not value:
            object.__setattr__(obj, f.name, canonical)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """``cls``'s resolved type hints (kept: a config is built often, its classes are few)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _coerce(tp: Any, value: Any, key: str, label: str | None = None) -> Any:
    name = label or f"config key '{key}'"
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # type: ignore[arg-type]
            return value  # built (and checked) in Python
        return build_section(tp, value, key + ".")  # type: ignore[arg-type]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:  # `methods`: each method's section as read, checked on resolution
        if not isinstance(value, dict):
            raise ArgumentTypeError(
                f"config section '{key}' must be a mapping of method names to their options, "
                f"got {type_name(value)}"
            )
        return copy.deepcopy(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # a list of any length
        if not isinstance(value, (list, tuple)):
            raise ArgumentTypeError(f"{name} must be a list, got {_shown(value)}")
        return tuple(_coerce(args[0], v, key, label) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            error = ConfigError if isinstance(value, (list, tuple)) else ArgumentTypeError
            raise error(f"{name} must be a list of {len(args)} numbers, got {_shown(value)}")
        out = tuple(_coerce(a, v, key, label) for a, v in zip(args, value, strict=True))
        if args == (int, int):  # an (H, W) size
            check_hw(out, name)
        return out
    if tp is float:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ArgumentTypeError(f"{name} must be float, got {_shown(value)}")
        v = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
        if not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {_shown(value)}")
        return v
    if tp in (int, str, bool) and not (isinstance(value, tp) and (tp is bool or not isinstance(value, bool))):
        raise ArgumentTypeError(f"{name} must be {tp.__name__}, got {_shown(value)}")
    if tp is int:
        if not INT64[0] <= value <= INT64[1]:
            raise ConfigError(f"{name} must be an integer that fits in 64 bits, got {_shown(value)}")
        leaf = key.rsplit(".", 1)[-1]
        if leaf in COUNT_LIMITS:
            check_count(leaf, value, name)
    return value


def _shown(value: Any) -> str:
    from stvm_sdk.boundary.fields import shown

    return shown(value)
