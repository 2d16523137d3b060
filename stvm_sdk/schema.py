"""The version of every JSON object the SDK writes for programs to read: ``--json`` output,
``summary.json``, ``run.json`` and checkpoints carry ``"schema": SCHEMA``.

A key that is renamed keeps its old name beside the new one for one schema version, with a note in
``"deprecated"`` saying what to read instead, so a script written against the last version keeps
working while it is changed.
"""

from __future__ import annotations

from typing import Any

SCHEMA = 2  # 1: objects without "schema"; 2: schema and kind stamped, method knobs in [methods.<name>]
# Renamed keys kept for one version: old name -> (new name, the schema that renamed it).
RENAMED: dict[str, tuple[str, int]] = {"images_used": ("frames_used", 2)}


def with_schema(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``"schema"`` first and the old names of renamed keys it holds (noted as deprecated)."""
    out: dict[str, Any] = {"schema": SCHEMA, **{k: v for k, v in obj.items() if k != "schema"}}
    notes = dict(out.get("deprecated") or {})
    for old, (new, since) in RENAMED.items():
        if new in out and old not in out and since >= SCHEMA:
            out[old] = out[new]
            notes[old] = f"renamed '{new}' in schema {since}; the old name goes in schema {since + 1}"
    if notes:
        out["deprecated"] = notes
    return out
