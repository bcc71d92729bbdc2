"""torchgeo datasets for training: imagery, label rasters and rasterized polygons, and the
random chip sampler (imports torch).

All datasets are put on the grid of the first image (its CRS and resolution): torchgeo
warps other rasters with ``WarpedVRT`` (nearest resampling for labels) and reprojects
polygons with ``GeoDataFrame.to_crs`` before rasterizing, so labels in another CRS
than the image are reprojected, not rejected. Several image files are stacked
band-wise with :class:`torchgeo.datasets.IntersectionDataset` (``concat_samples``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import shapely
from geopandas import GeoDataFrame
from pyproj import CRS
from torchgeo.datasets import GeoDataset, IntersectionDataset, RasterDataset, VectorDataset
from torchgeo.samplers import RandomGeoSampler
from torchgeo.samplers.utils import get_random_bounding_box

from geoseg.io.labels import class_key, no_overlap, read_vector
from geoseg.io.raster import read_bands


class FixedBounds:
    """Mixin: ``bounds`` computed once, where torchgeo recomputes them from the GeoDataFrame
    index for every chip (these datasets' indexes never change)."""

    _bounds: tuple[slice, slice, slice] | None = None

    @property
    def bounds(self) -> tuple[slice, slice, slice]:
        if self._bounds is None:
            self._bounds = super().bounds  # type: ignore[misc]
        return self._bounds


class OneFile(FixedBounds, RasterDataset):
    """A torchgeo raster dataset over exactly one file, with a direct read for chips on its grid.

    torchgeo's :class:`~torchgeo.datasets.RasterDataset` filters its GeoDataFrame index and
    mosaics with :func:`rasterio.merge.merge` for every chip, which costs milliseconds per
    chip even when there is one file whose pixels already are the chip's pixels (the usual
    case: the training grid is the first image's own grid, and samplers draw chips aligned
    to it). Then the chip is read as a plain window of the cached file handle, straight into
    the sample's dtype, filled with the file's nodata (or 0) outside the file: exactly the
    file's pixels, which ``merge`` also returns up to its float rounding (tested).
    Other chips (a label raster in another CRS, seen through torchgeo's ``WarpedVRT``, or
    a file with an internal mask) go through torchgeo unchanged.
    """

    separate_files = False

    def __init__(self, path: str | os.PathLike[str], crs: CRS | None = None,
                 res: tuple[float, float] | None = None) -> None:
        self._fill: tuple[np.dtype, Any] | None | Literal[False] = False  # window_fill() once known
        super().__init__(paths=[str(path)], crs=crs, res=res, cache=True)

    def __getitem__(self, query: Any) -> dict[str, Any]:
        import torch

        x, y, _ = self._disambiguate_slice(query)
        bx, by, _ = self.bounds
        if x.start >= bx.stop or x.stop <= bx.start or y.start >= by.stop or y.stop <= by.start:
            raise IndexError(f"query: {query} not found in index with bounds: {self.bounds}")
        path = self.index.filepath.iloc[0]
        src = self._cached_load_warp_file(path)
        if self._fill is False:
            self._fill = window_fill(src, list(self.band_indexes or range(1, src.count + 1)))
        direct = read_on_grid(src, x, y, self.band_indexes, self._fill,
                              out_dtype=torch.empty((), dtype=self.dtype).numpy().dtype)
        if direct is not None:
            data = torch.from_numpy(direct)
        else:
            data = self._merge_files([path], query, self.band_indexes).to(self.dtype)
        sample: dict[str, Any] = {"crs": self.crs, "bounds": query}
        if self.is_image:
            sample["image"] = data
        else:
            sample["mask"] = data.squeeze(0)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


def read_on_grid(src: Any, x: slice, y: slice, indexes: Sequence[int] | None = None,
                 fill: tuple[np.dtype, Any] | None | Literal[False] = False, out_dtype: Any = None
                 ) -> np.ndarray | None:
    """The chip ``x``/``y`` (slices of coordinates, step = resolution) of ``src`` as a window read.

    Returns None when the chip is not on ``src``'s pixel grid (another resolution, an offset
    of a fraction of a pixel, a rotated transform) or when :func:`window_fill` says the file
    cannot be read directly: :func:`rasterio.merge.merge` is then the reference. Pixels
    outside ``src`` get its nodata value (0 without one). ``fill``: the result of
    :func:`window_fill` for ``src`` and ``indexes``, when the caller keeps it (False: not
    known, computed here). ``out_dtype``: convert to this dtype while reading (GDAL
    converts; default: the file's dtype).
    """
    from rasterio.windows import Window

    t = src.transform
    if t.b != 0 or t.d != 0 or t.e >= 0:
        return None
    rx, ry = x.step, y.step
    if abs(t.a - rx) > 1e-9 * rx or abs(-t.e - ry) > 1e-9 * ry:
        return None
    cf, rf = (x.start - t.c) / rx, (t.f - y.stop) / ry
    col, row = round(cf), round(rf)
    if abs(cf - col) > 1e-3 or abs(rf - row) > 1e-3:
        return None
    width, height = round((x.stop - x.start) / rx), round((y.stop - y.start) / ry)
    bands = list(indexes) if indexes is not None else list(range(1, src.count + 1))
    if fill is False:
        fill = window_fill(src, bands)
    if fill is None:
        return None
    dtype = np.dtype(out_dtype) if out_dtype is not None else fill[0]
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + width, src.width), min(row + height, src.height)
    if (c0, r0, c1, r1) == (col, row, col + width, row + height):  # inside the file: no fill
        return read_bands(src, bands, window=Window(col, row, width, height), out_dtype=dtype)
    out = np.full((len(bands), height, width), np.array(fill[1], dtype=fill[0]), dtype=dtype)
    if c1 > c0 and r1 > r0:
        out[:, r0 - row:r1 - row, c0 - col:c1 - col] = read_bands(
            src, bands, window=Window(c0, r0, c1 - c0, r1 - r0), out_dtype=dtype)
    return out


def window_fill(src: Any, bands: Sequence[int]) -> tuple[np.dtype, Any] | None:
    """``(dtype, fill value)`` of direct chip reads from ``src``, or None when merge must be used.

    Direct reads return what :func:`rasterio.merge.merge` does for a single file when the
    bands share one dtype, their masks come from the nodata value alone (or there is
    none), and the nodata value fits the dtype (merge's fill value).
    """
    from rasterio.enums import MaskFlags

    if any(f not in ([MaskFlags.all_valid], [MaskFlags.nodata]) for f in (src.mask_flag_enums[b - 1] for b in bands)):
        return None
    # bands of several types (a VRT stacking Byte and Float32) are read one by one into their common
    # type (rasterio.merge refuses them)
    dtype = np.dtype(np.result_type(*(src.dtypes[b - 1] for b in bands)))
    nodata = src.nodata
    if nodata is None:
        return dtype, 0
    if np.isnan(nodata):
        return (dtype, nodata) if dtype.kind == "f" else None
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    if not (info.min <= nodata <= info.max) or (dtype.kind == "f"
                                                 and not np.can_cast(np.min_scalar_type(nodata), dtype)):
        return None
    return dtype, nodata


class ImageFile(OneFile):
    """One input raster file, all of its bands (model input, ``image`` key).

    Values are returned as float32; the file's nodata value is kept as is (the batch
    code turns it into a validity mask).
    """

    #: model input
    is_image = True


class LabelRaster(OneFile):
    """A label raster (``mask`` key, int64): class values per pixel.

    Resampled with nearest neighbour onto the image grid (``dtype`` long implies
    :attr:`rasterio.enums.Resampling.nearest` in torchgeo), outside its extent the
    raster's nodata (or 0) is returned.
    """

    is_image = False

    def __init__(self, path: str | os.PathLike[str], crs: CRS, res: tuple[float, float]) -> None:
        super().__init__(path, crs=crs, res=res)


class PolygonLabels(FixedBounds, VectorDataset):
    """Polygons rasterized on the fly into a ``mask``: ``code[value of class_field]``, 0 elsewhere.

    ``codes`` maps each class-field value (as a string) to the value burnt in the mask;
    the training code uses ``class index + 1`` so that 0 means "no polygon" (unlabelled).
    Polygons are reprojected to ``crs`` before rasterizing.

    torchgeo's ``VectorDataset`` indexes the file; chips are then rasterized from a copy
    of the polygons that each process loads once (reprojected, with their mask codes and an
    STR-tree), where ``VectorDataset`` itself would read the whole file again for every
    chip. Training polygons are hand-drawn or digitised label sets, small next to the
    imagery. The training code writes the split files as GeoParquet: reading them needs no GDAL.
    """

    def __init__(self, path: str | os.PathLike[str], class_field: str, codes: Mapping[str, int],
                 crs: CRS, res: tuple[float, float], layer: str | int | None = None) -> None:
        self.codes = dict(codes)
        self.class_field = class_field
        self._shapes: tuple[Any, np.ndarray, Any] | None = None
        super().__init__(paths=[str(path)], crs=crs, res=res, label_name=class_field,
                         task="semantic_segmentation", layer=layer)

    def get_label(self, feature: pd.Series) -> int:
        """Mask value of one polygon (0 = not burnt in)."""
        return int(self.codes.get(class_key(feature[self.class_field]), 0))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shapes"] = None  # each worker loads its own copy
        return state

    def _load(self) -> tuple[Any, np.ndarray, Any]:
        if self._shapes is None:
            frames = [read_vector(f, self.layer).to_crs(self.crs) for f in self.index.filepath]
            gdf = pd.concat(frames, ignore_index=True)
            codes = np.array([self.codes.get(class_key(v), 0) for v in gdf[self.class_field]], dtype=np.int64)
            keep = (codes > 0) & ~(gdf.geometry.isna() | gdf.geometry.is_empty).to_numpy()
            geoms = gdf.geometry.to_numpy()[keep]
            self._shapes = (geoms, codes[keep], shapely.STRtree(geoms))
        return self._shapes

    def __getitem__(self, query: Any) -> dict[str, Any]:
        """``{"crs", "bounds", "mask"}`` of the chip ``query`` (polygons burnt in file order)."""
        import rasterio.features
        import rasterio.transform
        from torchgeo.datasets.utils import array_to_tensor

        x, y, _ = self._disambiguate_slice(query)
        geoms, codes, tree = self._load()
        width, height = round((x.stop - x.start) / x.step), round((y.stop - y.start) / y.step)
        hits = np.sort(tree.query(shapely.box(x.start, y.start, x.stop, y.stop)))
        if hits.size:
            transform = rasterio.transform.from_bounds(x.start, y.start, x.stop, y.stop, width, height)
            mask = rasterio.features.rasterize(zip(geoms[hits], codes[hits].tolist()), out_shape=(height, width),
                                               transform=transform, fill=0, dtype="uint8")
        else:
            mask = np.zeros((height, width), dtype=np.uint8)
        sample: dict[str, Any] = {"crs": self.crs, "bounds": query, "mask": array_to_tensor(mask).to(self.dtype)}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


class Regions(GeoDataset):
    """Index-only dataset: the boxes a sampler may draw chips from.

    torchgeo samplers only read ``index``, ``res`` and ``bounds`` of a dataset, so
    giving them one row per training region (a polygon's neighbourhood, a spatial
    block) restricts :class:`~torchgeo.samplers.RandomGeoSampler` to those regions and
    weights them by area. Chips are then read from the real dataset.
    """

    def __init__(self, boxes: Iterable[tuple[float, float, float, float]], crs: CRS,
                 res: tuple[float, float]) -> None:
        # Grow each box by a thousandth of a pixel: torchgeo compares a region's width with
        # the chip size in CRS units, and float rounding would otherwise drop regions that
        # are exactly one chip wide.
        ex, ey = res[0] * 1e-3, res[1] * 1e-3
        geoms = [shapely.box(b[0], b[1], b[2] + ex, b[3] + ey) for b in boxes]
        n = len(geoms)
        index = pd.IntervalIndex.from_tuples([(pd.Timestamp.min, pd.Timestamp.max)] * n, closed="both",
                                             name="datetime")
        self.index = GeoDataFrame({"filepath": [""] * n}, index=index, geometry=geoms, crs=crs)
        self._res = res

    def __getitem__(self, query: Any) -> dict[str, Any]:  # pragma: no cover - never read
        raise NotImplementedError("Regions is an index for samplers; read chips from the data dataset")


class SeededRandomGeoSampler(RandomGeoSampler):
    """torchgeo's ``RandomGeoSampler`` with every draw from its ``generator``.

    torchgeo 0.8 picks the region of each chip with ``torch.multinomial`` on the global
    RNG, which a DataLoader also draws from whenever it starts new workers; chips then
    depended on when workers were started (not repeatable with persistent workers or on
    resume). Here the region and the position both come from ``generator``.
    """

    def __iter__(self) -> Any:
        import torch

        for _ in range(len(self)):
            idx = int(torch.multinomial(self.areas, 1, generator=self.generator))
            box = get_random_bounding_box(self.bounds[idx], self.size, self.res, self.generator)
            interval = self.intervals[idx]
            yield *box, slice(interval.left, interval.right)


def stack_images(paths: list[str]) -> GeoDataset:
    """One dataset returning the bands of all ``paths`` concatenated, on the first file's grid."""
    first = ImageFile(paths[0])
    ds: GeoDataset = first
    for p in paths[1:]:
        band = ImageFile(p, crs=first.crs, res=first.res)
        ds = _flat_index(IntersectionDataset(ds, band, spatial_only=True, collate_fn=join_samples))
    return ds


def join_samples(samples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """torchgeo's ``concat_samples`` without the copy of a tensor that has nothing to join.

    Images are concatenated band-wise; a key present in one sample (the mask) is passed on.
    """
    import torch

    out: dict[str, Any] = {}
    for sample in samples:
        for key, value in sample.items():
            out.setdefault(key, []).append(value)
    for key, values in out.items():
        if isinstance(values[0], torch.Tensor):
            out[key] = values[0] if len(values) == 1 else torch.cat(values)
        else:
            out[key] = values[0]
    return out


def _flat_index(ds: IntersectionDataset) -> IntersectionDataset:
    """Give an intersection a plain one-interval index (geometry, filepath, datetime).

    ``IntersectionDataset(spatial_only=True)`` keeps the overlay's ``*_1``/``*_2`` columns,
    so intersecting it again (a third stacked file) fails in ``geopandas.overlay``. Reads
    do not use the index (each member dataset is queried), only samplers and ``bounds`` do.
    """
    idx = ds.index
    n = len(idx)
    times = pd.IntervalIndex.from_tuples([(pd.Timestamp.min, pd.Timestamp.max)] * n, closed="both", name="datetime")
    ds.index = GeoDataFrame({"filepath": [""] * n}, index=times, geometry=list(idx.geometry), crs=idx.crs)
    return ds


def image_with_labels(images: GeoDataset, labels: GeoDataset) -> IntersectionDataset:
    """Pair images and labels; raise :class:`LabelError` when they do not overlap."""
    try:
        return _flat_index(IntersectionDataset(images, labels, spatial_only=True, collate_fn=join_samples))
    except RuntimeError as e:
        if "intersection" in str(e):
            raise no_overlap(None, "the labels do", "the image") from None
        raise
