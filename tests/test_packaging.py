"""Packaging: every package folder is listed in pyproject (the cli/ mapping needs an explicit list)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "stvm_sdk").rglob("__init__.py")}
    found |= {"stvm_sdk.cli"}
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_import_does_not_import_triton_or_onnx() -> None:
    import subprocess
    import sys

    code = (
        "import sys, stvm_sdk.kernels, stvm_sdk.models, stvm_sdk.api; "
        "print(any(m.split('.')[0] in ('triton', 'onnx', 'onnxruntime') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
