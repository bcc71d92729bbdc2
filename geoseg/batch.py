"""Many inputs for one command: expand them, give each its own output names. Torch-free.

``geoseg infer`` and ``geoseg vectorize`` take several inputs: files, directories (their
``*.tif``/``*.tiff`` files), glob patterns (``'tiles/*.tif'``, expanded here when the shell
did not; one that matches nothing is taken as a file name, as shells do) and ``@list.txt``
(one input per line; blank lines and ``#`` comments are skipped; relative paths are relative
to the list file's folder). URLs and GDAL paths (``https://...``, ``s3://...``, ``/vsis3/...``;
:mod:`geoseg.io.paths`) pass through unchanged; their outputs go to ``-o DIR`` (default: the
working directory).

Every input gets an output *stem* in its output directory: the input's stem, or, when
two inputs would share one there (``a/x.tif`` and ``b/x.tif`` into the same ``-o DIR``),
their paths below their common folder joined with ``_`` (``a_x``, ``b_x``), then ``-2``,
``-3``... if that still clashes. Nothing is ever written twice under one name.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from geoseg.errors import UsageError
from geoseg.io.paths import is_virtual

#: file names a directory input contributes
RASTER_SUFFIXES = (".tif", ".tiff")
_GLOB_CHARS = set("*?[")


def expand_inputs(args: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The input rasters named by ``args``, in order, each once.

    Raises:
        UsageError: an argument names nothing (a directory without rasters, an unreadable
            or empty list file). A missing file is passed on: reading it fails
            for that input alone, with the command's usual message.
    """
    found: list[str] = []
    for a in args:
        found += _expand_one(str(a))
    seen: set[str] = set()
    unique = []
    for p in found:
        key = p if is_virtual(p) else str(Path(p).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _expand_one(text: str, base: Path | None = None) -> list[str]:
    if text.startswith("@"):
        lst = Path(text[1:])
        if base is not None and not lst.is_absolute():
            lst = base / lst
        try:
            lines = lst.read_text().splitlines()
        except OSError as e:
            raise UsageError(f"{lst}: cannot read the input list ({e.strerror}); check the path after '@'") from None
        items = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not items:
            raise UsageError(f"{lst}: the input list names no files")
        out: list[str] = []
        for it in items:
            if it.startswith("@"):
                raise UsageError(f"{lst}: lists cannot name other lists ({it})")
            out += _expand_one(it, lst.parent)
        return out
    if is_virtual(text):
        return [text]
    p = Path(text)
    if base is not None and not p.is_absolute():
        p = base / p
        text = str(p)
    if p.is_dir():
        files = sorted(str(q) for q in p.iterdir() if q.is_file() and q.suffix.lower() in RASTER_SUFFIXES
                       and not q.name.startswith("."))
        if not files:
            raise UsageError(f"{p}: the directory holds no .tif or .tiff files")
        return files
    if p.exists():
        return [text]
    if _GLOB_CHARS & set(text):
        files = sorted(q for q in glob.glob(text, recursive=True) if Path(q).is_file())
        if files:
            return files
    return [text]  # missing: the command reports it for this input, as for any unreadable file


@dataclass(frozen=True)
class BatchItem:
    """One input and where its outputs go: ``<out_dir>/<stem>_classes.tif`` etc."""

    source: str
    out_dir: Path
    stem: str


def plan_outputs(inputs: Sequence[str], out_dir: str | os.PathLike[str] | None) -> list[BatchItem]:
    """Each input with its output directory (``out_dir``, or beside the input) and a unique stem there."""
    dirs = [Path(out_dir) if out_dir is not None else _parent(s) for s in inputs]
    stems = [_stem(s) for s in inputs]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (d, s) in enumerate(zip(dirs, stems)):
        groups.setdefault((str(d.resolve()) if not is_virtual(str(d)) else str(d), s), []).append(i)
    for members in groups.values():
        if len(members) > 1:
            for i, name in zip(members, _distinct_names([inputs[i] for i in members])):
                stems[i] = name
    used: dict[tuple[str, str], int] = {}
    items = []
    for s, d, stem in zip(inputs, dirs, stems):
        key = (str(d), stem)
        n = used.get(key, 0) + 1
        used[key] = n
        items.append(BatchItem(s, d, stem if n == 1 else f"{stem}-{n}"))
    return items


def _parent(source: str) -> Path:
    from geoseg.io.paths import beside

    return beside(source)  # a URL's outputs: the working directory


def _stem(source: str) -> str:
    from geoseg.io.paths import name_stem

    return name_stem(source)


def _distinct_names(paths: list[str]) -> list[str]:
    """``a/x.tif``, ``b/x.tif`` -> ``a_x``, ``b_x`` (the paths below their common folder)."""
    parts = [list(Path(p.split("://", 1)[-1]).with_suffix("").parts) for p in paths]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    # parts of a URL or a /vsi path hold ':' (a host's port) and the like, which no file name on Windows
    # may: each such character becomes '_' ("127.0.0.1:8000_field_classes.tif")
    return [re.sub(r'[<>:"|?*\\]', "_", "_".join(q.strip("/") or "root" for q in p[common:])) for p in parts]


@dataclass
class BatchSummary:
    """What happened to each input of a batch."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, message naming it)

    def fail(self, source: str, error: BaseException | str) -> str:
        """Record that ``source`` failed; the message, starting with the input's name."""
        msg = str(error)
        if not msg.startswith(source):
            msg = f"{source}: {msg}"
        self.failed.append((source, msg))
        return msg

    @property
    def total(self) -> int:
        return len(self.done) + len(self.skipped) + len(self.failed)

    def lines(self) -> list[str]:
        """The summary: counts, then one line per failed input with its error."""
        head = f"{len(self.done)} of {self.total} inputs done"
        if self.skipped:
            head += f", {len(self.skipped)} already complete (skipped)"
        if self.failed:
            head += f", {len(self.failed)} failed:"
        return [head] + [f"  {msg}" for _, msg in self.failed]
