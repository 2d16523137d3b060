"""`stvm export`: verified ONNX (fp32/fp16/INT8 Q/DQ) and, where possible, TensorRT engines.

The command's options are not written here: its signature is built from the fields of
:class:`~stvm_sdk.export.options.ExportOptions` (flag, type, default, help) and the rows of the
precision table (one flag each), and Typer reads that signature. Only what is not an export option
(the MODEL argument, ``--onnx``, ``--json``) is declared below.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console
from stvm_sdk.cli.common import (
    IGNORE_OUT_OF_RANGE,
    TRUST_PICKLE,
    console,
    out_console,
    print_json,
    user_errors,
)

from stvm_sdk.export.options import ExportOptions
from stvm_sdk.export.precisions import PRECISIONS

SHARED = {"trust_pickle": TRUST_PICKLE, "ignore_out_of_range": IGNORE_OUT_OF_RANGE}
# The flags that are not export options.
MODEL = typer.Argument(..., help="Model: .safetensors, a .pt checkpoint dict, or a save_pretrained folder.")
ONNX = typer.Option(
    True, "--onnx", help="Write ONNX (always on: engines are built from it and checked against it)."
)
JSON = typer.Option(False, "--json", help="Print one JSON object on stdout.")


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _cli_params() -> list[inspect.Parameter]:
    """One parameter per flag: MODEL and --onnx, every ExportOptions flag in field order, --json."""
    hints = typing.get_type_hints(ExportOptions)
    params = [_param("model", Path, MODEL), _param("onnx", bool, ONNX)]
    for f in fields(ExportOptions):
        params += _field_params(f, hints[f.name])
    params.append(_param("json_out", bool, JSON))
    assert len({p.name for p in params}) == len(params), "a precision row is named like an option"
    return params


def _field_params(f: Field[Any], hint: Any) -> list[inspect.Parameter]:
    """The flag(s) of one ExportOptions field; none for an SDK-only field."""
    if f.metadata.get("per_precision"):
        flagged = [(r.name, r.flag, r.help) for r in PRECISIONS.values() if r.flag is not None]
        return [_param(name, bool, typer.Option(False, flag, help=help)) for name, flag, help in flagged]
    if f.metadata.get("shared"):
        return [_param(f.name, hint, SHARED[f.name])]
    if "flags" not in f.metadata:
        return []
    assert f.default is not MISSING, f"{f.name}: a flag needs a default"
    cli_type = str if typing.get_origin(hint) is Literal else hint  # choices are validated by the SDK
    opt = typer.Option(f.default, *f.metadata["flags"], help=f.metadata["help"])
    return [_param(f.name, cli_type, opt)]


def _options(params: dict[str, Any]) -> ExportOptions:
    """ExportOptions from the parsed flags (the per-precision booleans become ``precisions``)."""
    asked = tuple(name for name in PRECISIONS if params.pop(name, False))
    return ExportOptions(precisions=asked, **params)


@user_errors
def export_command(**params: Any) -> None:
    """Export MODEL to ONNX (and TensorRT), verifying every artifact against eager PyTorch."""
    from stvm_sdk.errors import BackendUnavailableError
    from stvm_sdk.export.pipeline import export_model
    from stvm_sdk.models import load_model

    model, json_out = params.pop("model"), params.pop("json_out")
    params.pop("onnx")  # always on
    opts = _options(params)
    seg = load_model(model, trust_pickle=opts.trust_pickle)
    say = out_console(json_out)
    report = export_model(seg, opts, source=model, log=say.print, show=lambda r: _show_table(r, say))
    if json_out:
        print_json(report.to_dict())
    else:
        _print_written(report, opts.trt)
    if report.trt_error:
        raise BackendUnavailableError(f"ONNX written to {opts.out_dir}; {report.trt_error}")


def _print_written(report: Any, trt: bool) -> None:
    from stvm_sdk.export.precisions import engine_precisions

    engines = engine_precisions(a.precision for a in report.artifacts)
    for a in report.artifacts:
        console.print(
            f"wrote {a.onnx_path} + {a.sidecar_path.name}" + (f", {a.engine_path}" if a.engine_path else "")
        )
        if trt and a.precision in engines:
            # One unwrapped line: it is meant to be copied to the car as is.
            console.print(f"  on the car: {a.trtexec}", soft_wrap=True, markup=False, highlight=False)


def _show_table(results: list, con: Console) -> None:
    from rich.table import Table

    from stvm_sdk.export.verify import TABLE_HEADER, table_rows

    table = Table(title="ONNX Runtime vs eager PyTorch")
    for col in TABLE_HEADER:
        table.add_column(col, justify="right")
    for row in table_rows(results):
        table.add_row(*row)
    con.print(table)


def register(app: typer.Typer) -> None:
    """Add `stvm export` to ``app``, its flags built now from ExportOptions and the precision table.

    Each app gets its own copy of the command, so the signature one app was built with stays its own.
    """
    command: Any = functools.wraps(export_command)(lambda **params: export_command(**params))
    command.__signature__ = inspect.Signature(_cli_params(), return_annotation=None)
    app.command("export")(command)
