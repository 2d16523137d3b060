"""An :class:`~stvm_sdk.config.AdaptConfig` written as the TOML file ``--config`` reads (`stvm config`).

Every field gets one comment: the comment written beside (or above) it in the dataclass source, so the
file explains what the code documents; the few fields without one in the source are described here.
A field that is unset (None) is written as a comment, since TOML has no null: leaving it out reads
back as the same default.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
from typing import Any

from stvm_sdk.config import AdaptConfig

# Fields whose dataclass source carries no comment, or one too terse to read alone ("D", "p").
_FALLBACK = {
    "metric.embed_dim": "embedding size D of the metric network",
    "metric.loss": "metric loss: proxy_anchor | proxy_nca",
    "reliability.scale": "softmax scale gamma of the reliability",
    "mix.patch": "MOCM patch size p in pixels",
    "method": "adaptation method (`stvm methods` lists them)",
    "data.batch_size": "target frames per step (per process)",
    "metric.clean_quantile": 'share of each class\'s most confident pixels kept when clean = "confident"',
    "aug.jitter_prob": "probability of colour jitter on a student image",
    "aug.brightness": "colour jitter: brightness strength",
    "aug.contrast": "colour jitter: contrast strength",
    "aug.saturation": "colour jitter: saturation strength",
    "aug.blur_prob": "probability of a Gaussian blur on a student image",
    "aug.blur_sigma": "Gaussian blur sigma range [min, max] in pixels",
    "optim.lr": "base learning rate",
    "optim.momentum": "SGD momentum (AdamW beta1)",
    "optim.weight_decay": "weight decay",
    "optim.poly_power": "power of the polynomial learning-rate decay",
    "run.iters": "adaptation steps",
    "run.seed": "seed of batches, crops and mixing",
    "run.log_every": "steps between records in metrics.jsonl (and progress lines' losses)",
    "run.checkpoint_every": "steps between checkpoints (what --resume continues from)",
}


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the comments beside a dataclass field or in the lines just above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    lines = source.splitlines()
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if name not in names or name in out or not line.startswith("    ") or line.startswith("     "):
            continue
        above: list[str] = []
        j = i - 1
        while j in comments and j not in code_lines:
            above.insert(0, comments[j])
            j -= 1
        parts = above + ([comments[i]] if i in comments else [])
        if parts:
            out[name] = " ".join(parts)
    return out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def _section(obj: Any, prefix: str, out: list[str]) -> None:
    comments = field_comments(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) or f.name == "methods":
            continue
        key = prefix + f.name
        comment = (
            _FALLBACK.get(key) or comments.get(f.name) or f"{f.name} of {prefix.rstrip('.') or 'the run'}"
        )
        out += [f"# {line}" for line in textwrap.wrap(comment, 98)]
        out.append(
            f"# {f.name} = ...  (unset by default)" if value is None else f"{f.name} = {_value(value)}"
        )


def config_to_toml(cfg: AdaptConfig | None = None) -> str:
    """``cfg`` (default: ``AdaptConfig()``) as TOML with one comment per field; ``AdaptConfig.from_file``
    reads it back to an equal config."""
    cfg = cfg or AdaptConfig()
    out = ["# stvm adapt configuration: every field with its value; pass it with --config FILE.toml.", ""]
    _section(cfg, "", out)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            doc = (type(value).__doc__ or "").strip().splitlines()[0]
            out += ["", f"[{f.name}]  # {doc}"]
            _section(value, f.name + ".", out)
    for name, options in cfg.methods.items():
        doc = (type(options).__doc__ or f"options of method {name}").strip().splitlines()[0]
        out += ["", f"[methods.{name}]  # {doc}"]
        _section(options, f"methods.{name}.", out)
    return "\n".join(out) + "\n"
