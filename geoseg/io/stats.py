"""Per-band statistics of rasters, computed by windows with nodata excluded. Torch-free."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from rasterio.windows import Window

from geoseg.errors import RasterReadError
from geoseg.io.raster import open_raster, read_window


def band_stats(paths: Sequence[str | os.PathLike[str]], bands: Sequence[int] | None = None,
               block_rows: int = 256, max_pixels: int | None = 50_000_000) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each band over valid pixels of one or more rasters.

    Reads row bands of ``block_rows`` rows (memory independent of raster height). With
    ``max_pixels`` set, rows are sampled evenly so at most about that many pixels are read.

    Returns:
        ``(mean, std)``, one value per band; std is at least 1e-6.
    """
    sums: np.ndarray | None = None
    sq: np.ndarray | None = None
    cnt: np.ndarray | None = None
    for path in paths:
        with open_raster(path) as ds:
            idx = list(bands) if bands is not None else list(range(1, ds.count + 1))
            step = 1
            if max_pixels and ds.width * ds.height > max_pixels:
                step = int(np.ceil(ds.width * ds.height / max_pixels))
            rows = block_rows if step == 1 else 1
            for r in range(0, ds.height, rows * step):
                h = min(rows, ds.height - r)
                data, valid = read_window(ds, idx, Window(0, r, ds.width, h))
                d = np.where(valid, data, 0).astype(np.float64)
                if sums is None:
                    sums = np.zeros(len(idx))
                    sq = np.zeros(len(idx))
                    cnt = np.zeros(len(idx))
                if len(idx) != len(sums):
                    raise RasterReadError(f"{path}: has {len(idx)} bands, earlier rasters had {len(sums)}")
                sums += d.sum(axis=(1, 2))
                sq += (d * d).sum(axis=(1, 2))
                cnt += valid.sum(axis=(1, 2))
    if sums is None or cnt is None or sq is None or (cnt == 0).any():
        raise RasterReadError(f"{', '.join(map(str, paths))}: no valid pixels to compute band statistics "
                              "(all nodata?)")
    mean = sums / cnt
    var = np.maximum(sq / cnt - mean * mean, 0.0)
    std = np.maximum(np.sqrt(var), 1e-6)
    return [float(v) for v in mean], [float(v) for v in std]
