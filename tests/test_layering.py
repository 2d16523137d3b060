"""Import layering: runners sit below export, export below bench; nothing imports in a cycle, not even
through type-only imports; the config sits below the methods, the synthetic benchmark below the
adaptation API; the stream never names a method; TensorRT is imported only inside functions.

The static checks read every import in the source, including those inside functions (a lazy import
is still a dependency); imports under ``if TYPE_CHECKING:`` are left out where a check is about what
runs, and counted where it is about the design (a type-only cycle is still a circle in the design).
The fresh-interpreter check imports each runners module alone and looks at what it pulled in.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A package may import the packages of lower layers only.
LAYERS = {"runners": 0, "export": 1, "bench": 2}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "stvm_sdk").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _runtime_nodes(tree: ast.AST, type_only: bool = False) -> Iterator[ast.AST]:
    """Every node, except the bodies of ``if TYPE_CHECKING:`` blocks (unless ``type_only``)."""
    for node in ast.iter_child_nodes(tree):
        if not type_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield child
                yield from _runtime_nodes(child)
        else:
            yield node
            yield from _runtime_nodes(node, type_only)


def _imports(path: Path, type_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import that can run (and the type-only ones with
    ``type_only``), resolved to a module where possible."""
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text()), type_only):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:  # `from stvm_sdk.export import sidecar` imports a module
                sub = f"{node.module}.{a.name}"
                found.append((sub if sub in MODULES else node.module, node.lineno))
    return found


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_runners_export_and_bench_import_only_lower_layers() -> None:
    upward = []
    for mod, path in MODULES.items():
        here = _package(mod)
        for target, line in _imports(path):
            there = _package(target)
            if target.startswith("stvm_sdk.") and LAYERS.get(there, -1) > LAYERS.get(here, 99):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert upward == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph(type_only: bool = True) -> dict[str, set[str]]:
    return {
        mod: {t for t, _ in _imports(path, type_only) if t in MODULES and t != mod}
        for mod, path in MODULES.items()
    }


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("type_only", [False, True], ids=["runtime", "with_type_only_imports"])
def test_stvm_sdk_modules_import_each_other_without_a_cycle(type_only: bool) -> None:
    graph = _graph(type_only)
    assert _cycle(graph) is None
    packages: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        packages.setdefault(_package(mod), set()).update(
            _package(t) for t in targets if _package(t) != _package(mod)
        )
    assert _cycle(packages) is None


def test_config_never_imports_the_methods() -> None:
    """A config is validated against a method's options where the method is resolved."""
    assert not {m for m in _reach(_graph(), "stvm_sdk.config") if m.startswith("stvm_sdk.methods")}


def test_synthetic_benchmark_does_not_depend_on_the_adaptation_api() -> None:
    below = _reach(_graph(), "stvm_sdk.synthetic.cache") | _reach(_graph(), "stvm_sdk.supervised")
    assert not below & {"stvm_sdk.api", "stvm_sdk.loop", "stvm_sdk.result", "stvm_sdk.stream.run"}


def test_stream_package_names_no_builtin_method() -> None:
    """The stream drives every method through ``Method.online``: no method name appears in it."""
    from stvm_sdk.methods.registry import builtin_names

    pattern = re.compile(r"(?<![\w./-])(" + "|".join(builtin_names()) + r")(?![\w/-])")
    hits = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in sorted((ROOT / "stvm_sdk" / "stream").rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_tensorrt_is_imported_only_inside_functions() -> None:
    at_top = []
    for mod, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            at_top += [f"{mod}: {n}" for n in names if n.split(".")[0] == "tensorrt"]
    assert at_top == []


RUNNER_MODULES = sorted(m for m in MODULES if m.startswith("stvm_sdk.runners"))


@pytest.mark.parametrize("module", RUNNER_MODULES)
def test_each_runners_module_imports_alone_without_export_bench_or_tensorrt(module: str) -> None:
    code = (
        f"import json, sys, {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorrt' "
        "or m.startswith(('stvm_sdk.export', 'stvm_sdk.bench')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
