"""Where the SDK writes: only into folders it made, never over a user's file or its own inputs.

Rules (every command that writes goes through :func:`claim_dir` or :func:`claim_file` first):

- an output folder is **new, empty, or one this SDK made for the same job**: it carries a marker
  (:data:`MARKER`, written when the folder is claimed) naming the job (``run``, ``export``, ...).
  A folder with other files and no marker is the user's and is refused, whatever it holds;
- **no input lies inside the output folder**, and the output folder is not inside an input folder
  (source model, frames, labels, the ONNX being benchmarked): a command never writes to its inputs;
- every file is written **atomically** (a hidden temporary name in the same folder, fsync, rename),
  and a failed write (read-only folder, full disk) is one :class:`~stvm_sdk.errors.OutputError` line
  naming the path and the cause, with the previous version of the file left as it was;
- temporaries left by a killed process (``.<name>.tmp-<pid>``, ``.<name>.staging-<pid>``) are removed
  the next time the folder is claimed;
- a folder a process works in for a while (a run, a stream) is **locked** while it does
  (:func:`lock_dir`): a lock file :data:`LOCK` holding the owner's pid and host, created with
  ``O_EXCL``. A second process is refused in one line; the lock of a process that no longer runs is
  taken over (with a log line); the owner removes it when it stops, however it stops.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from stvm_sdk.boundary.fields import shown
from stvm_sdk.errors import OutputError

log = logging.getLogger("stvm_sdk")

MARKER = ".stvm_sdk.json"
LOCK = ".stvm_sdk.lock"  # the owner of a folder in use: {"pid", "host", "since"}
MARKER_FORMAT = "stvm_sdk.output/1"
# What each job's folder holds, for messages.
KINDS = {
    "run": "an adaptation run (stvm adapt)",
    "export": "an export (stvm export)",
    "predict": "predictions (stvm predict)",
    "synth": "a synthetic dataset (stvm synth)",
    "demo": "the demo's output (stvm demo)",
    "cache": "a cache entry (stvm demo, benchmarks)",
}
# Temporaries this SDK writes: ".<name>.tmp-<pid>" files and ".<name>.staging-<pid>" folders.
_LEFTOVER = re.compile(r"^\..+\.(tmp|staging)-(\d+)$")

_HINTS = {
    errno.ENOSPC: "the disk is full: free space on it",
    errno.EDQUOT: "the disk quota is exceeded: free space or raise the quota",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.EFBIG: "the file exceeds the file-size limit (ulimit -f)",
}


def write_error(exc: OSError, path: Path, then: str = "") -> OutputError:
    """One line for a failed write: the path, the cause, and what to do (``then``: what happens next)."""
    cause = _HINTS.get(exc.errno or 0) or (exc.strerror or type(exc).__name__).lower()
    return OutputError(f"cannot write {path}: {cause}" + (f"; {then}" if then else ""))


class _Recording(io.RawIOBase):
    """A file wrapper that remembers the ``OSError`` of a failed write.

    ``torch.save``/``torch.jit.save`` turn a failed write into a ``RuntimeError`` without the errno
    ("enforce fail at inline_container.cc"); this keeps the cause so the message can say "disk full".
    """

    def __init__(self, fh: IO[bytes]) -> None:
        super().__init__()
        self.fh = fh
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], *, then: str = "") -> Path:
    """Write ``path`` through ``write(file)`` atomically; a failure leaves any older file untouched.

    Raises:
        OutputError: the folder cannot be created or written (read-only, disk full, ...).
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    rec: _Recording | None = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            rec = _Recording(fh)
            write(rec)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        raise write_error(exc, p, then) from None
    except RuntimeError:
        if rec is not None and rec.error is not None:
            raise write_error(rec.error, p, then) from None
        raise
    finally:
        with contextlib.suppress(OSError):  # the folder itself is not writable: nothing was created
            tmp.unlink(missing_ok=True)
    return p


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str], *, then: str = "") -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data), then=then)


def write_json_atomic(obj: Any, path: str | os.PathLike[str], *, then: str = "") -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_bytes_atomic((json.dumps(obj, indent=2, default=str) + "\n").encode(), path, then=then)


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The SDK's marker of ``folder`` (a dict with ``kind``), or None when it has none."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None


def check_not_inputs(out: Path, inputs: Iterable[str | os.PathLike[str] | None], what: str = "--out") -> None:
    """Refuse an output location that holds an input, or lies inside an input folder."""
    target = out.resolve()
    for item in inputs:
        if item is None:
            continue
        src = Path(item).resolve()
        if src == target or target in src.parents:
            raise OutputError(
                f"{what} {out} contains the input {item}: write the output to another folder "
                "(the SDK never writes over its inputs)"
            )
        if src.is_dir() and src in target.parents:
            raise OutputError(
                f"{what} {out} is inside the input folder {item}: write the output outside it "
                "(outputs there would become inputs)"
            )


def claim_dir(
    path: str | os.PathLike[str],
    kind: str,
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    what: str = "--out",
) -> Path:
    """Make ``path`` an output folder of job ``kind`` (see the module rules) and return it.

    Raises:
        OutputError: the folder is the user's (not empty, no marker), another job's, holds an input,
            lies inside an input folder, or cannot be created.
    """
    p = Path(path)
    check_not_inputs(p, inputs, what)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file, not a folder: choose a folder for the {kind} output")
    marker = read_marker(p) if p.is_dir() else None
    if marker is None:
        try:
            foreign = p.is_dir() and any(p.iterdir())
        except OSError as exc:
            raise write_error(exc, p) from None
        if foreign:
            raise OutputError(
                f"{what} {p} is a folder that stvm_sdk did not make and it is not empty: choose a new or "
                "empty folder (nothing in it was changed)"
            )
        write_json_atomic(
            {"format": MARKER_FORMAT, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            p / MARKER,
        )
    elif marker.get("kind") != kind:
        theirs = KINDS.get(str(marker.get("kind")), f"{marker.get('kind')} output")
        raise OutputError(f"{what} {p} holds {theirs}, not {KINDS.get(kind, kind)}: choose another folder")
    else:
        remove_leftovers(p)
    return p


def claim_file(
    path: str | os.PathLike[str],
    *,
    ours: Callable[[Path], bool],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    what: str = "--out",
) -> Path:
    """An output file: new, or one this SDK wrote (``ours(path)``), and not an input or inside one."""
    p = Path(path)
    check_not_inputs(p, inputs, what)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder: give a file name, e.g. {p / 'source.pt'}")
    if p.exists() and not ours(p):
        raise OutputError(
            f"{what} {p} exists and was not written by stvm_sdk: choose a new file name (it was not changed)"
        )
    return p


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporaries of processes that no longer run, anywhere under ``folder``."""
    removed = []
    for p in folder.rglob(".*"):
        m = _LEFTOVER.match(p.name)
        if m is None or _alive(int(m.group(2))):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            continue
        removed.append(p)
    return removed


class FolderLock:
    """The lock of one folder, held by this process until :meth:`release` (or its exit)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK
        self.held = False

    def release(self) -> None:
        """Remove the lock file (once; a lock file that another process owns by now is left alone)."""
        if not self.held:
            return
        self.held = False
        with _HELD_GUARD:
            _HELD.pop(str(self.path.resolve()), None)
        owner = _read_lock(self.path)
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == _HOST:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_HOST = socket.gethostname()
_HELD: dict[str, FolderLock] = {}  # the locks this process holds, by resolved path
_HELD_GUARD = threading.Lock()


@atexit.register
def _release_all() -> None:
    """A process that exits (normally, on an error, on Ctrl-C) leaves no lock behind."""
    for lock in list(_HELD.values()):
        lock.release()


def lock_dir(folder: Path, what: str = "--out") -> FolderLock:
    """Lock ``folder`` (already claimed) for this process: :class:`FolderLock`, released by its owner.

    Raises:
        OutputError: another live process holds the folder (or a process on another host, whose
            liveness cannot be checked), or the lock cannot be written.
    """
    lock = FolderLock(folder)
    key = str(lock.path.resolve())
    for _ in range(3):  # a lock removed or taken over between our reads: look again
        fd = _create_exclusive(lock.path)
        if fd is None:
            owner = _read_lock(lock.path)
            if owner is None:
                if lock.path.exists() and time.time() - _mtime(lock.path) > 5:
                    _take_over(lock.path, None)  # an empty or unreadable lock, not being written
                else:
                    time.sleep(0.1)  # being written by the process that just created it
                continue
            pid, host = owner.get("pid"), owner.get("host")
            with _HELD_GUARD:
                ours = key in _HELD
            mine = pid == os.getpid()
            if host == _HOST and isinstance(pid, int) and not ours and (mine or not _alive(pid)):
                # Our pid but not a lock we hold: an earlier process had this pid; another pid: a
                # process that was killed before it could remove its lock.
                if not mine:
                    log.warning("%s: taking over the lock of process %d, which no longer runs", folder, pid)
                _take_over(lock.path, owner)
                continue
            where = "" if host == _HOST else f" on host {host}"
            raise OutputError(
                f"{what} {folder} is in use by process {shown(pid)}{where}: wait for it or pick another "
                f"{what} (if that process is not a stvm_sdk run, delete {lock.path})"
            )
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(
                    {"pid": os.getpid(), "host": _HOST, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, fh
                )
        except OSError as exc:
            with contextlib.suppress(OSError):
                lock.path.unlink()
            raise write_error(exc, lock.path) from None
        lock.held = True
        with _HELD_GUARD:
            _HELD[key] = lock
        return lock
    raise OutputError(
        f"{what} {folder}: its lock {lock.path} keeps changing; another process is starting there"
    )


def _create_exclusive(path: Path) -> int | None:
    """A new file at ``path`` opened for writing, or None when one exists (``O_EXCL``: atomic)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    except OSError as exc:
        raise write_error(exc, path) from None


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _take_over(path: Path, owner: dict[str, Any] | None) -> None:
    """Move the stale lock ``owner`` out of the way; if another process replaced it meanwhile, put it back."""
    aside = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return  # another process took it over first
    if _read_lock(aside) != owner:  # not the lock we judged stale: restore it unless a newer one is there
        with contextlib.suppress(OSError):
            os.link(aside, path)
    with contextlib.suppress(OSError):
        aside.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had our pid: ours are never left behind
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
