"""Names of the files written per input frame: one output name per frame, never shared.

A frame's outputs are named from its path relative to the input folder, without the extension
(``city/f1.png`` -> ``city/f1`` -> ``city/f1_color.png``). Frames whose names differ only in the
extension (``a.png``, ``a.jpg``, ``a.bmp``) or only in case (``A.png``, ``a.png``: one file on macOS and
Windows) would share that name, each frame's outputs overwriting the last's; those keep their
extension in the name (``a_png``, ``a_jpg``, ``a_bmp``), and any name still taken gets a number
(``a_png_2``). :func:`output_stems` is the one naming rule of every command that writes per-frame files
(`predict`, the stream's ``--save-pred``, the run's figures); it checks its own result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import PurePath, PurePosixPath


def _key(p: PurePath) -> str:
    """What makes two names one file on a case-insensitive file system."""
    return PurePosixPath(p).as_posix().casefold()


def output_stems(rels: Sequence[PurePath]) -> list[PurePosixPath]:
    """One output stem per input path (same order): the path without its extension, or, where that is
    shared with another input, with the extension kept (``a.png`` -> ``a_png``); unique, also ignoring case.

    The result is checked here: a rule that ever gave two inputs one name fails loudly, never silently.
    """
    plain = [PurePosixPath(PurePosixPath(r).as_posix()).with_suffix("") for r in rels]
    shared = Counter(_key(p) for p in plain)
    # A kept extension can meet another frame's own name (a.png -> a_png beside a_png.jpg): plain names
    # keep theirs, and a name still taken gets _2, _3, ... (in input order).
    taken = {_key(p) for p in plain if shared[_key(p)] == 1}
    out: list[PurePosixPath] = []
    for p, r in zip(plain, rels, strict=True):
        if shared[_key(p)] == 1:
            out.append(p)
            continue
        ext = PurePosixPath(r).suffix.lstrip(".")
        base = p.with_name(f"{p.name}_{ext}") if ext else p
        name, n = base, 2
        while _key(name) in taken:
            name, n = base.with_name(f"{base.name}_{n}"), n + 1
        taken.add(_key(name))
        out.append(name)
    assert len({_key(p) for p in out}) == len(out), "output names must be unique per input"
    return out
