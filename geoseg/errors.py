"""Exceptions and warnings raised by geoseg.

Every error a user can cause (a bad file, a wrong option) is a :class:`GeosegError`
whose message is one line saying what is wrong and what to do. The CLI prints that
line and exits non-zero; anything else is a bug and shows a traceback.

Messages (of errors and warnings) name an option by its Python parameter name, marked with
backticks: ``"`epochs` 0 is out of range"``, ``"pass `overwrite=True` to replace it"``. That is
what a library user reads. The CLI shows the same text through :func:`for_cli`, which puts each
option's flag in place of its marked name (``--epochs``, ``--overwrite``).

Stdlib only: this module is imported everywhere, torch-free.
"""

from __future__ import annotations

import re


class GeosegError(Exception):
    """Base class of every user-facing geoseg error."""

    #: exit code used by the CLI
    exit_code = 1


class UsageError(GeosegError, ValueError):
    """An option or combination of options is invalid."""

    exit_code = 2


class RasterReadError(GeosegError, OSError):
    """An input raster is missing, unreadable, corrupt or unsupported."""


class RasterWriteError(GeosegError, OSError):
    """An output cannot be written (permissions, disk space, existing file)."""


class OutputExistsError(RasterWriteError, FileExistsError):
    """An output exists and ``overwrite`` was not asked for."""


class BandMismatchError(GeosegError, ValueError):
    """The input bands do not match what the model expects."""


class CheckpointError(GeosegError, ValueError):
    """A model checkpoint is missing, damaged, unsafe or of an unknown format."""


class TilingError(GeosegError, ValueError):
    """Tile size and overlap do not fit the model or each other."""


class VectorError(GeosegError, ValueError):
    """A vector input or output problem (missing CRS, unknown format, bad field)."""


class LabelError(GeosegError, ValueError):
    """Training labels are empty, do not overlap the image, or are malformed."""


class BatchError(GeosegError):
    """Some inputs of a batch failed (each was reported by name; the others were written)."""


class Interrupted(GeosegError):
    """The run was interrupted by SIGINT or SIGTERM."""

    exit_code = 130


class NodataWarning(UserWarning):
    """Input nodata was detected or assumed; the user should know."""


class GeoreferenceWarning(UserWarning):
    """The input has no or an unusual georeference."""


class ResumeWarning(UserWarning):
    """``resume`` found nothing to resume, so the run started from the beginning."""


class ClassMatchWarning(UserWarning):
    """The truth's class ids may not mean the prediction's classes (``evaluate``)."""


class BandOrderWarning(UserWarning):
    """The input's band names disagree with the model's for the bands chosen by hand."""


class StyleWarning(UserWarning):
    """A different style file (``.qml``) already sat beside an output and was kept."""


def error_text(e: BaseException, limit: int = 200) -> str:
    """The most specific first line of ``e`` and the exceptions it was raised from.

    rasterio says "Read failed. See previous exception for details." and keeps GDAL's own
    message (e.g. a VRT's missing source file) in ``__cause__``: that is the one to show.
    """
    seen: list[str] = []
    cur: BaseException | None = e
    while cur is not None and len(seen) < 8:
        text = str(cur).strip()
        if text:
            seen.append(text.splitlines()[0])
        cur = cur.__cause__ or cur.__context__
    specific = [t for t in seen if "previous exception" not in t.lower()]
    return (specific[-1] if specific else seen[0] if seen else type(e).__name__)[:limit]


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it came from) says the disk or the user's quota is full."""
    import errno

    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


#: a parameter marked in a message: its name in backticks, or ``name=True`` in backticks (an on/off option)
_MARKED = re.compile(r"`([a-z][a-z0-9_]*)(=True)?`")

#: parameters whose CLI flag is not ``--`` and the name with ``_`` as ``-``
FLAGS: dict[str, str] = {
    "images": "--image",
    "ignore_values": "--ignore-value",
    "max_memory_mb": "--max-memory",
    "resolution_cm": "--resolution",
}


def flag(name: str) -> str:
    """The CLI flag of parameter ``name``: ``tile_size`` -> ``--tile-size``, ``images`` -> ``--image``."""
    return FLAGS.get(name) or "--" + name.replace("_", "-")


def for_cli(message: BaseException | str) -> str:
    """``message`` (an error, a warning or their text) in the CLI's words: each marked parameter becomes
    its flag (:func:`flag`); a marked ``overwrite=True`` becomes ``--overwrite``.

    ``"`epochs` 0 is out of range"`` -> ``"--epochs 0 is out of range"``. Text without marks is returned
    as it is, so applying it twice changes nothing.
    """
    return _MARKED.sub(lambda m: flag(m[1]), str(message))
