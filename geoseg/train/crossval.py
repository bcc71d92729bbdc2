"""Spatial cross-validation of a training configuration: an honest estimate of accuracy.

The labels are cut into *units* that are trained on or scored as a whole, never split:

* polygons and points (vector labels): units are spatial groups of features (k-means on their
  centres, about three features a group), so neighbouring polygons, which look alike, fall on the same
  side; folds are stratified by class (scikit-learn's ``StratifiedGroupKFold``);
* a label raster: units are the square blocks of the validation split (``--val-block``), dealt
  to the folds at random.

Each fold trains a model with the run's own settings on the other folds' labels (its own inner
validation split included) and predicts the window that holds the fold's labels. Scores are computed
from the confusion matrix pooled over folds; their 95% confidence intervals come from a bootstrap over
units (spatially independent samples, unlike pixels).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from geoseg.errors import UsageError
from geoseg.train.config import TrainConfig

#: bootstrap resamples of the units for the confidence intervals
BOOTSTRAP = 2000


@dataclass
class Unit:
    """A group of labels trained on or scored together: its pixel window and how to draw its truth."""

    window: tuple[int, int, int, int]  # row0, row1, col0, col1 in the image grid
    group: int
    stratum: int  # class index (the majority class for blocks)
    geoms: list[Any] = field(default_factory=list)  # vector: (geometry, class index + 1) in the image CRS
    rows: list[int] = field(default_factory=list)  # vector: the features' rows in the label file


@dataclass
class CrossValidation:
    """A spatial cross-validation estimate (what ``geoseg model info`` shows as ``spatial_cv``)."""

    folds: int
    units: int
    method: str
    names: list[str]
    confusion: np.ndarray
    unit_confusions: np.ndarray = field(repr=False)
    seconds: float = 0.0

    def _scores(self, cm: np.ndarray) -> tuple[Any, Any, np.ndarray]:
        """OA, macro F1 and per-class F1 of one confusion matrix, or of a stack of them (the bootstrap)."""
        tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
        truth, pred = cm.sum(axis=-1), cm.sum(axis=-2)
        total = cm.sum(axis=(-2, -1))
        oa = tp.sum(axis=-1) / np.maximum(total, 1)
        f1 = np.where(truth + pred > 0, 2 * tp / np.maximum(truth + pred, 1), np.nan)
        present = truth > 0
        macro = np.where(present.any(axis=-1), np.nansum(np.where(present, f1, 0), axis=-1)
                         / np.maximum(present.sum(axis=-1), 1), np.nan)
        return oa, macro, f1

    @property
    def overall_accuracy(self) -> float:
        return float(self._scores(self.confusion)[0])

    @property
    def macro_f1(self) -> float:
        return float(self._scores(self.confusion)[1])

    def intervals(self, seed: int = 0) -> dict[str, tuple[float, float]]:
        """95% percentile intervals of OA and macro F1 from a bootstrap over the units."""
        u = len(self.unit_confusions)
        if u < 2:
            return {}
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(u, np.full(u, 1.0 / u), size=BOOTSTRAP)  # (B, U) resample weights
        cms = np.tensordot(counts, self.unit_confusions, axes=(1, 0))
        oa, macro, _ = self._scores(cms)
        return {k: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
                for k, v in (("overall_accuracy", oa), ("macro_f1", macro))}

    def to_dict(self) -> dict[str, Any]:
        _, _, f1 = self._scores(self.confusion)
        ci = self.intervals()
        support = self.confusion.sum(axis=1)
        return {
            "method": self.method, "folds": self.folds, "units": self.units,
            "overall_accuracy": round(self.overall_accuracy, 4), "macro_f1": round(self.macro_f1, 4),
            "overall_accuracy_ci95": [round(v, 4) for v in ci.get("overall_accuracy", ())],
            "macro_f1_ci95": [round(v, 4) for v in ci.get("macro_f1", ())],
            "per_class_f1": {n: (None if math.isnan(v) else round(float(v), 4)) for n, v in zip(self.names, f1)},
            "support": {n: int(s) for n, s in zip(self.names, support)},
            "confusion": self.confusion.tolist(), "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        ci = self.intervals()

        def part(label: str, key: str, v: float) -> str:
            lo_hi = ci.get(key)
            return f"{label} {v:.3f}" + (f" (95% CI {lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if lo_hi else "")

        return (f"spatial {self.folds}-fold CV over {self.units} units: "
                f"{part('OA', 'overall_accuracy', self.overall_accuracy)}, "
                f"{part('macro F1', 'macro_f1', self.macro_f1)}")


# ---------------------------------------------------------------------- units and folds
def _vector_units(cfg: TrainConfig, gdf: Any, grid: Any, codes: dict[str, int]) -> list[Unit]:
    import shapely
    from sklearn.cluster import KMeans

    from geoseg.io.labels import class_key

    assert cfg.class_field is not None
    proj = gdf.to_crs(grid.crs).geometry.intersection(shapely.box(*grid.bounds))
    cls = np.array([codes.get(class_key(v), 0) - 1 for v in gdf[cfg.class_field]])
    keep = np.flatnonzero((cls >= 0) & ~proj.is_empty.to_numpy())
    if len(keep) == 0:
        raise UsageError("cross-validation: no labelled feature inside the image")
    centres = np.array([(g.centroid.x, g.centroid.y) for g in proj.iloc[keep]])
    n_groups = max(1, min(len(keep), round(len(keep) / 3)))
    groups = (KMeans(n_clusters=n_groups, n_init=4, random_state=0).fit_predict(centres)
              if n_groups > 1 else np.zeros(len(keep), dtype=int))
    inv = ~grid.transform
    units: dict[int, Unit] = {}
    for i, g in zip(keep, groups):
        geom = proj.iloc[i]
        x0, y0, x1, y1 = geom.bounds
        c0, r0 = inv @ (x0, y1)
        c1, r1 = inv @ (x1, y0)
        win = (max(0, math.floor(r0)), min(grid.height, math.ceil(r1) + 1),
               max(0, math.floor(c0)), min(grid.width, math.ceil(c1) + 1))
        u = units.setdefault(int(g), Unit(win, int(g), int(cls[i])))
        u.window = (min(u.window[0], win[0]), max(u.window[1], win[1]),
                    min(u.window[2], win[2]), max(u.window[3], win[3]))
        u.geoms.append((geom, int(cls[i]) + 1))
        u.rows.append(int(i))
    for u in units.values():  # a group's stratum: its most common class
        u.stratum = int(np.bincount([c - 1 for _, c in u.geoms]).argmax())
    return list(units.values())


def _raster_units(plan: Any, grid: Any) -> list[Unit]:
    inv = ~grid.transform
    units = []
    for i, box in enumerate([*plan.train_regions, *plan.val_regions]):
        c0, r0 = inv @ (box[0], box[3])
        c1, r1 = inv @ (box[2], box[1])
        units.append(Unit((round(r0), round(r1), round(c0), round(c1)), i, 0))
    return units


def assign_folds(units: list[Unit], k: int, seed: int) -> np.ndarray:
    """Fold index per unit: stratified by class where every class has enough units, else at random."""
    from sklearn.model_selection import StratifiedGroupKFold

    strata = np.array([u.stratum for u in units])
    fold = np.zeros(len(units), dtype=int)
    if np.bincount(strata).max() >= k and len(set(strata.tolist())) > 1:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the least populated class has only n members"
            sgk = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            for f, (_, test) in enumerate(sgk.split(np.zeros(len(units)), strata, np.arange(len(units)))):
                fold[test] = f
    else:
        fold[np.random.default_rng(seed).permutation(len(units))] = np.arange(len(units)) % k
    return fold


# ---------------------------------------------------------------------- files for one fold
def _fold_vector_labels(cfg: TrainConfig, gdf: Any, rows: list[int], path: Path) -> None:
    assert cfg.class_field is not None
    gdf.iloc[sorted(rows)][[cfg.class_field, gdf.geometry.name]].to_parquet(path)


@contextmanager
def _labels_on_grid(cfg: TrainConfig, grid: Any) -> Iterator[tuple[Any, Any]]:
    """The label raster and a nearest-neighbour view of it on the image grid (as training reads it)."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from geoseg.io.raster import open_raster

    assert cfg.labels is not None
    with open_raster(cfg.labels) as src, WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                                                   height=grid.height, resampling=Resampling.nearest,
                                                   nodata=src.nodata) as vrt:
        yield src, vrt


def _fold_raster_labels(cfg: TrainConfig, held: list[Unit], path: Path, grid: Any) -> None:
    """The label raster on the image grid with the held-out blocks set to an ignored value, by row bands."""
    import rasterio
    from rasterio.windows import Window

    with _labels_on_grid(cfg, grid) as (src, vrt):
        nodata = src.nodata if src.nodata is not None else (cfg.ignore_values[0] if cfg.ignore_values else None)
        if nodata is None:
            raise UsageError("cross-validation of a label raster needs a nodata value or `ignore_values`")
        prof = dict(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=src.dtypes[0],
                    crs=grid.crs, transform=grid.transform, nodata=nodata, tiled=True, compress="deflate")
        with rasterio.open(path, "w", **prof) as dst:
            for r0 in range(0, grid.height, 512):
                h = min(512, grid.height - r0)
                a = vrt.read(1, window=Window(0, r0, grid.width, h))
                for u in held:
                    ur0, ur1, uc0, uc1 = u.window
                    lo, hi = max(ur0, r0), min(ur1, r0 + h)
                    if lo < hi:
                        a[lo - r0:hi - r0, uc0:uc1] = nodata
                dst.write(a, 1, window=Window(0, r0, grid.width, h))


def _window_vrt(paths: tuple[str, ...], win: tuple[int, int, int, int], path: Path) -> None:
    """A VRT of the images' bands (stacked in order) cut to ``win``: predicting a window reads only it."""
    import rasterio
    from xml.sax.saxutils import escape

    from geoseg.io.raster import open_raster

    r0, r1, c0, c1 = win
    bands = []
    with open_raster(paths[0]) as ds:
        t = ds.transform @ ds.transform.translation(c0, r0)
        crs = ds.crs.to_wkt()
    for p in paths:
        with rasterio.open(p) as ds:
            for b in range(1, ds.count + 1):
                nd = ds.nodatavals[b - 1]
                bands.append((p, b, ds.dtypes[b - 1], nd))
    dt_map = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "float32": "Float32", "float64": "Float64", "int64": "Int64", "uint64": "UInt64"}
    xml = [f'<VRTDataset rasterXSize="{c1 - c0}" rasterYSize="{r1 - r0}">', f"<SRS>{escape(crs)}</SRS>",
           f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"]
    for i, (p, b, dt, nd) in enumerate(bands, 1):
        xml.append(f'<VRTRasterBand dataType="{dt_map[dt]}" band="{i}">')
        if nd is not None:
            xml.append(f"<NoDataValue>{nd!r}</NoDataValue>")
        src_name = escape(str(Path(p).resolve()) if Path(p).exists() else p)
        xml.append(f'<SimpleSource><SourceFilename relativeToVRT="0">{src_name}'
                   f"</SourceFilename><SourceBand>{b}</SourceBand>"
                   f'<SrcRect xOff="{c0}" yOff="{r0}" xSize="{c1 - c0}" ySize="{r1 - r0}"/>'
                   f'<DstRect xOff="0" yOff="0" xSize="{c1 - c0}" ySize="{r1 - r0}"/></SimpleSource>')
        xml.append("</VRTRasterBand>")
    xml.append("</VRTDataset>")
    path.write_text("\n".join(xml), encoding="utf-8")


# ---------------------------------------------------------------------- scoring
def _unit_confusion(unit: Unit, p: np.ndarray, label_window: np.ndarray | None, grid: Any, n: int) -> np.ndarray:
    """Confusion matrix (truth x prediction, class indices) of one unit's labelled pixels; ``p`` is the
    prediction over the unit's window, ``label_window`` its truth (raster labels) or None (drawn from
    the unit's features)."""
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    r0, r1, c0, c1 = unit.window
    if label_window is not None:
        t = label_window
    else:
        wt = window_transform(Window(c0, r0, c1 - c0, r1 - r0), grid.transform)
        t = rasterize(unit.geoms, out_shape=(r1 - r0, c1 - c0), transform=wt, fill=0, dtype="int32") - 1
    ok = (t >= 0) & (p >= 0)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (t[ok], p[ok]), 1)
    missing = (t >= 0) & (p < 0)  # nodata or a class this fold's model never saw: wrong, never skipped
    if missing.any():
        wrong = (t[missing] + 1) % n
        np.add.at(cm, (t[missing], wrong), 1)
    return cm


def spatial_cross_validation(cfg: TrainConfig, folds: int = 3, *, log: Callable[[str], None] | None = None,
                             on_fold: Callable[[int, CrossValidation], None] | None = None) -> CrossValidation:
    """Estimate the accuracy of training with ``cfg`` by spatial ``folds``-fold cross-validation.

    ``on_fold(i, so_far)`` is called after each fold with the estimate pooled over the folds done
    (``geoseg tune`` prunes hopeless trials there by raising).
    """
    import rasterio

    from rasterio.windows import Window

    from geoseg.models import read_meta
    from geoseg.pipeline import predict_raster
    from geoseg.train.data import image_grid, plan_labels
    from geoseg.train.loop import train

    t0 = time.perf_counter()
    if folds < 2:
        raise UsageError(f"`cv` {folds}: use at least 2 folds (or 0 for none)")
    grid = image_grid(cfg.images)
    full = dataclasses.replace(cfg, val_split=0.0)
    plan = plan_labels(full, grid)
    try:
        names = plan.schema.names
        n = len(names)
        gdf = None
        if plan.kind == "vector":
            from geoseg.io.labels import read_polygons

            assert cfg.vector_labels is not None and cfg.class_field is not None
            gdf = read_polygons(cfg.vector_labels, cfg.class_field)
            units = _vector_units(cfg, gdf, grid, plan.split["codes"])
            method = "vector features in spatial groups (k-means), stratified by class"
        else:
            units = _raster_units(plan, grid)
            method = f"label-raster blocks of {cfg.block_size} px"
        if len(units) < folds:
            todo = (f"smaller spatial blocks (`val_block`, now {cfg.block_size} px; for tune, val_block in its "
                    "--config)" if plan.kind == "raster" else "more labelled places")
            raise UsageError(f"cross-validation needs at least {folds} spatially separate label groups; "
                             f"found {len(units)}: use {todo}" + (" or fewer folds" if folds > 2 else ""))
        fold_of = assign_folds(units, folds, cfg.seed)
        unit_cms = np.zeros((len(units), n, n), dtype=np.int64)
        with tempfile.TemporaryDirectory(prefix="geoseg-cv-") as td:
            tmp = Path(td)
            for f in range(folds):
                held = [u for u, k in zip(units, fold_of) if k == f]
                kept = [u for u, k in zip(units, fold_of) if k != f]
                if not held:
                    continue
                overrides: dict[str, Any] = {}
                if plan.kind == "vector":
                    lp = tmp / f"fold{f}.parquet"
                    _fold_vector_labels(cfg, gdf, [r for u in kept for r in u.rows], lp)
                    overrides["vector_labels"] = str(lp)
                else:
                    lp = tmp / f"fold{f}.tif"
                    _fold_raster_labels(cfg, held, lp, grid)
                    overrides["labels"] = str(lp)
                model = tmp / f"fold{f}.pt"
                fcfg = dataclasses.replace(cfg, output=str(model), overwrite=True, resume=False, cv=0, **overrides)
                if log:
                    log(f"cross-validation fold {f + 1}/{folds}: training on {len(kept)} units, scoring {len(held)}")
                train(fcfg)
                r0 = min(u.window[0] for u in held)
                r1 = max(u.window[1] for u in held)
                c0 = min(u.window[2] for u in held)
                c1 = max(u.window[3] for u in held)
                vrt = tmp / f"fold{f}.vrt"
                _window_vrt(grid.paths, (r0, r1, c0, c1), vrt)
                out = tmp / f"fold{f}.tif"
                predict_raster(vrt, model, out, overwrite=True, device=cfg.device)
                schema = read_meta(model).schema
                lut = np.full(256, -1, dtype=np.int64)
                for cid, name in zip(schema.ids, schema.names):
                    if name in names:
                        lut[cid] = names.index(name)
                # window by window: the held-out labels may span the whole image
                with rasterio.open(out) as ds, (_labels_on_grid(cfg, grid) if plan.kind == "raster"
                                                else nullcontext((None, None))) as (_, labels):
                    for i, (u, k) in enumerate(zip(units, fold_of)):
                        if k == f:
                            ur0, ur1, uc0, uc1 = u.window
                            pred = lut[ds.read(1, window=Window(uc0 - c0, ur0 - r0, uc1 - uc0, ur1 - ur0))]
                            truth = None if labels is None else _truth_block(labels, cfg, u, plan.lut)
                            unit_cms[i] = _unit_confusion(u, pred, truth, grid, n)
                if on_fold is not None:
                    done = np.isin(fold_of, np.arange(f + 1))
                    on_fold(f, CrossValidation(folds, int(done.sum()), method, names, unit_cms[done].sum(axis=0),
                                               unit_cms[done], time.perf_counter() - t0))
        return CrossValidation(folds, len(units), method, names, unit_cms.sum(axis=0), unit_cms,
                               time.perf_counter() - t0)
    finally:
        plan.close()


def _truth_block(vrt: Any, cfg: TrainConfig, unit: Unit, lut: np.ndarray) -> np.ndarray:
    """Class indices (-1: unlabelled) of a block of the label raster (``vrt``: on the image grid)."""
    from rasterio.windows import Window

    r0, r1, c0, c1 = unit.window
    a = vrt.read(1, window=Window(c0, r0, c1 - c0, r1 - r0), masked=True)
    v = np.asarray(a.filled(-1)).astype(np.int64)
    ok = (v >= 0) & (v < len(lut))
    for iv in cfg.ignore_values:
        ok &= v != int(iv)
    out = np.full(v.shape, -1, dtype=np.int64)
    out[ok] = lut[v[ok]]
    out[out == 255] = -1  # IGNORE_INDEX in the lookup: a value the class map drops
    return out


def record_cross_validation(path: str | Path, cv: CrossValidation) -> None:
    """Store ``cv`` in the checkpoint's ``training.spatial_cv``."""
    from geoseg.models.checkpoint import update_training_record

    update_training_record(path, spatial_cv=cv.to_dict())
