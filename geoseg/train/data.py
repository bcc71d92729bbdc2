"""Training data: class schema, spatial split, samplers, normalization, batches (imports torch).

Pipeline::

    images (torchgeo RasterDataset, bands stacked) & labels (RasterDataset or VectorDataset)
      -> IntersectionDataset on the first image's grid
      -> RandomGeoSampler over the training regions / GridGeoSampler over the validation region
      -> stack_samples -> :class:`BatchMaker` (class lookup, ignore mask, normalization, augmentation)

Spatial validation split (never random pixels, so neighbouring pixels of one field
cannot sit on both sides and inflate the scores):

* **Vector labels: by polygon.** Within each class the polygons are shuffled (``seed``)
  and ``round(val_split * n)`` of them (at least one, at most ``n - 1``) are held out.
  Training masks contain only training polygons and validation masks only validation
  polygons; a class with a single polygon is kept for training only.
* **Raster labels: by spatial blocks.** The image grid is cut into square blocks of
  ``val_block`` pixels (a remainder narrower than a block joins its neighbour). Blocks
  holding labels are shuffled and about ``val_split`` of them are held out, skipping a
  block when holding it out would leave a class without training pixels. Training chips
  lie inside training blocks; validation chips are masked to their own block.

Unlabelled pixels (no polygon, label values in ``ignore_values``, the label raster's
nodata, classes dropped by ``class_map``) and pixels where any image band is nodata or
not finite get :data:`~geoseg.train.config.IGNORE_INDEX` and count neither in the loss
nor in the metrics.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from affine import Affine
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.windows import Window

from geoseg.classes import ClassInfo, ClassSchema, default_colour
from geoseg.errors import LabelError, RasterReadError, UsageError
from geoseg.io.raster import open_raster
from geoseg.train.config import IGNORE_INDEX, TrainConfig
from geoseg.train.labels import class_key, read_polygons

Box = tuple[float, float, float, float]


# ---------------------------------------------------------------------- image grid
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
            stem = Path(p).stem
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
                         "check --bands-per-date")
    m = np.asarray(mean, dtype=np.float64).reshape(-1, bands_per_date)
    s = np.asarray(std, dtype=np.float64).reshape(-1, bands_per_date)
    pm = m.mean(axis=0)
    ps = np.sqrt(np.maximum((s * s + m * m).mean(axis=0) - pm * pm, 0.0))
    ps = np.maximum(ps, 1e-6)
    dates = m.shape[0]
    return np.tile(pm, dates).tolist(), np.tile(ps, dates).tolist()


# ---------------------------------------------------------------------- classes
def build_schema(keys: Sequence[str], class_map: dict[str, str], *, numeric_ids: bool,
                 colours: dict[int, tuple[int, int, int]] | None = None
                 ) -> tuple[ClassSchema, dict[str, int]]:
    """Class schema and ``{source key: class index}`` from the label keys found.

    Args:
        keys: label values (as strings) present in the training data.
        class_map: ``{source: target}`` renames/merges; target ``""``/``"ignore"`` drops.
        numeric_ids: raster labels: a class keeps its label value as its id (the
            smallest value when several are merged), so predictions use the same codes
            as the labels. Otherwise ids are ``0..n-1`` in class-name order, unless all
            keys are integers in 0..254, in which case the same rule as rasters applies.
        colours: optional ``{label value: rgb}`` (a label raster's colour table).

    Returns:
        ``(schema, lut)``. Classes are ordered by id (stable: sorted, never by frequency).
    """
    unknown = sorted(set(class_map) - set(keys))
    if unknown:
        raise UsageError(f"--class-map source(s) {', '.join(unknown)} are not among the label values "
                         f"({', '.join(keys[:20])}); check the spelling")
    groups: dict[str, list[str]] = {}
    dropped = []
    for k in keys:
        # only --class-map drops: a label that is itself called "ignore" is a class like any other
        if k in class_map and class_map[k].strip().lower() in ("", "ignore"):
            dropped.append(k)
            continue
        groups.setdefault(class_map.get(k, k), []).append(k)
    if dropped:
        warnings.warn(f"--class-map drops the labels {', '.join(dropped[:20])}: their pixels are not trained on",
                      UserWarning, stacklevel=2)
    if not groups:
        raise LabelError("no classes left after --class-map (every class was dropped)")
    if len(groups) == 1:
        only = next(iter(groups))
        raise LabelError(f"the labels hold one class only ({only}); a segmentation model needs at least two: add "
                         "examples of the other classes (for example background)")

    def as_int(s: str) -> int | None:
        try:
            v = int(s)
        except ValueError:
            return None
        return v if 0 <= v <= 254 else None

    all_int = all(as_int(k) is not None for ks in groups.values() for k in ks)
    if numeric_ids and not all_int:
        bad = [k for ks in groups.values() for k in ks if as_int(k) is None]
        raise LabelError(f"label values {', '.join(bad[:5])} are outside 0..254; recode the label raster to "
                         "small non-negative integers")
    if all_int:
        entries = sorted(((min(as_int(k) for k in ks), name, ks) for name, ks in groups.items()),  # type: ignore[type-var]
                         key=lambda e: e[0])
    else:
        entries = [(i, name, groups[name]) for i, name in enumerate(sorted(groups))]
    classes = []
    lut: dict[str, int] = {}
    for idx, (cid, name, ks) in enumerate(entries):
        nice = f"class_{name}" if as_int(name) is not None and all_int else name
        col = (colours or {}).get(int(cid)) or default_colour(idx, nice)
        classes.append(ClassInfo(int(cid), nice, tuple(int(c) for c in col[:3])))  # type: ignore[arg-type]
        for k in ks:
            lut[k] = idx
    return ClassSchema(tuple(classes)), lut


# ---------------------------------------------------------------------- plans
@dataclass
class LabelPlan:
    """What the training loop needs about the labels: classes, split, regions, counts."""

    kind: str  # "raster" or "vector"
    schema: ClassSchema
    #: mask value -> class index (a dense lookup; other values are ignored)
    lut: np.ndarray
    #: training regions (boxes in the image CRS, snapped to the grid, >= one chip)
    train_regions: list[Box]
    #: validation regions (GridGeoSampler), empty when there is no validation
    val_regions: list[Box]
    #: training pixels (or pixel-equivalent polygon area) per class index
    train_counts: np.ndarray
    #: restrict training chips to their own region (blocks) or not (polygons)
    clip_train: bool
    #: human-readable description of the split, stored in the checkpoint
    split: dict[str, Any]
    #: label files for the training and validation datasets (vector: subsets)
    train_source: str
    val_source: str | None
    _tmp: Any = field(default=None, repr=False)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def plan_labels(cfg: TrainConfig, grid: ImageGrid) -> LabelPlan:
    """Read the labels once: classes, spatial split and regions. Raises on unusable labels."""
    if cfg.vector_labels is not None:
        return _plan_vector(cfg, grid)
    assert cfg.labels is not None
    return _plan_raster(cfg, grid)


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    """Cut ``0..n`` into spans of ``size``; a last span shorter than ``size`` joins the previous one."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < size:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


def _plan_raster(cfg: TrainConfig, grid: ImageGrid) -> LabelPlan:
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    path = cfg.labels
    assert path is not None
    with open_raster(path) as src:
        if src.crs is None:
            raise LabelError(f"{path}: label raster has no CRS; assign one (gdal_edit.py -a_srs) so it can be "
                             "aligned with the image")
        if np.dtype(src.dtypes[0]).kind not in "ui":
            raise LabelError(f"{path}: label raster must hold integer class values, not {src.dtypes[0]}")
        lb = transform_bounds(src.crs, grid.crs, *src.bounds, densify_pts=21)
        ib = grid.bounds
        if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
            raise LabelError(f"{path}: the labels do not overlap the image {grid.paths[0]}; check that they "
                             "cover the same area (and that the CRS is right)")
        colours: dict[int, tuple[int, int, int]] = {}
        try:
            colours = {k: v[:3] for k, v in src.colormap(1).items()}
        except ValueError:
            pass
        nodata = src.nodata
        ignore = set(int(v) for v in cfg.ignore_values)
        bs = cfg.block_size
        rows, cols = _blocks(grid.height, bs), _blocks(grid.width, bs)
        counts: dict[tuple[int, int], dict[int, int]] = {}
        with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                       resampling=Resampling.nearest, nodata=nodata) as vrt:
            for bi, (r0, r1) in enumerate(rows):
                a = vrt.read(1, window=Window(0, r0, grid.width, r1 - r0), masked=True)
                valid = ~np.ma.getmaskarray(a)
                data = np.asarray(a.data).astype(np.int64)
                for v in ignore:
                    valid &= data != v
                for bj, (c0, c1) in enumerate(cols):
                    sub = data[:, c0:c1][valid[:, c0:c1]]
                    if sub.size:
                        vals, cnt = np.unique(sub, return_counts=True)
                        counts[(bi, bj)] = {int(v): int(c) for v, c in zip(vals, cnt)}
    if not counts:
        raise LabelError(f"{path}: no labelled pixels inside the image (all nodata or in --ignore-value "
                         f"{sorted(ignore)}); check the label file")
    keys_int = sorted({v for c in counts.values() for v in c})
    schema, lut_map = build_schema([str(v) for v in keys_int], cfg.class_map, numeric_ids=True, colours=colours)
    lut = _dense_lut({int(k): i for k, i in lut_map.items()})
    n = len(schema)

    def cls_counts(c: dict[int, int]) -> np.ndarray:
        out = np.zeros(n, dtype=np.int64)
        for v, k in c.items():
            if str(v) in lut_map:
                out[lut_map[str(v)]] += k
        return out

    per_block = {b: cls_counts(c) for b, c in counts.items()}
    per_block = {b: c for b, c in per_block.items() if c.sum() > 0}
    if not per_block:
        raise LabelError(f"{path}: every labelled class was dropped by --class-map")
    blocks = sorted(per_block)
    rng = np.random.default_rng(cfg.seed)
    order = [blocks[i] for i in rng.permutation(len(blocks))]
    val: list[tuple[int, int]] = []
    if cfg.val_split > 0:
        if len(blocks) < 2:
            raise UsageError(f"the labels lie in a single {bs}-pixel block, so no spatial validation split is "
                             f"possible; use a smaller --val-block (>= --tile-size) or --val-split 0")
        target = max(1, int(round(cfg.val_split * len(blocks))))
        train_tot = sum(per_block.values())
        for b in order:
            if len(val) >= target or len(val) >= len(blocks) - 1:
                break
            left = train_tot - per_block[b]
            if np.any((train_tot > 0) & (left <= 0)):
                continue  # holding it out would leave a class without training pixels
            val.append(b)
            train_tot = left
    train = [b for b in blocks if b not in val]
    _check_fits(cfg, grid)

    def box(b: tuple[int, int]) -> Box:
        (r0, r1), (c0, c1) = rows[b[0]], cols[b[1]]
        t = grid.transform
        return (t.c + c0 * t.a, t.f + r1 * t.e, t.c + c1 * t.a, t.f + r0 * t.e)

    train_counts = sum((per_block[b] for b in train), np.zeros(n, dtype=np.int64))
    return LabelPlan(
        kind="raster", schema=schema, lut=lut, train_regions=[box(b) for b in train],
        val_regions=[box(b) for b in val], train_counts=train_counts, clip_train=True,
        split={"method": "spatial blocks", "block_pixels": bs, "train_blocks": len(train), "val_blocks": len(val),
               "val_block_ids": [list(b) for b in sorted(val)], "seed": cfg.seed,
               "ignore_values": sorted(ignore), "label_nodata": nodata},
        train_source=str(path), val_source=str(path) if val else None)


def _dense_lut(mapping: dict[int, int]) -> np.ndarray:
    size = max(mapping) + 1
    lut = np.full(size, IGNORE_INDEX, dtype=np.int64)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def _check_fits(cfg: TrainConfig, grid: ImageGrid) -> None:
    if cfg.tile_size > min(grid.width, grid.height):
        m = cfg.size_multiple
        fit = min(grid.width, grid.height) // m * m
        raise UsageError(f"--tile-size {cfg.tile_size} exceeds the image ({grid.width}x{grid.height} px); "
                         f"use --tile-size <= {fit}")


def _plan_vector(cfg: TrainConfig, grid: ImageGrid) -> LabelPlan:
    import shapely

    assert cfg.vector_labels is not None and cfg.class_field is not None
    path = cfg.vector_labels
    gdf = read_polygons(path, cfg.class_field)
    proj = gdf.to_crs(grid.crs)
    img_box = shapely.box(*grid.bounds)
    inside = proj.geometry.intersects(img_box).to_numpy()
    if not inside.any():
        raise LabelError(f"{path}: the polygons do not overlap the image {grid.paths[0]}; check that they cover "
                         "the same area (and that their CRS is right)")
    gdf, proj = gdf[inside], proj[inside]
    keys = [class_key(v) for v in gdf[cfg.class_field]]
    schema, lut_map = build_schema(sorted(set(keys)), cfg.class_map, numeric_ids=False)
    cls = np.array([lut_map.get(k, -1) for k in keys])
    keep = cls >= 0
    gdf, proj, cls = gdf[keep], proj[keep], cls[keep]
    n = len(schema)
    rng = np.random.default_rng(cfg.seed)
    is_val = np.zeros(len(gdf), dtype=bool)
    single: list[str] = []
    if cfg.val_split > 0:
        for c in range(n):
            idx = np.flatnonzero(cls == c)
            if len(idx) < 2:
                single.append(schema.classes[c].name)
                continue
            k = min(max(1, int(round(cfg.val_split * len(idx)))), len(idx) - 1)
            is_val[rng.permutation(idx)[:k]] = True
    _check_fits(cfg, grid)
    tmp = tempfile.TemporaryDirectory(prefix="geoseg-labels-")
    codes = {}
    # subsets keep the file's own CRS: torchgeo's VectorDataset reprojects them to the image grid
    out = gdf[[cfg.class_field, gdf.geometry.name]].copy()
    # GeoParquet: written and read through pyarrow, no GDAL round trip
    train_path = Path(tmp.name) / "train.parquet"
    out[~is_val].to_parquet(train_path)
    val_path = None
    if is_val.any():
        val_path = Path(tmp.name) / "val.parquet"
        out[is_val].to_parquet(val_path)
    for k, i in lut_map.items():
        codes[k] = i + 1
    rx, ry = grid.res
    clipped = proj.geometry.intersection(img_box)
    # a point labels one pixel: its "area" is one pixel
    area_px = np.where(proj.geometry.geom_type.isin(["Point", "MultiPoint"]).to_numpy(),
                       shapely.get_num_geometries(clipped.to_numpy()), clipped.area.to_numpy() / (rx * ry))
    train_counts = np.bincount(cls[~is_val], weights=area_px[~is_val], minlength=n).round().astype(np.int64)
    train_regions = [grid.snap(tuple(g.bounds), cfg.tile_size) for g in clipped[~is_val]]  # type: ignore[arg-type]
    val_regions: list[Box] = []
    if is_val.any():
        ub = shapely.union_all(clipped[is_val].to_numpy()).bounds
        val_regions = [grid.snap(tuple(ub), cfg.tile_size)]  # type: ignore[arg-type]
    plan = LabelPlan(
        kind="vector", schema=schema, lut=np.array([IGNORE_INDEX] + list(range(n)), dtype=np.int64),
        train_regions=train_regions, val_regions=val_regions, train_counts=train_counts, clip_train=False,
        split={"method": "by polygon, stratified per class", "train_polygons": int((~is_val).sum()),
               "val_polygons": int(is_val.sum()), "train_only_classes": single, "seed": cfg.seed,
               "val_polygon_rows": [int(i) for i in np.flatnonzero(is_val)]},
        train_source=str(train_path), val_source=str(val_path) if val_path else None, _tmp=tmp)
    plan.split["codes"] = codes
    return plan


def class_weights(counts: np.ndarray) -> np.ndarray:
    """``auto`` weights: inverse square root of label frequency, mean 1 over present classes.

    Square root rather than plain inverse frequency: it corrects imbalance without
    letting a class of a few pixels dominate the loss.
    """
    c = np.asarray(counts, dtype=np.float64)
    w = np.zeros_like(c)
    present = c > 0
    w[present] = 1.0 / np.sqrt(c[present] / c[present].sum())
    w[present] /= w[present].mean()
    w[~present] = 1.0
    return w


# ---------------------------------------------------------------------- datasets and samplers
def build_dataset(grid: ImageGrid, plan: LabelPlan, cfg: TrainConfig, split: str) -> Any:
    """torchgeo IntersectionDataset of the stacked images and the ``split``'s labels."""
    from geoseg.train.datasets import LabelRaster, PolygonLabels, image_with_labels, stack_images

    images = stack_images(list(grid.paths))
    src = plan.train_source if split == "train" else plan.val_source
    assert src is not None
    if plan.kind == "vector":
        assert cfg.class_field is not None
        labels: Any = PolygonLabels(src, cfg.class_field, plan.split["codes"], crs=images.crs, res=images.res)
    else:
        labels = LabelRaster(src, crs=images.crs, res=images.res)
    return image_with_labels(images, labels)


def train_sampler(grid: ImageGrid, plan: LabelPlan, cfg: TrainConfig, generator: torch.Generator) -> Any:
    """Random ``tile_size`` chips over the training regions (area-weighted), all drawn from ``generator``."""
    from geoseg.train.datasets import Regions, SeededRandomGeoSampler

    regions = Regions(plan.train_regions, grid.crs, grid.res)
    n = cfg.samples_per_epoch
    sampler = SeededRandomGeoSampler(regions, size=cfg.tile_size, length=n, generator=generator)
    if len(sampler) == 0 and n is None:
        raise LabelError("no training region is as large as one chip; lower --tile-size")
    if n is None:
        sampler.length = max(len(sampler), 4 * cfg.batch_size)
    return sampler


def val_sampler(grid: ImageGrid, plan: LabelPlan, cfg: TrainConfig) -> "GridChips":
    """GridGeoSampler chips (stride = chip size) over each validation region in turn.

    torchgeo 0.8's grid does not clamp the last chip, which may hang past a region;
    :class:`BatchMaker` masks every chip to the region it starts in, so each labelled
    validation pixel is counted exactly once.
    """
    return GridChips(grid, plan.val_regions, cfg.tile_size)


class GridChips:
    """One torchgeo ``GridGeoSampler`` per region, chained; keeps chips that start inside their region.

    Regions are grown by a thousandth of a pixel (see :class:`~geoseg.train.datasets.Regions`),
    which can make torchgeo's ceiling formula add a chip starting exactly at the region's
    end; that chip belongs to no pixel of the region and is dropped here.
    """

    def __init__(self, grid: ImageGrid, regions: Sequence[Box], size: int) -> None:
        from torchgeo.samplers import GridGeoSampler

        from geoseg.train.datasets import Regions

        rx, ry = grid.res
        self.chips: list[Any] = []
        for r in regions:
            for q in GridGeoSampler(Regions([r], grid.crs, grid.res), size=size, stride=size):
                cx, cy = q[0].start + 0.5 * rx, q[1].start + 0.5 * ry
                if r[0] <= cx < r[2] and r[1] <= cy < r[3]:
                    self.chips.append(q)

    def __iter__(self) -> Any:
        return iter(self.chips)

    def __len__(self) -> int:
        return len(self.chips)


# ---------------------------------------------------------------------- batches
D4 = [(k, f) for f in (False, True) for k in range(4)]


def batch_tensor(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch; in a DataLoader worker it lies in shared memory.

    A worker's batch goes to the main process through shared memory: a tensor made there
    is sent as it is, any other is copied into shared memory first (what torch's default
    collate avoids the same way).
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(int(np.prod(shape)), device=proto.device)
    return proto.new(storage).resize_(*shape)


class BatchMaker:
    """Collate function: torchgeo samples -> ``{"image": float (B,C,H,W), "mask": long (B,H,W)}``.

    Steps: stack the samples; look mask values up as class indexes (unknown -> ignore);
    ignore pixels where any band is nodata or not finite, and pixels outside the
    chip's own region when ``clip`` is set, and pixels within ``margin`` of a chip edge
    that is not an edge of the image (for models that read a neighbourhood); normalize
    with the training mean/std (nodata becomes 0, the band mean, as in inference); augment
    (D4, photometric jitter, band dropout).

    With ``on_device`` (training on a GPU) the workers only stack the chips and make the
    labels; :meth:`finish` does validity, normalization and augmentation on the GPU, where
    they are nearly free, instead of in the workers, where they were about 40 % of the
    CPU time of a 68-band chip.
    """

    def __init__(self, grid: ImageGrid, lut: np.ndarray, mean: Sequence[float], std: Sequence[float], *,
                 regions: Sequence[Box] = (), clip: bool = False, augment: str = "none", jitter: float = 0.0,
                 band_dropout: float = 0.0, seed: int = 0, margin: int = 0, on_device: bool = False) -> None:
        self.grid = grid
        #: workers send raw chips with their labels; :meth:`finish` does the rest where the model is
        self.on_device = on_device
        self._on: dict[torch.device, tuple[Any, ...]] = {}  # constants moved to a device
        self._perms: dict[tuple[torch.device, int], torch.Tensor] = {}  # D4 pixel permutations (finish)
        self._ring: Any = None  # BatchRing: shared-memory batch slots (attach_ring)
        self.margin = margin
        self.lut = torch.as_tensor(lut, dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
        nd = np.asarray(grid.nodata, dtype=np.float64)
        self.nodata = torch.tensor(nd, dtype=torch.float32)[None, :, None, None]
        has = ~np.isnan(nd)
        #: bands compared with their nodata value: True (all), an index list, or None (none)
        self._nodata_bands: Any = True if has.all() else (torch.from_numpy(np.flatnonzero(has)) if has.any() else None)
        self.regions = np.asarray(regions, dtype=np.float64).reshape(-1, 4)
        self.clip = clip
        self.augment = augment
        self.jitter = jitter
        self.band_dropout = band_dropout
        self.seed = seed
        # in shared memory: persistent DataLoader workers see the epoch the main process sets
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_on"], state["_perms"] = {}, {}  # workers never finish batches: no device tensors for them
        return state

    @property
    def epoch(self) -> int:
        """The epoch augmentation draws are seeded with."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation for ``epoch`` (resumed runs repeat the same draws); call it
        before iterating the epoch's loader."""
        self._epoch[0] = epoch
        self._rng = None

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else -1
        epoch = self.epoch
        key = (epoch, wid)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, epoch, wid + 1, 7])
            self._rng_key = key
        return self._rng

    def _region_mask(self, bounds: Any, h: int, w: int) -> torch.Tensor:
        x, y = bounds[0], bounds[1]
        rx, ry = (x.stop - x.start) / w, (y.stop - y.start) / h
        xs = x.start + (np.arange(w) + 0.5) * rx
        ys = y.stop - (np.arange(h) + 0.5) * ry  # row 0 is the top
        cx, cy = x.start + 0.5 * rx, y.start + 0.5 * ry
        r = self.regions
        own = np.flatnonzero((r[:, 0] <= cx) & (cx < r[:, 2]) & (r[:, 1] <= cy) & (cy < r[:, 3]))
        if own.size == 0:
            return torch.zeros(h, w, dtype=torch.bool)
        b = r[own[0]]
        m = ((ys >= b[1]) & (ys < b[3]))[:, None] & ((xs >= b[0]) & (xs < b[2]))[None, :]
        return torch.from_numpy(m)

    def _mask_margins(self, y: torch.Tensor, bounds: Sequence[Any] | None) -> None:
        r = self.margin
        left, bottom, right, top = self.grid.bounds
        rx, ry = self.grid.res
        for i in range(len(y)):
            # chip edges lying on the image's edges keep their labels (inference cuts there too)
            if bounds is not None:
                bx, by = bounds[i][0], bounds[i][1]
                at = (by.stop >= top - ry / 2, by.start <= bottom + ry / 2, bx.start <= left + rx / 2,
                      bx.stop >= right - rx / 2)
            else:
                at = (False, False, False, False)
            if not at[0]:
                y[i, :r] = IGNORE_INDEX
            if not at[1]:
                y[i, -r:] = IGNORE_INDEX
            if not at[2]:
                y[i, :, :r] = IGNORE_INDEX
            if not at[3]:
                y[i, :, -r:] = IGNORE_INDEX

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [s["image"] for s in samples]
        masks = [s["mask"] for s in samples]
        bounds = [s["bounds"] for s in samples] if "bounds" in samples[0] else None
        if not self.on_device:
            return self.process(torch.stack(images), torch.stack(masks), bounds)
        # the model's device does the rest (finish): send the raw chips, straight from shared memory
        info = torch.utils.data.get_worker_info()
        ring = self._ring
        if ring is not None and info is not None and ring.fits(images):
            return ring.put(info.id, images, self._labels(torch.stack(masks), bounds, torch.empty))
        shape = (len(images), *images[0].shape)
        image = torch.stack([t.float() for t in images], out=batch_tensor(shape, torch.float32))
        return {"image": image, "mask": self._labels(torch.stack(masks), bounds, batch_tensor)}

    def process(self, image: torch.Tensor, mask: torch.Tensor, bounds: Sequence[Any] | None = None
                ) -> dict[str, torch.Tensor]:
        """The batch of ``image`` (B,C,H,W) and ``mask`` ((B,H,W) or (B,1,H,W)); inputs are not modified.

        Each step is one pass over the batch where it can be (this runs for every chip in
        the loader's workers and bounds their throughput): validity from one ``isfinite``
        pass and one nodata comparison, normalization into a new tensor, invalid pixels
        zeroed in place, and each D4 transform applied as a strided numpy view copied once.
        """
        x = image.float()
        d4 = self.augment == "d4"  # then the D4 copy is the output, else x and y are (see batch_tensor)
        y = self._labels(mask, bounds, torch.empty if d4 else batch_tensor)
        invalid = self._invalid(x)
        y[invalid] = IGNORE_INDEX
        x = torch.sub(x, self.mean, out=torch.empty_like(x) if d4 else batch_tensor(x.shape, x.dtype))
        x.div_(self.std)
        bad = invalid.nonzero(as_tuple=True)
        if bad[0].numel():
            x.permute(0, 2, 3, 1)[bad] = 0.0  # nodata and non-finite pixels: 0, the band mean
        over = (~torch.isfinite(x.sum(dim=1))).nonzero(as_tuple=True)
        if over[0].numel():  # finite values that overflow float32 when normalized
            xp = x.permute(0, 2, 3, 1)
            xp[over] = torch.nan_to_num(xp[over], nan=0.0, posinf=0.0, neginf=0.0)
        if self._augments:
            x, y = self._augment(x, y)
        return {"image": x.contiguous(), "mask": y.contiguous()}

    def finish(self, batch: dict[str, Any], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Second half of an ``on_device`` batch, on the device its tensors are on (the GPU):
        validity, normalization and augmentation, as :meth:`process` does on the CPU.

        Plain batched torch operations: on a GPU they cost next to nothing and need no
        host synchronisation. ``batch`` is consumed (its mask is modified in place). A batch
        that came as a ring slot (:meth:`attach_ring`) is copied to ``device`` first; finish
        it before drawing the next batch, as the slot is then refilled.
        """
        if "slot" in batch:
            if device is None:
                raise ValueError("finish: a ring batch needs the device to copy it to")
            x, y = self._ring.fetch(batch["slot"], batch["n"], torch.device(device))
        else:
            x, y = batch["image"], batch["mask"]
        dev = x.device

        def put(a: np.ndarray) -> torch.Tensor:
            # a pageable host-to-device copy would wait for the GPU's queued work: pin, copy async
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else t

        if dev not in self._on:  # the constants once per device
            nd_idx = self._nodata_bands
            self._on[dev] = (self.mean.to(dev), self.std.to(dev), self.nodata.to(dev),
                             nd_idx.to(dev) if isinstance(nd_idx, torch.Tensor) else nd_idx)
        mean, std, nodata, nd = self._on[dev]
        invalid = ~torch.isfinite(x).all(dim=1)
        if nd is not None:
            if nd is True:
                invalid |= (x == nodata).any(dim=1)
            else:
                invalid |= (x[:, nd] == nodata[:, nd]).any(dim=1)
        y.masked_fill_(invalid, IGNORE_INDEX)
        x = (x - mean) / std
        x = torch.nan_to_num(x.masked_fill_(invalid[:, None], 0.0), nan=0.0, posinf=0.0, neginf=0.0)
        if self._augments:
            t, gain, off, drop = self._draws(x.shape[0], x.shape[1])
            if t is not None:
                x, y = self._d4_gather(x, y, put(t))
            if gain is not None and off is not None:
                x.mul_(put(gain)[:, :, None, None])
                x.add_(put(off)[:, :, None, None])
            if drop is not None:
                x.masked_fill_(put(drop)[:, :, None, None], 0.0)
        return {"image": x.contiguous(), "mask": y.contiguous()}

    def _d4_gather(self, x: torch.Tensor, y: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``i`` of ``x`` (B,C,H,W) and ``y`` (B,H,W) transformed by D4 element ``codes[i]``:
        one gather each, through the 8 pixel permutations of a square chip (kept per device
        and size), instead of a few kernels per transform; the host only sends the codes.
        """
        b, c, h, w = x.shape
        if h != w:
            raise ValueError(f"D4 augmentation needs square chips, got {h}x{w}")
        key = (x.device, h)
        perms = self._perms.get(key)
        if perms is None:
            idx = torch.arange(h * w, device=x.device).view(h, w)
            perms = torch.stack([torch.rot90(idx.flip(-1) if flip else idx, k, (-2, -1)).reshape(-1)
                                 for k, flip in D4])
            self._perms[key] = perms
        src = perms[codes]  # (B, H*W): output pixel j of sample i reads input pixel src[i, j]
        xo = torch.gather(x.reshape(b, c, h * w), 2, src[:, None, :].expand(b, c, h * w)).view(b, c, h, w)
        yo = torch.gather(y.reshape(b, h * w), 1, src).view(b, h, w)
        return xo, yo

    def attach_ring(self, workers: int, prefetch: int, batch: int, tile: int) -> bool:
        """Workers build ``on_device`` batches in shared-memory slots (:mod:`geoseg.train.ring`)
        instead of torch's per-batch shared memory; call before the loader's workers start.
        False (nothing attached) when the slots would exceed :func:`~geoseg.train.ring.ring_budget`."""
        from geoseg.train.ring import BatchRing, ring_budget, ring_bytes

        chip = (len(self.grid.band_names), tile, tile)
        label = torch.uint8 if self.lut.numel() == 0 or int(self.lut.max()) <= 255 else torch.long
        if not self.on_device or ring_bytes(workers, prefetch, batch, chip, label) > ring_budget():
            return False
        self._ring = BatchRing(workers, prefetch, batch, chip, label)
        return True

    def release(self) -> None:
        """Unlock the ring's pages, if any (they are unlocked when it goes anyway)."""
        if self._ring is not None:
            self._ring.release()

    @property
    def _augments(self) -> bool:
        return self.augment == "d4" or self.jitter > 0 or self.band_dropout > 0

    def _labels(self, mask: torch.Tensor, bounds: Sequence[Any] | None, alloc: Callable[..., torch.Tensor]
                ) -> torch.Tensor:
        """(B,H,W) class indexes: looked up, clipped to the chip's region, margins left out."""
        if mask.ndim == 4:
            mask = mask[:, 0]
        m = mask.long()
        lut = self.lut
        y = alloc(tuple(m.shape), dtype=torch.long).fill_(IGNORE_INDEX)
        inr = (m >= 0) & (m < len(lut))
        y[inr] = lut[m[inr]]
        if self.clip and bounds is not None:
            h, w = y.shape[-2:]
            for i, b in enumerate(bounds):
                y[i][~self._region_mask(b, h, w)] = IGNORE_INDEX
        if self.margin > 0:
            self._mask_margins(y, bounds)
        return y

    def _invalid(self, x: torch.Tensor) -> torch.Tensor:
        """(B,H,W) True where any band is not finite or equals its nodata value (CPU)."""
        # a pixel's band sum is finite unless a band is (or, for absurd values, the sum
        # overflows): test every band only at pixels whose sum is not finite
        invalid = ~torch.isfinite(x.sum(dim=1))
        cand = invalid.nonzero(as_tuple=True)
        if cand[0].numel():
            invalid[cand] = ~torch.isfinite(x.permute(0, 2, 3, 1)[cand]).all(dim=1)
        nd = self._nodata_bands
        if nd is not None:  # numpy reduces over the band axis several times faster here
            xa, ref = x.numpy(), self.nodata.numpy()
            if nd is not True:
                xa, ref = xa[:, nd.numpy()], ref[:, nd.numpy()]
            invalid |= torch.from_numpy((xa == ref).any(axis=1))
        return invalid

    def _draws(self, n: int, bands: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None,
                                                 np.ndarray | None]:
        """Per sample, in this order: D4 code, jitter gains and offsets, dropped bands."""
        rng = self._generator()
        d4 = self.augment == "d4"
        t = np.zeros(n, dtype=np.int64) if d4 else None
        gain = np.empty((n, bands), dtype=np.float32) if self.jitter > 0 else None
        off = np.empty((n, bands), dtype=np.float32) if self.jitter > 0 else None
        drop = np.empty((n, bands), dtype=bool) if self.band_dropout > 0 else None
        for i in range(n):
            if t is not None:
                t[i] = rng.integers(8)
            if gain is not None and off is not None:
                gain[i] = rng.uniform(1 - self.jitter, 1 + self.jitter, bands)
                off[i] = rng.uniform(-self.jitter, self.jitter, bands)
            if drop is not None:
                drop[i] = rng.random(bands) < self.band_dropout
        return t, gain, off, drop

    def _augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D4 transform, photometric jitter and band dropout (CPU: numpy views, one copy)."""
        t, gain, off, drop = self._draws(x.shape[0], x.shape[1])
        xa, ya = x.numpy(), y.numpy()
        xo, yo = (batch_tensor(x.shape, x.dtype).numpy(), batch_tensor(y.shape, y.dtype).numpy()) if t is not None \
            else (xa, ya)
        for i in range(xa.shape[0]):
            if t is not None:
                k, flip = D4[int(t[i])]
                xi, yi = xa[i], ya[i]
                if flip:
                    xi, yi = xi[..., ::-1], yi[..., ::-1]
                if k:  # same convention as torch.rot90(t, k, (-2, -1))
                    xi, yi = np.rot90(xi, k, axes=(-2, -1)), np.rot90(yi, k, axes=(-2, -1))
                xo[i], yo[i] = xi, yi
            xi = xo[i]
            if gain is not None and off is not None:
                xi *= gain[i][:, None, None]
                xi += off[i][:, None, None]
            if drop is not None:
                xi[drop[i]] = 0.0  # dropped bands: 0, the band mean
        return torch.from_numpy(xo), torch.from_numpy(yo)


def auto_workers(device: torch.device, devices: int = 1) -> int:
    """DataLoader workers when none are asked for: 0 on a CPU; on a GPU up to 8 per GPU
    process, leaving one core for each (on the 16-core H200 machine 8 workers kept a small
    U-Net at 0.7-0.98 of its model-only speed, docs/performance.md)."""
    if device.type != "cuda":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(0, min(8, cores // max(devices, 1) - 1))


def make_loader(dataset: Any, sampler: Any, collate: Callable[..., Any], cfg: TrainConfig, *,
                pin_memory: bool = False, ring: bool | None = None) -> Any:
    """DataLoader over the sampler's chips; batches are built (``collate``) in the workers.

    ``pin_memory`` (for CUDA) makes the host-to-device copy of each batch asynchronous and
    about 7x faster than from pageable memory. Workers are persistent (they keep their open
    files, GDAL block caches and polygon trees from one epoch to the next); the epoch that
    seeds augmentation reaches them through :class:`BatchMaker`'s shared-memory epoch. The
    workers split this process's GDAL block cache size (``GDAL_CACHEMAX``) between them, at
    least 64 MB each.

    With workers, an ``on_device`` :class:`BatchMaker` and ``ring`` (default: ``pin_memory``),
    workers build batches in shared-memory slots that the main process copies to the GPU
    from (:mod:`geoseg.train.ring`); the caller finishes each batch before drawing the next.
    """
    from torch.utils.data import DataLoader

    workers = cfg.num_workers or 0  # None: not resolved by the caller (auto_workers), none
    prefetch = 2  # the ring's slot count depends on it
    if (pin_memory if ring is None else ring) and workers > 0 and isinstance(collate, BatchMaker):
        collate.attach_ring(workers, prefetch, cfg.batch_size, cfg.tile_size)
    init = None
    if workers > 0:  # the workers share this process's GDAL block cache budget instead of each taking it
        init = partial(_worker_gdal_cache, max(64 << 20, int(get_gdal_config("GDAL_CACHEMAX")) // workers))
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
                      prefetch_factor=prefetch if workers > 0 else None, in_order=True, worker_init_fn=init)


def _worker_gdal_cache(nbytes: int, worker_id: int) -> None:
    """DataLoader worker start: cap GDAL's block cache (GDAL's default is 5 % of the RAM per
    process, so 8 persistent workers could hold 40 % of it as cache)."""
    set_gdal_config("GDAL_CACHEMAX", nbytes)
