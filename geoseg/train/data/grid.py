"""The grid training data is put on: the first image's CRS, transform, size, band names and nodata,
and the per-band normalization statistics (numpy and rasterio only)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from affine import Affine

from geoseg.errors import RasterReadError, UsageError
from geoseg.io.paths import name_stem
from geoseg.io.raster import open_raster

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageGrid:
    """The grid every dataset is put on: the first image's CRS, transform and size."""

    paths: tuple[str, ...]
    crs: Any
    transform: Affine
    width: int
    height: int
    band_names: tuple[str, ...]
    #: nodata per stacked band (NaN where the file declares none)
    nodata: tuple[float, ...]

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> Box:
        left, top = self.transform.c, self.transform.f
        return (left, top - self.height * self.res[1], left + self.width * self.res[0], top)

    def snap(self, box: Box, min_size_px: int) -> Box:
        """Grow ``box`` to at least ``min_size_px`` pixels a side, snap it to pixel edges, keep it inside the image."""
        rx, ry = self.res
        left, bottom, right, top = self.bounds
        out = []
        for lo, hi, r, a, b in ((box[0], box[2], rx, left, right), (box[1], box[3], ry, bottom, top)):
            lo_px = math.floor((lo - a) / r + 1e-6)
            hi_px = math.ceil((hi - a) / r - 1e-6)
            n = int(round((b - a) / r))
            if hi_px - lo_px < min_size_px:
                grow = min_size_px - (hi_px - lo_px)
                lo_px -= grow // 2
                hi_px = lo_px + min_size_px
            lo_px, hi_px = max(lo_px, 0), min(hi_px, n)
            if hi_px - lo_px < min_size_px:  # clipped at an edge: shift inward
                if lo_px == 0:
                    hi_px = min(min_size_px, n)
                else:
                    lo_px = max(n - min_size_px, 0)
            out.append((a + lo_px * r, a + hi_px * r))
        return (out[0][0], out[1][0], out[0][1], out[1][1])


def image_grid(paths: Sequence[str | os.PathLike[str]]) -> ImageGrid:
    """Open the images, check they share one grid, collect band names and nodata values."""
    names: list[str] = []
    nodata: list[float] = []
    ref = None
    for p in paths:
        with open_raster(p) as ds:
            if ds.crs is None:
                raise RasterReadError(f"{p}: image has no CRS; training needs georeferenced images")
            if ds.transform.b != 0 or ds.transform.d != 0:
                raise RasterReadError(f"{p}: rotated geotransforms are not supported for training; warp it first "
                                      "(gdalwarp)")
            for dt in ds.dtypes:
                if np.dtype(dt).kind not in "uif":
                    raise RasterReadError(f"{p}: band type {dt} is not supported")
            g = (ds.crs, ds.transform, ds.width, ds.height)
            if ref is None:
                ref = g
            elif (g[0] != ref[0] or g[2:] != ref[2:]
                  or not np.allclose(tuple(g[1])[:6], tuple(ref[1])[:6], rtol=0, atol=1e-6 * abs(ref[1].a))):
                raise UsageError(f"{p}: is not on the grid of {paths[0]} (CRS, transform and size must match "
                                 "to stack bands); align it first, e.g. with gdalwarp -tap or gdalbuildvrt")
            stem = name_stem(p)
            for i in range(ds.count):
                d = ds.descriptions[i]
                names.append(d if d and len(paths) == 1 else (f"{stem}:{d}" if d else
                                                              (f"band_{i + 1}" if len(paths) == 1 else
                                                               (stem if ds.count == 1 else f"{stem}:{i + 1}"))))
                nodata.append(float(ds.nodata) if ds.nodata is not None else math.nan)
    assert ref is not None
    return ImageGrid(tuple(str(p) for p in paths), ref[0], ref[1], ref[2], ref[3], tuple(names), tuple(nodata))


def normalization_stats(grid: ImageGrid) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the training images, nodata and non-finite values excluded."""
    from geoseg.io.stats import band_stats

    mean: list[float] = []
    std: list[float] = []
    for p in grid.paths:
        m, s = band_stats([p])
        mean += m
        std += s
    return mean, std


def pool_over_dates(mean: Sequence[float], std: Sequence[float], bands_per_date: int
                    ) -> tuple[list[float], list[float]]:
    """One mean and std per band of a date, pooled over all dates (dates weighted equally).

    A time series normalised date by date loses what the model needs most: the level of
    each date against the others (a green-up, a harvest). Pooling over the dates keeps the
    profile's shape, as in TempCNN (Pelletier et al. 2019).
    """
    if len(mean) % bands_per_date:
        raise UsageError(f"tempcnn: {len(mean)} bands are not a whole number of dates of {bands_per_date} bands; "
                         "check `bands_per_date`")
    m = np.asarray(mean, dtype=np.float64).reshape(-1, bands_per_date)
    s = np.asarray(std, dtype=np.float64).reshape(-1, bands_per_date)
    pm = m.mean(axis=0)
    ps = np.sqrt(np.maximum((s * s + m * m).mean(axis=0) - pm * pm, 0.0))
    ps = np.maximum(ps, 1e-6)
    dates = m.shape[0]
    return np.tile(pm, dates).tolist(), np.tile(ps, dates).tolist()
