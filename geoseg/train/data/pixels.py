"""Tables of labelled pixels, for per-pixel models trained with ``sampling`` pixels (numpy, rasterio, shapely).

The labels of one side of the split (training or validation) are put on the image grid window by
window (windows of :data:`WINDOW` pixels that meet the side's regions): polygons and points
rasterized by pixel centre (a point labels the pixel it falls in), a label raster warped onto the
grid (nearest) and cut to the side's blocks. Each labelled pixel whose bands are all valid (not
nodata, finite) joins the table with its raw band values.

With ``context`` k > 1 (a per-pixel model that also reads the mean profile of the k x k pixels around
each pixel, :class:`geoseg.models.tempcnn.TempCNN`), each row also holds that neighbourhood mean, computed
as the model computes it on a tile: a band value that is not valid counts as the band's normalization
mean (the 0 it becomes after normalization), and pixels beyond the image's edge do not count.

Memory stays bounded whatever the labels cover: each class keeps a uniform random sample of at most
``cap`` of its pixels (a reservoir: every pixel gets a random key, the ``cap`` smallest keys stay), and
the table records how many pixels each class had in all, which the class-balanced sampling uses.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from rasterio.windows import Window

from geoseg.io.raster import open_raster, read_bands
from geoseg.train.config import IGNORE_INDEX
from geoseg.train.data.grid import Box, ImageGrid
from geoseg.train.data.plan import LabelPlan

#: side of the windows the labels and bands are read in
WINDOW = 512
#: bytes the table's band values may take in all (the per-class cap follows from it)
TABLE_BYTES = 1 << 29


@dataclass
class PixelTable:
    """Labelled pixels: raw band values ``x`` (N, bands) float32, class indexes ``y`` (N,), and the number of
    valid labelled pixels each class had before the cap (``counts``). With ``context`` > 1, ``x`` is
    (N, 2 * bands): each pixel's values, then the mean of its ``context`` x ``context`` neighbourhood."""

    x: np.ndarray
    y: np.ndarray
    counts: np.ndarray
    context: int = 1

    def __len__(self) -> int:
        return len(self.y)


def default_cap(bands: int, classes: int) -> int:
    """Pixels kept per class: :data:`TABLE_BYTES` shared by the classes, between 10 000 and 2 000 000."""
    return int(np.clip(TABLE_BYTES // (4 * max(bands, 1) * max(classes, 1)), 10_000, 2_000_000))


def read_pixel_table(grid: ImageGrid, plan: LabelPlan, part: str, *, class_field: str | None, seed: int,
                     ignore_values: tuple[int, ...] = (), cap: int | None = None, context: int = 1,
                     fill: np.ndarray | None = None) -> PixelTable:
    """The labelled pixels of ``part`` (``"train"`` or ``"val"``) of ``plan``; see the module. With ``context``
    > 1, ``fill`` (per band, raw units) is the normalization mean that stands for invalid values."""
    regions = plan.train_regions if part == "train" else plan.val_regions
    source = plan.train_source if part == "train" else plan.val_source
    n_cls, bands = len(plan.schema), len(grid.band_names)
    r = context // 2
    if r and fill is None:
        raise ValueError("a neighbourhood context needs the bands' fill values")
    width = bands * (2 if r else 1)
    cap = cap or default_cap(width, n_cls)
    # per class: rows and their random keys, in pieces; compacted to the cap smallest keys whenever
    # they pass twice the cap (each row is copied a bounded number of times, memory stays under 2 x cap)
    keep_x: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    keep_k: list[list[np.ndarray]] = [[] for _ in range(n_cls)]
    held = np.zeros(n_cls, dtype=np.int64)
    counts = np.zeros(n_cls, dtype=np.int64)
    rng = np.random.default_rng([seed, 0 if part == "train" else 1, 17])
    if source is None or not regions:
        return PixelTable(np.empty((0, width), np.float32), np.empty(0, np.int64), counts, context)
    with contextlib.ExitStack() as stack:
        labels: Any = (_VectorLabels(source, grid, plan, class_field) if plan.kind == "vector"
                       else stack.enter_context(_RasterLabels(source, grid, plan, regions, ignore_values)))
        images = [stack.enter_context(open_raster(p)) for p in grid.paths]
        for win in _windows(grid, regions):
            y = labels.read(win)
            lab = y != IGNORE_INDEX
            if not lab.any():
                continue
            # with a context, the window and the neighbours around it (as far as the image goes)
            halo = _grown(win, r, grid) if r else win
            # bands of mixed types (a VRT may mix them) are read one by one
            parts = [read_bands(ds, range(1, ds.count + 1), window=halo, masked=True) for ds in images]
            x = np.ma.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
            data = np.asarray(x.data, dtype=np.float32)
            valid = ~np.ma.getmaskarray(x) & np.isfinite(data)  # per band value
            inner = (slice(int(win.row_off - halo.row_off), int(win.row_off - halo.row_off + win.height)),
                     slice(int(win.col_off - halo.col_off), int(win.col_off - halo.col_off + win.width)))
            ok = lab & valid[(slice(None), *inner)].all(axis=0)
            xs, ys = data[(slice(None), *inner)][:, ok].T, y[ok]
            if r:
                assert fill is not None
                means = _box_means(data, valid, fill, r, _beyond(win, halo, r))
                xs = np.concatenate([xs, means[:, ok].T], axis=1)
            for c in np.unique(ys):
                sel = xs[ys == c]
                counts[c] += len(sel)
                keep_x[c].append(sel)
                keep_k[c].append(rng.random(len(sel)))
                held[c] += len(sel)
                if held[c] > 2 * cap:
                    held[c] = _compact(keep_x[c], keep_k[c], cap)
    for c in range(n_cls):
        _compact(keep_x[c], keep_k[c], cap)
    xs_all = [keep_x[c][0] if keep_x[c] else np.empty((0, width), np.float32) for c in range(n_cls)]
    y_all = np.concatenate([np.full(len(x), c, dtype=np.int64) for c, x in enumerate(xs_all)])
    return PixelTable(np.concatenate(xs_all), y_all, counts, context)


def _grown(win: Window, r: int, grid: ImageGrid) -> Window:
    """``win`` grown by ``r`` pixels on every side, within the image."""
    r0, c0 = max(0, int(win.row_off) - r), max(0, int(win.col_off) - r)
    r1 = min(grid.height, int(win.row_off + win.height) + r)
    c1 = min(grid.width, int(win.col_off + win.width) + r)
    return Window(c0, r0, c1 - c0, r1 - r0)


def _beyond(win: Window, halo: Window, r: int) -> tuple[int, int, int, int]:
    """Pixels of the ``r``-pixel margin around ``win`` that ``halo`` (:func:`_grown`) could not read, as they
    lie beyond the image: top, bottom, left, right."""
    return (r - int(win.row_off - halo.row_off), r - int(halo.row_off + halo.height - win.row_off - win.height),
            r - int(win.col_off - halo.col_off), r - int(halo.col_off + halo.width - win.col_off - win.width))


def _box_means(data: np.ndarray, valid: np.ndarray, fill: np.ndarray, r: int, outside: tuple[int, int, int, int],
               chunk: int = 16) -> np.ndarray:
    """The mean of each inner pixel's ``2r+1`` square of ``data`` (bands, h, w), read with an ``r``-pixel
    margin except where ``outside`` says it lies beyond the image: invalid values count as ``fill``, pixels
    beyond the image do not count (``avg_pool2d`` with ``count_include_pad=False`` on a tile).
    Float64 running sums, ``chunk`` bands at a time."""
    t, b, left, right = outside
    k = 2 * r + 1

    def box(a: np.ndarray) -> np.ndarray:
        s = np.zeros(a.shape[:-2] + (a.shape[-2] + 1, a.shape[-1] + 1))
        np.cumsum(a, axis=-2, out=s[..., 1:, 1:])
        np.cumsum(s[..., 1:, 1:], axis=-1, out=s[..., 1:, 1:])
        return s[..., k:, k:] - s[..., :-k, k:] - s[..., k:, :-k] + s[..., :-k, :-k]

    pad = ((t, b), (left, right))
    count = box(np.pad(np.ones(data.shape[1:]), pad))
    out = np.empty((data.shape[0],) + count.shape, dtype=np.float32)
    for i in range(0, data.shape[0], chunk):
        v = np.where(valid[i:i + chunk], data[i:i + chunk], np.asarray(fill, np.float64)[i:i + chunk, None, None])
        out[i:i + chunk] = box(np.pad(v, ((0, 0), *pad))) / count
    return out


def _compact(xs: list[np.ndarray], keys: list[np.ndarray], cap: int) -> int:
    """Join a class's pieces into one, keeping the ``cap`` rows of smallest key; returns the rows kept."""
    if not xs:
        return 0
    x, k = np.concatenate(xs), np.concatenate(keys)
    if len(k) > cap:
        top = np.argpartition(k, cap)[:cap]
        x, k = x[top], k[top]
    xs[:], keys[:] = [x], [k]
    return len(k)


def _windows(grid: ImageGrid, regions: list[Box]) -> Iterator[Window]:
    """The :data:`WINDOW`-pixel windows of the grid that meet a region."""
    cells: set[tuple[int, int]] = set()
    for a, b, c, d in (_pixel_span(grid, box) for box in regions):  # each region adds the cells it meets
        if a < b and c < d:
            cells.update((i, j) for i in range(a // WINDOW, (b - 1) // WINDOW + 1)
                         for j in range(c // WINDOW, (d - 1) // WINDOW + 1))
    for i, j in sorted(cells):  # row by row, as the file is laid out
        r0, c0 = i * WINDOW, j * WINDOW
        yield Window(c0, r0, min(WINDOW, grid.width - c0), min(WINDOW, grid.height - r0))


def _pixel_span(grid: ImageGrid, box: Box) -> tuple[int, int, int, int]:
    """Rows and columns ``(r0, r1, c0, c1)`` of a grid-snapped box."""
    t, (rx, ry) = grid.transform, grid.res
    c0, c1 = round((box[0] - t.c) / rx), round((box[2] - t.c) / rx)
    r0, r1 = round((t.f - box[3]) / ry), round((t.f - box[1]) / ry)
    return max(r0, 0), min(r1, grid.height), max(c0, 0), min(c1, grid.width)


class _VectorLabels:
    """Polygons and points of one side of the split, rasterized window by window by pixel centre."""

    def __init__(self, source: str, grid: ImageGrid, plan: LabelPlan, class_field: str | None) -> None:
        import geopandas as gpd
        import shapely

        from geoseg.io.labels import class_key

        assert class_field is not None
        gdf = gpd.read_parquet(source).to_crs(grid.crs)
        codes = plan.split["codes"]
        self.codes = np.array([codes.get(class_key(v), 0) for v in gdf[class_field]], dtype=np.int64)
        self.geoms = gdf.geometry.to_numpy()
        self.tree = shapely.STRtree(self.geoms)
        self.grid, self.lut = grid, plan.lut

    def read(self, win: Window) -> np.ndarray:
        import shapely
        from rasterio.features import rasterize
        from rasterio.windows import bounds, transform

        g = self.grid
        hit = np.sort(self.tree.query(shapely.box(*bounds(win, g.transform))))
        shape = (int(win.height), int(win.width))
        if not len(hit):
            return np.full(shape, IGNORE_INDEX, dtype=np.int64)
        code = rasterize(((self.geoms[i], int(self.codes[i])) for i in hit), out_shape=shape,
                         transform=transform(win, g.transform), fill=0, dtype="int32")
        return self.lut[code]


class _RasterLabels:
    """A label raster warped onto the grid, its values looked up as classes, cut to the part's blocks."""

    def __init__(self, source: str, grid: ImageGrid, plan: LabelPlan, regions: list[Box],
                 ignore_values: tuple[int, ...]) -> None:
        self.source, self.grid, self.lut = source, grid, plan.lut
        self.spans = [_pixel_span(grid, b) for b in regions]
        self.ignore = ignore_values

    def __enter__(self) -> "_RasterLabels":
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        g = self.grid
        self._src = open_raster(self.source)
        self.vrt = WarpedVRT(self._src, crs=g.crs, transform=g.transform, width=g.width, height=g.height,
                             resampling=Resampling.nearest, nodata=self._src.nodata)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.vrt.close()
        self._src.close()

    def read(self, win: Window) -> np.ndarray:
        a = self.vrt.read(1, window=win, masked=True)
        v = np.asarray(a.data).astype(np.int64)
        inside = np.zeros(v.shape, dtype=bool)
        r0, c0 = int(win.row_off), int(win.col_off)
        for a0, a1, b0, b1 in self.spans:
            inside[max(a0 - r0, 0):max(a1 - r0, 0), max(b0 - c0, 0):max(b1 - c0, 0)] = True
        ok = inside & ~np.ma.getmaskarray(a) & (v >= 0) & (v < len(self.lut))
        for iv in self.ignore:
            ok &= v != iv
        y = np.full(v.shape, IGNORE_INDEX, dtype=np.int64)
        y[ok] = self.lut[v[ok]]
        return y
