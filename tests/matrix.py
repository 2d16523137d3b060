"""The harness of the input matrices: a user's workspace, one CLI case, and the checks every case gets.

Each case builds its inputs in a fresh workspace, hashes the whole workspace, runs one CLI command and
asserts the outcome:

- ``error``: exit code 2, exactly one line on stderr that starts with ``error:`` and says what is wrong
  (the expected phrase), no traceback anywhere;
- ``ok``: exit code 0 and one JSON object on stdout (``check`` then asserts the right answer in it, or in
  the files the command wrote);

and in both that **no file outside the command's output folder changed** and nothing appeared outside
it (a user's folder refused as ``--out`` counts as outside: it must be left exactly as it was).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from stvm_sdk.cli.app import app
from support import honour_permissions, make_frames, tree_hashes
from typer.testing import CliRunner

RUNNER = CliRunner()
FAST = ["--iters", "1", "--batch-size", "2", "--crop", "32x64", "--seed", "0", "--json"]


@dataclass
class Case:
    """One command line and what it must do."""

    args: list[str]
    expect: str  # "error" or "ok"
    message: str = ""  # a phrase the error line must contain
    out: Path | None = None  # the command's output folder: the only place files may change
    check: Callable[[dict[str, Any]], None] | None = None  # on the JSON of an "ok" case
    read_only: Path | None = None  # a folder made read-only for the command
    extra: dict[str, Any] = field(default_factory=dict)


class Workspace:
    """A user's folder: a model, labelled frames, and the bad variants each case asks for."""

    def __init__(self, root: Path, checkpoint: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.models.mkdir(parents=True)
        self.model = self.models / "source.pt"
        self.model.write_bytes(checkpoint.read_bytes())
        self.frames, self.labels = make_frames(root / "data", n=4)

    def file(self, rel: str, data: bytes) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def frames_plus(self, name: str, data: bytes | None = None, image: Image.Image | None = None) -> Path:
        """The good frames plus one extra file ``name`` (bytes or a PIL image)."""
        target = self.frames / name
        if image is not None:
            image.save(target)
        else:
            target.write_bytes(data or b"")
        return self.frames

    def frame_folder(self, name: str, images: list[Image.Image]) -> Path:
        d = self.root / name
        d.mkdir(parents=True)
        for i, im in enumerate(images):
            im.save(d / f"f{i}.png")
        return d

    def checkpoint(self, name: str, **changes: Any) -> Path:
        ckpt = torch.load(self.model, weights_only=True)
        ckpt.update(changes)
        path = self.models / name
        torch.save(ckpt, path)
        return path

    def adapt(self, *extra: str | Path, source: Path | None = None, target: Path | None = None) -> list[str]:
        out = self.root / "run"
        return ["adapt", "--source", str(source or self.model), "--target", str(target or self.frames),
                "--out", str(out), *FAST, *map(str, extra)]  # fmt: skip


def run_case(case: Case) -> tuple[int, str, str, BaseException | None]:
    """Invoke the CLI for ``case`` (read-only folders made read-only for the call only)."""
    if case.read_only is not None:
        case.read_only.chmod(0o555)
    try:
        with honour_permissions():
            res = RUNNER.invoke(app, case.args)
    finally:
        if case.read_only is not None:
            case.read_only.chmod(0o755)
    return res.exit_code, res.stdout, res.stderr, res.exception


def check_case(case: Case, w: Workspace) -> None:
    """Run ``case`` and assert its outcome, and that nothing outside its output folder changed."""
    before = tree_hashes(w.root)
    code, out, err, exc = run_case(case)
    assert "Traceback" not in out + err, err
    if case.expect == "error":
        assert code == 2, (code, out, err, exc)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert case.message in lines[0], lines[0]
    else:
        assert code == 0, (code, err, exc)
        summary = json.loads(out)  # exactly one JSON object on stdout
        if case.check is not None:
            case.check(summary)
    after = tree_hashes(w.root)
    inside = case.out.relative_to(w.root).as_posix() + "/" if case.out is not None else None
    changed = sorted(
        p
        for p in set(before) | set(after)
        if before.get(p) != after.get(p) and not (inside and p.startswith(inside))
    )
    # A run directory created by an error case holds only the SDK's own marker and config.
    created_run = [p for p in changed if p.startswith("run/") and p not in before]
    assert set(changed) - set(created_run) == set(), changed
    assert all(
        p.split("/")[-1] in (".stvm_sdk.json", "config.json", "inputs.json", "run.json") for p in created_run
    ), created_run
    flag = case.extra.get("flag")
    assert flag is None or not flag.exists(), "the pickle's code ran"
