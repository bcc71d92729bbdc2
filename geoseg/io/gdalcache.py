"""GDAL's block cache, bounded: the one place geoseg sets ``GDAL_CACHEMAX``.

GDAL keeps every block it decoded until its cache is full, and its default cap (5 % of the
RAM, per process) is larger than most rasters: each block is read once, yet the cache would
keep the whole raster and memory would grow with its height. Inference, vectorization and the
training loader's workers each cap it at what they need. GDAL reads values below 100 000 as MB,
so callers pass at least :data:`MIN_CACHE_BYTES`.
"""

from __future__ import annotations

from typing import Any

#: smallest block cache geoseg sets (GDAL reads values below 100 000 as MB)
MIN_CACHE_BYTES = 4 << 20


def block_cache(nbytes: int) -> Any:
    """A context (``rasterio.Env``) in which GDAL's block cache holds at most ``nbytes``; process-wide in
    GDAL, so the handles of every thread see it."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=int(nbytes))


def set_block_cache(nbytes: int, *_: Any) -> None:
    """Cap GDAL's block cache at ``nbytes`` for the rest of this process: a worker process's initializer
    (extra arguments, such as a DataLoader worker's id, are ignored)."""
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", int(nbytes))


def block_cache_size() -> int:
    """This process's block cache cap in bytes."""
    from rasterio.env import get_gdal_config

    return int(get_gdal_config("GDAL_CACHEMAX"))
