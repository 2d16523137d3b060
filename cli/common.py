"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

# Tables go to stdout only when `--json` is off; then stdout holds exactly one JSON object and
# everything else (logs, tables, progress) goes to stderr: use `out_console(json_out)`.
console = Console()
err_console = Console(stderr=True)

# Options several commands share, written once so their help reads the same everywhere.
TRUST_PICKLE: Any = typer.Option(
    False, "--trust-pickle", help="Allow loading a pickled nn.Module (unpickling runs code from the file)."
)
IGNORE_OUT_OF_RANGE: Any = typer.Option(
    False, "--ignore-out-of-range", help="Score label ids outside the model's classes as ignored."
)
JSON_OUT: Any = typer.Option(
    False, "--json", help="Print one JSON object on stdout (logs and progress go to stderr)."
)


def out_console(json_out: bool) -> Console:
    """The console for human output: stdout, or stderr when stdout is reserved for ``--json``."""
    return err_console if json_out else console


# Options that size what a command holds in memory, in the order an out-of-memory line names them.
MEMORY_KNOBS = ("--batch-size", "--batch", "--buffer", "--crop", "--size", "--shape", "--resize")


def user_errors(func: F) -> F:
    """Turn :class:`stvm_sdk.errors.StvmError` into ``error: <message>`` (one line) and a non-zero exit;
    an allocation failure (``MemoryError``, CUDA out of memory, PyTorch's CPU allocator) becomes one
    such line too, naming the command's options to lower (:data:`MEMORY_KNOBS`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from stvm_sdk.errors import StvmError, is_out_of_memory, out_of_memory

        try:
            return func(*args, **kwargs)
        except StvmError as exc:
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(code=exc.exit_code) from None
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            error = out_of_memory(exc, memory_knobs(kwargs))
            typer.echo(f"error: {one_line(error)}", err=True)
            raise typer.Exit(code=error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: the last checkpoint is kept; rerun with --resume to continue", err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def one_line(exc: BaseException) -> str:
    """``exc``'s message as one line (a message that spans lines is joined with spaces)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def memory_knobs(params: dict[str, Any]) -> list[str]:
    """The command's options among :data:`MEMORY_KNOBS` (``params``: its parameters by name, as Typer
    passes them), with the values given (if any)."""
    knobs = []
    for flag in MEMORY_KNOBS:
        name = flag[2:].replace("-", "_")
        if name in params:
            value = params[name]
            knobs.append(f"{flag} (now {value})" if value not in (None, "", False) else flag)
    return knobs


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout (the only thing a `--json` command writes there), versioned:
    ``"schema"`` first, old names of renamed keys kept for one version (:mod:`stvm_sdk.schema`)."""
    from stvm_sdk.schema import with_schema

    if isinstance(obj, dict):
        obj = with_schema(obj)
    sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()
