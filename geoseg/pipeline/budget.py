"""Memory and disk a run needs, checked before it starts. Torch-free. See docs/memory.md."""

from __future__ import annotations

import shutil
from pathlib import Path

from geoseg.errors import RasterWriteError, UsageError


def buffer_bytes(strip_width: int, tile: int, bands: int, classes: int, batch: int, prefetch: int,
                 gdal_cache_mb: float) -> int:
    """Upper estimate of the buffers one run holds, in bytes (on the predictor's device or the host).

    Blender ``(8*(K+1)+1)*T*S`` (sums and weights as float64, the most ``accumulate`` takes; validity); raw row bands
    ``(prefetch+3)*(itemsize+1)*B*T*S`` with the largest itemsize, 8 (the queue, the band being
    read, the next one started, the one on the device; values plus validity bytes); the band
    normalized to float32 ``4*B*T*S``; finished rows waiting for the writer ``4*T*S*(K+3)``;
    a batch in and out ``2*4*N*T*T*(B+K)``; the GDAL block cache.
    """
    s, t = strip_width + tile, tile
    blender = (8 * (classes + 1) + 1) * t * s
    rows = (prefetch + 3) * 9 * bands * t * s + 4 * bands * t * s
    writes = 4 * t * s * (classes + 3)
    batches = 2 * 4 * batch * t * t * (bands + classes)
    return int(blender + rows + writes + batches + gdal_cache_mb * 2**20)


def strip_width_for_budget(max_memory_mb: float, tile: int, bands: int, classes: int, batch: int,
                           prefetch: int, gdal_cache_mb: float, *, what: str | None = None) -> int:
    """Widest column strip whose :func:`buffer_bytes` fit in ``max_memory_mb``.

    ``what`` names the budget in the error (default: the ``--max-memory`` option).
    """
    budget = max_memory_mb * 2**20
    args = (tile, bands, classes, batch, prefetch)
    per_col = buffer_bytes(1, *args, 0) - buffer_bytes(0, *args, 0)
    fixed = buffer_bytes(0, *args, gdal_cache_mb)
    width = int((budget - fixed) // max(per_col, 1))
    if width < tile:
        need = buffer_bytes(tile, *args, gdal_cache_mb) / 2**20
        if what is None:
            raise UsageError(f"`max_memory_mb` {max_memory_mb:g} MB is too small for tile {tile} and batch {batch} "
                             f"(needs about {need:.0f} MB); raise it or lower `tile_size`/`batch_size`")
        raise UsageError(f"tile {tile} and batch {batch} need about {need:.0f} MB of buffers but {what} is "
                         f"{max_memory_mb:.0f} MB; lower `batch_size` or `tile_size`")
    return max(tile, width)


#: share of the memory available at the start that a run without ``--max-memory`` may use for buffers
DEFAULT_MEMORY_SHARE = 0.5


def available_memory_mb() -> float | None:
    """Memory the system can give without swapping (``MemAvailable``), in MB; None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def fit_strip_width(max_strip_width: int, widest: int, max_memory_mb: float | None, tile: int, bands: int,
                    classes: int, batch: int, prefetch: int, gdal_cache_mb: float) -> int:
    """The strip width limit a run uses: bounded by ``max_memory_mb`` when given; otherwise narrowed only
    when the widest strip's buffers would not fit in half the available memory, and refused up front
    when even one tile's would not (a batch of 100000 tiles, a tile of 65536 px)."""
    if max_memory_mb is not None:
        return min(max_strip_width, strip_width_for_budget(max_memory_mb, tile, bands, classes, batch, prefetch,
                                                           gdal_cache_mb))
    avail = available_memory_mb()
    if avail is None:
        return max_strip_width
    budget = DEFAULT_MEMORY_SHARE * avail
    if buffer_bytes(widest, tile, bands, classes, batch, prefetch, gdal_cache_mb) <= budget * 2**20:
        return max_strip_width
    return min(max_strip_width, strip_width_for_budget(budget, tile, bands, classes, batch, prefetch, gdal_cache_mb,
                                                       what=f"half the memory available ({avail:.0f} MB)"))


def check_disk(out_path: Path, prob_path: Path | None, width: int, height: int, classes: int, prob_dtype: str,
               resume: bool) -> None:
    """Refuse to start when the output directories lack space for staging files and outputs."""
    px = width * height
    # staging (uncompressed) plus the COG written beside it (at most the same size again)
    needs: dict[Path, float] = {out_path.parent: 2 * px}
    if prob_path is not None:
        per = (classes + 1) * 4 if prob_dtype == "float32" else classes + 2  # uint8: + the mask band
        needs[prob_path.parent] = needs.get(prob_path.parent, 0) + 2 * px * per
    for d, need in needs.items():
        if resume:
            need /= 2  # staging files already exist
        free = shutil.disk_usage(d if str(d) else ".").free
        if need > free:
            raise RasterWriteError(f"{d}: needs about {_size(need)} free for this run's outputs and "
                                   f"staging files but only {_size(free)} are free; free space or "
                                   "choose another output directory")


def _size(nbytes: float) -> str:
    """``3.2 GB``, ``45 MB`` or ``512 kB``: never "0.0 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}" if nbytes < 100 * scale else f"{nbytes / scale:.0f} {unit}"
    return f"{max(nbytes / 1e3, 1):.0f} kB"
