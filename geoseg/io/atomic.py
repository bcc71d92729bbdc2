"""Atomic outputs: write to a temporary file beside the destination, rename when complete.

A crash, a kill or an exception never leaves a truncated file under the final name,
and an existing file is never replaced unless ``overwrite`` is asked for.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from geoseg.errors import GeosegError, OutputExistsError, RasterWriteError, error_text, is_disk_full
from geoseg.io.paths import as_typed, is_remote_path

#: Marker in every temporary name, so leftovers are recognisable (``*.geoseg-tmp*``).
TMP_MARKER = ".geoseg-tmp"


def local_output(path: str | os.PathLike[str]) -> None:
    """Refuse a URL or GDAL ``/vsi`` path as an output (:class:`RasterWriteError`): outputs are local files,
    written atomically (a temporary file renamed into place), which object stores cannot do."""
    if is_remote_path(path):
        raise RasterWriteError(f"{as_typed(path)}: outputs are written to local files; write them here and "
                               "upload them (e.g. with 'aws s3 cp' or 'gsutil cp')")


def check_destination(path: str | os.PathLike[str], *, overwrite: bool,
                      inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Check that ``path`` may be written: parent writable, not an input, not existing.

    Raises:
        OutputExistsError: the file exists and ``overwrite`` is False.
        RasterWriteError: the directory is missing or not writable, or the output is an input.
    """
    local_output(path)
    p = Path(path)
    for i in inputs:
        try:
            same = Path(i).resolve() == p.resolve()
        except OSError:
            same = False
        if same:
            raise RasterWriteError(f"{p}: output path is the same as an input; choose another output")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p}: file exists; pass `overwrite=True` to replace it")
    if not overwrite and p.suffix.lower() == ".shp":  # a Shapefile's parts are replaced or removed with it
        part = next((q for q in sidecars(p) if q.exists()), None)
        if part is not None:
            raise OutputExistsError(f"{part}: file exists (a part of the Shapefile {p.name}); pass `overwrite=True` "
                                    "to replace it")
    if p.is_dir():
        raise RasterWriteError(f"{p}: is a directory, expected a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise RasterWriteError(f"{parent}: output directory does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RasterWriteError(f"{parent}: output directory is not writable; choose another with -o")
    return p


@contextlib.contextmanager
def output_directory(path: str | os.PathLike[str] | None) -> Iterator[Path | None]:
    """Create the output directory ``path`` (and missing parents) for a command, as ``-o DIR`` does
    everywhere; if the command then fails, remove the directories it created that are still empty.

    Raises:
        RasterWriteError: the directory cannot be created.
    """
    if path is None:
        yield None
        return
    local_output(path)
    d = Path(path)
    created = [p for p in [d, *d.parents] if not p.exists()][::-1]
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RasterWriteError(f"{d}: cannot create the output directory ({e.strerror}); "
                               "choose another with -o") from None
    if not d.is_dir():
        raise RasterWriteError(f"{d}: is not a directory; choose another with -o")
    try:
        yield d
    except BaseException:
        for p in reversed(created):  # deepest first; a directory something was written to stays
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


@contextlib.contextmanager
def destination_lock(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` as a destination for the duration of a run.

    A second run writing the same destination (in this or another process) gets one clear
    :class:`~geoseg.errors.UsageError` at once instead of destroying the first run's files. The
    lock is an ``flock`` on ``.<name>.geoseg-tmp-lock`` beside the destination, removed at the end;
    the operating system releases it if the process dies.
    """
    if path is None:
        yield
        return
    import fcntl

    from geoseg.errors import UsageError

    p = Path(path)
    lock = p.with_name(f".{p.name}{TMP_MARKER}-lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield  # an unwritable directory is reported by the write itself
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{p}: another geoseg run is writing this output now; wait for it to finish or "
                             "choose another output") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)
    finally:
        os.close(fd)


def safe_stem(name: str) -> str:
    """``name`` with every character but letters, digits, ``.``, ``_``, ``+`` and ``-`` replaced by ``_``.

    Temporary and staging files get such names: GDAL and pyogrio misread some characters a file system
    allows (``a;b.gpkg`` was written as ``.a``; a newline broke the GeoPackage index), and the final
    rename gives the output the name the user chose.
    """
    return re.sub(r"[^\w.+-]", "_", name)


_URL_MANGLED = re.compile(r"[;\n\r\t#?]")


@contextlib.contextmanager
def gdal_safe_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """``path`` as a name pyogrio passes to GDAL intact, for reading or writing.

    pyogrio parses paths as URLs: ``a;b.gpkg`` loses ``;b.gpkg`` (URL parameters) and newlines
    vanish. Such a path is reached through symbolic links in a temporary folder: to its folder when
    only the folder's name is the problem (a file written there lands in the real folder), else to the
    file and its Shapefile sidecars. Other paths, and GDAL paths such as ``/vsizip/``, pass unchanged.
    """
    import tempfile

    text = os.fspath(path)
    if text.startswith("/vsi") or not _URL_MANGLED.search(text):
        yield text
        return
    src = Path(text).absolute()
    with tempfile.TemporaryDirectory(prefix="geoseg-path-") as d:
        if not _URL_MANGLED.search(src.name):
            (Path(d) / "dir").symlink_to(src.parent, target_is_directory=True)
            yield str(Path(d) / "dir" / src.name)
            return
        if _URL_MANGLED.search(str(src.parent)):
            (Path(d) / "dir").symlink_to(src.parent, target_is_directory=True)
            src = Path(d) / "dir" / src.name
        for part in [src, *sidecars(src)]:
            if part.exists():
                (Path(d) / f"data{safe_stem(part.name[len(src.stem):])}").symlink_to(part)
        yield str(Path(d) / f"data{safe_stem(src.suffix)}")


def temp_path_for(path: str | os.PathLike[str], suffix: str | None = None) -> Path:
    """A unique temporary path beside ``path`` with the same extension (and a name every library reads)."""
    p = Path(path)
    ext = p.suffix if suffix is None else suffix
    return p.with_name(f".{safe_stem(p.stem)}{TMP_MARKER}-{uuid.uuid4().hex[:8]}{safe_stem(ext)}")


def sidecars(path: Path) -> list[Path]:
    """Files that travel with ``path`` (Shapefile parts, GDAL .aux.xml, SQLite's journals).

    A GeoPackage writer killed in a transaction (Ctrl-C reaches the writer process too) leaves
    SQLite's ``-journal`` (or ``-wal``/``-shm``) beside the temporary file; it goes with it.
    """
    if path.suffix.lower() == ".shp":
        return [path.with_suffix(e) for e in (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")]
    extra = [Path(f"{path}{e}") for e in ("-journal", "-wal", "-shm")] if path.suffix.lower() in _SQLITE else []
    return [Path(str(path) + ".aux.xml"), Path(str(path) + ".msk"), *extra]


#: extensions of the SQLite-based formats geoseg writes
_SQLITE = {".gpkg", ".sqlite", ".db"}


def remove_quietly(path: Path) -> None:
    for q in [path, *sidecars(path)]:
        with contextlib.suppress(OSError):
            q.unlink()


def commit(tmp: Path, dest: Path) -> None:
    """Flush ``tmp`` (and sidecars) to disk and rename it over ``dest``."""
    pairs = [(tmp, dest)] + [(s, d) for s, d in zip(sidecars(tmp), sidecars(dest)) if s.exists()]
    for src, _ in pairs:
        with contextlib.suppress(OSError):
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    # stale sidecars of an older dest would mismatch the new file
    for s, d in zip(sidecars(tmp), sidecars(dest)):
        if not s.exists():
            with contextlib.suppress(OSError):
                d.unlink()
    for src, dst in pairs[1:]:
        os.replace(src, dst)
    os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False,
                  inputs: Sequence[str | os.PathLike[str]] = (), checked: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on any error remove it.

    Example:
        >>> with atomic_output("out.tif", overwrite=True) as tmp:  # doctest: +SKIP
        ...     write_something(tmp)
    """
    dest = Path(path) if checked else check_destination(path, overwrite=overwrite, inputs=inputs)
    tmp = temp_path_for(dest)
    try:
        yield tmp
        if not tmp.exists():
            raise RasterWriteError(f"{dest}: nothing was written")
        commit(tmp, dest)
    except Exception as e:
        # some writers (torch) hide the ENOSPC: a write error with (almost) no space left is taken for it,
        # but not a usage or input error that happened to come while the disk was full
        full = is_disk_full(e) or ((not isinstance(e, GeosegError) or isinstance(e, RasterWriteError))
                                   and _nearly_full(dest.parent))
        remove_quietly(tmp)
        if full:
            raise RasterWriteError(f"{dest}: the disk is full ({error_text(e, 120)}); free space there or "
                                   "write elsewhere") from None
        raise
    except BaseException:
        remove_quietly(tmp)
        raise


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB left where a write just failed: the likely reason, whatever the writer said."""
    import shutil

    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False
