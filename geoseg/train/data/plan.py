"""The label plan: classes, the spatial train/validation split and the training regions (numpy, rasterio, shapely).

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
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rasterio.windows import Window

from geoseg.classes import ClassInfo, ClassSchema, default_colours
from geoseg.errors import LabelError, UsageError
from geoseg.io.labels import check_label_raster, class_key, no_overlap, polygons_inside, raster_overlaps, read_polygons
from geoseg.io.raster import open_raster
from geoseg.train.auto import val_split_of
from geoseg.train.config import IGNORE_INDEX, TrainConfig
from geoseg.train.data.grid import Box, ImageGrid


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
        raise UsageError(f"`class_map` source(s) {', '.join(unknown)} are not among the label values "
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
        warnings.warn(f"`class_map` drops the labels {', '.join(dropped[:20])}: their pixels are not trained on",
                      UserWarning, stacklevel=2)
    if not groups:
        raise LabelError("no classes left after `class_map` (every class was dropped)")
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
        # every key is an integer in 0..254 here
        entries = sorted(((min(int(k) for k in ks), name, ks) for name, ks in groups.items()), key=lambda e: e[0])
    else:
        entries = [(i, name, groups[name]) for i, name in enumerate(sorted(groups))]
    classes = []
    lut: dict[str, int] = {}
    nice_names = [f"class_{name}" if as_int(name) is not None and all_int else name for _, name, _ in entries]
    defaults = default_colours(nice_names)  # each class its own colour
    for idx, ((cid, name, ks), nice) in enumerate(zip(entries, nice_names)):
        col = (colours or {}).get(int(cid)) or defaults[idx]
        classes.append(ClassInfo(int(cid), nice, (int(col[0]), int(col[1]), int(col[2]))))
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

    path = cfg.labels
    assert path is not None
    with open_raster(path) as src:
        check_label_raster(src, path, "label raster")
        if not raster_overlaps(src, grid.crs, grid.bounds):
            raise no_overlap(path, "the labels do", f"the image {grid.paths[0]}")
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
        raise LabelError(f"{path}: no labelled pixels inside the image (all nodata or in `ignore_values` "
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
        raise LabelError(f"{path}: every labelled class was dropped by `class_map`")
    blocks = sorted(per_block)
    rng = np.random.default_rng(cfg.seed)
    order = [blocks[i] for i in rng.permutation(len(blocks))]
    val: list[tuple[int, int]] = []
    if val_split_of(cfg) > 0:
        if len(blocks) < 2:
            raise UsageError(f"the labels lie in a single {bs}-pixel block, so no spatial validation split is "
                             f"possible; use a smaller `val_block` (>= `tile_size`) or `val_split` 0")
        target = max(1, int(round(val_split_of(cfg) * len(blocks))))
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
    if cfg.pixels:
        return  # no chips are read
    if cfg.tile_size > min(grid.width, grid.height):
        m = cfg.size_multiple
        fit = min(grid.width, grid.height) // m * m
        raise UsageError(f"`tile_size` {cfg.tile_size} exceeds the image ({grid.width}x{grid.height} px); "
                         f"use `tile_size` <= {fit}")


def _plan_vector(cfg: TrainConfig, grid: ImageGrid) -> LabelPlan:
    import shapely

    assert cfg.vector_labels is not None and cfg.class_field is not None
    path = cfg.vector_labels
    gdf = read_polygons(path, cfg.class_field)
    proj, inside = polygons_inside(gdf, grid.crs, grid.bounds)
    if not inside.any():
        raise no_overlap(path, "the polygons do", f"the image {grid.paths[0]}")
    img_box = shapely.box(*grid.bounds)
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
    if val_split_of(cfg) > 0:
        for c in range(n):
            idx = np.flatnonzero(cls == c)
            if len(idx) < 2:
                single.append(schema.classes[c].name)
                continue
            k = min(max(1, int(round(val_split_of(cfg) * len(idx)))), len(idx) - 1)
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
    for key, index in lut_map.items():
        codes[key] = index + 1
    rx, ry = grid.res
    clipped = proj.geometry.intersection(img_box)
    # a point labels one pixel: its "area" is one pixel
    area_px = np.where(proj.geometry.geom_type.isin(["Point", "MultiPoint"]).to_numpy(),
                       shapely.get_num_geometries(clipped.to_numpy()),
                       shapely.area(clipped.to_numpy()) / (rx * ry))  # in pixels of the image grid, any CRS
    train_counts = np.bincount(cls[~is_val], weights=area_px[~is_val], minlength=n).round().astype(np.int64)
    train_regions = [grid.snap(tuple(g.bounds), cfg.tile_size) for g in clipped[~is_val]]
    val_regions: list[Box] = []
    if is_val.any():
        ub = shapely.union_all(clipped[is_val].to_numpy()).bounds
        val_regions = [grid.snap(tuple(ub), cfg.tile_size)]
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
