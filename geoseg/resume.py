"""Resumable runs: the on-disk record of how far an inference got. Torch-free.

While ``predict_raster`` runs, its outputs grow in staging files with fixed names
beside the destinations, and every ``checkpoint_seconds`` the staging files are
flushed to disk and a small JSON state is written atomically saying which rows are
final. A run that is interrupted (Ctrl-C, SIGTERM, even SIGKILL or a power cut)
leaves both behind; ``--resume`` checks that the state matches the same input, model
and options, reopens the staging files and continues from the first tile row that
still contributes to unwritten rows. Rows already written are not recomputed into
the file, and the rows after them receive exactly the same floating-point sums in
the same order as in an uninterrupted run, so the outputs are identical.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.errors import UsageError
from geoseg.io.atomic import TMP_MARKER, safe_stem

STATE_VERSION = 2  # 2: uint8 probability staging files keep the mask as an extra band


def staging_path(dest: str | os.PathLike[str]) -> Path:
    """Fixed staging name for ``dest`` (so a later run can find it)."""
    p = Path(dest)
    return p.with_name(f".{safe_stem(p.name)}{TMP_MARKER}-partial.tif")


def state_path(dest: str | os.PathLike[str]) -> Path:
    p = Path(dest)
    return p.with_name(f".{safe_stem(p.name)}{TMP_MARKER}-state.json")


#: Files up to this size are hashed whole; larger ones by samples, 6 MiB of them (reading a 4 GB input
#: through SHA-256 took longer than inferring it on a GPU; a whole 46 MB input took 0.03 s, a tenth of
#: the pipeline's own time for it on 2 cores).
FULL_HASH_BYTES = 8 * 2**20
_SAMPLES, _SAMPLE_BYTES = 64, 64 * 2**10


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size, mtime and a SHA-256 of a file: of all of it up to :data:`FULL_HASH_BYTES`, else of its
    first and last MiB and 64 evenly spaced 64 KiB samples (with size and mtime, a changed input is
    still recognised; the run state records which)."""
    p = Path(path)
    st = p.stat()
    fp: dict[str, Any] = {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    with open(p, "rb") as f:
        if st.st_size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            fp["sha256"] = h.hexdigest()
        else:
            offsets = [0, st.st_size - 2**20] + [st.st_size * i // (_SAMPLES + 1) for i in range(1, _SAMPLES + 1)]
            for off in offsets:
                f.seek(off)
                h.update(f.read(2**20 if off in (0, st.st_size - 2**20) else _SAMPLE_BYTES))
            fp["sha256_sampled"] = h.hexdigest()
    return fp


def source_fingerprint(source: str | os.PathLike[str], ds: Any) -> dict[str, Any]:
    """What identifies an input for resuming: :func:`file_fingerprint` of a local file, or, for a URL or a
    GDAL ``/vsi`` path (no file to hash; :class:`~pathlib.Path` would fold its ``//``), its path, grid and
    first block row read through the open dataset ``ds`` (:func:`geoseg.io.paths.remote_fingerprint`)."""
    from geoseg.io.paths import gdal_path, is_virtual, remote_fingerprint

    return remote_fingerprint(gdal_path(source), ds) if is_virtual(source) else file_fingerprint(source)


def changed_options(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The entries of two run keys that differ, options (``key["options"]``) named one by one: what an
    interrupted run used differently, for the message that refuses to resume it."""
    was, now = {**old, **(old.get("options") or {})}, {**new, **(new.get("options") or {})}
    return sorted(k for k in set(was) | set(now) if k != "options" and was.get(k) != now.get(k))


@dataclass
class RunState:
    """Progress of one run: strips before ``strip`` are done, and rows ``[0, rows_done)`` of it."""

    key: dict[str, Any]
    strip: int = 0
    rows_done: int = 0

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".new")
        with open(tmp, "w") as f:
            json.dump({"version": STATE_VERSION, "key": self.key, "strip": self.strip,
                       "rows_done": self.rows_done}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "RunState | None":
        try:
            d = json.loads(path.read_text())
            if d.get("version") != STATE_VERSION:
                return None
            return cls(d["key"], int(d["strip"]), int(d["rows_done"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def find_resume_state(dest: Path, key: dict[str, Any], staged: list[Path]) -> RunState | None:
    """The saved state for ``dest`` if it matches ``key``; None if there is nothing to resume (no
    state or staging files: the caller starts from the beginning); a clear error if it belongs to a
    run with another input, model or options."""
    sp = state_path(dest)
    st = RunState.load(sp)
    if st is None:
        return None
    if st.key != key:  # before the staging files: a run asked for another output (probabilities) has other ones
        raise UsageError(f"{dest}: the interrupted run used a different {', '.join(changed_options(st.key, key))}; "
                         "rerun with the same input, model and options, or without `resume` to start over")
    if not all(p.exists() for p in staged):
        return None
    return st


def check_staging(dest: Path, staged: list[Path], rows: int = 512) -> None:
    """Read the staging files of an interrupted run back, a band of rows at a time; a damaged one
    (truncated, overwritten) gets a clear error before any work, rather than "write failed (disk
    full?)" halfway through the resumed run."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    for p in staged:
        try:
            with rasterio.open(p) as ds:
                for r in range(0, ds.height, rows):
                    ds.read(window=Window(0, r, ds.width, min(rows, ds.height - r)))
        except (RasterioIOError, OSError) as e:
            msg = str(e).splitlines()[0][:120] if str(e) else ""
            why = "truncated or overwritten" if not msg or "previous exception" in msg else msg
            raise UsageError(f"{dest}: the interrupted run's staging file {p.name} is damaged ({why}); run "
                             "without `resume` to start over") from None


def remove_leftovers(dest: Path) -> None:
    """Delete temporary files of an earlier, killed run for ``dest``.

    These are its unfinished COG (``.<stem>.geoseg-tmp-<id>.tif``) and GDAL's own temporary
    overview file beside it (``....tif.ovr.tmp``), and the VRT that turns the probability
    staging file's mask band into the COG's mask (``.<stem>.geoseg-tmp-<id>.vrt``). The
    staging file and the state are kept:
    they are what ``--resume`` continues from.
    """
    for p in dest.parent.glob(f".{dest.stem}{TMP_MARKER}-*"):
        with contextlib.suppress(OSError):
            p.unlink()


def clear_state(dest: Path, staged: list[Path]) -> None:
    for p in [state_path(dest), *staged]:
        with contextlib.suppress(OSError):
            p.unlink()
