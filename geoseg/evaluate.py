"""Compare a predicted class raster with ground truth (a raster or polygons). Torch-free.

The truth is put on the prediction's grid: a truth raster through a ``WarpedVRT``
(nearest neighbour, any CRS), polygons reprojected to the prediction's CRS and
rasterized window by window (pixel centres inside a polygon). Pixel metrics stream
over row windows, so memory does not grow with the raster.

Counted pixels: the truth is labelled (not its nodata, not in ``ignore_values``, inside a
polygon for vector truth) and the prediction is not its nodata. Truth classes the model
does not know still count (as errors); the report says how many labelled pixels were
skipped because the prediction was nodata.

Outputs (``out_dir``): ``<stem>_metrics.csv`` (per-class IoU, precision, recall, F1,
support, then the summary and object rows), ``<stem>_confusion.csv`` and
``<stem>_confusion.png``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rasterio.windows import Window

from geoseg.classes import ClassSchema, schema_from_tags
from geoseg.errors import ClassMatchWarning, LabelError, NodataWarning, UsageError, VectorError
from geoseg.io.atomic import atomic_output, check_destination
from geoseg.io.labels import check_label_raster, class_key, no_overlap, polygons_inside, raster_overlaps, read_polygons
from geoseg.io.paths import gdal_path, is_virtual, name_stem
from geoseg.io.raster import open_raster, read_errors
from geoseg.metrics import ObjectMetrics, SegmentationMetrics, connected_objects, match_objects, metrics_from_confusion

#: object-level matching reads whole rasters; above this many pixels it is skipped
MAX_OBJECT_PIXELS = 64_000_000


@dataclass(frozen=True)
class EvaluationReport:
    """Result of :func:`evaluate`."""

    metrics: SegmentationMetrics
    class_ids: tuple[int, ...]
    objects: list[ObjectMetrics] = field(default_factory=list)
    pred_nodata_pixels: int = 0
    metrics_csv: Path | None = None
    confusion_csv: Path | None = None
    confusion_png: Path | None = None
    note: str = ""


def _truth_codes(values: Sequence[Any], schema: ClassSchema | None, path: str, field_name: str) -> dict[str, int]:
    """Map class-field values to class ids: by class name, else as numbers."""
    keys = sorted({class_key(v) for v in values})
    by_name = {c.name: c.id for c in schema.classes} if schema else {}
    out: dict[str, int] = {}
    bad = []
    for k in keys:
        if k in by_name:
            out[k] = by_name[k]
        elif k.startswith("class_") and k[6:].isdigit():
            out[k] = int(k[6:])
        else:
            try:
                v = int(k)
            except ValueError:
                bad.append(k)
                continue
            if not 0 <= v <= 254:
                bad.append(k)
            out[k] = v
    if bad:
        names = ", ".join(by_name) if by_name else "none (the prediction has no geoseg class tags)"
        raise VectorError(f"{path}: {field_name!r} values {', '.join(bad[:6])} match no predicted class "
                          f"(classes: {names}); use the model's class names or numeric class ids")
    return out


def evaluate(prediction: str | os.PathLike[str], truth: str | os.PathLike[str], *, class_field: str | None = None,
             out_dir: str | os.PathLike[str] | None = None, ignore_values: Sequence[int] | None = None,
             object_level: bool = True, iou_threshold: float = 0.5, overwrite: bool = False,
             block_rows: int = 512) -> EvaluationReport:
    """Score ``prediction`` against ``truth`` (a raster, or polygons with ``class_field``).

    Args:
        prediction: class raster (e.g. from ``geoseg infer``); its ``geoseg_classes`` tag
            names the classes.
        truth: label raster, or a vector file of polygons.
        class_field: attribute of the polygons holding the class name or id (vector truth).
        out_dir: write CSVs and the PNG here (None: write nothing).
        ignore_values: truth values meaning unlabelled: raster values (default: 0 unless 0 is a
            class of the prediction), in addition to the truth's nodata; for polygons, class-field
            values or the class ids they map to (default: none), whose polygons are not scored.
        object_level: also match objects one-to-one at IoU > ``iou_threshold`` per class
            (polygons are the truth objects for vector truth; 4-connected components
            otherwise). Skipped for rasters over :data:`MAX_OBJECT_PIXELS`.
        iou_threshold: object matching threshold.
        overwrite: replace existing outputs.
        block_rows: rows per window.

    Raises:
        GeosegError: unreadable inputs, no overlap, no labelled pixel, bad class field.
    """
    # URLs and /vsi paths stay strings (Path() would fold their '//')
    pred_path: Any = gdal_path(prediction) if is_virtual(prediction) else Path(prediction)
    truth_path: Any = gdal_path(truth) if is_virtual(truth) else Path(truth)
    outs: dict[str, Path] = {}
    if out_dir is not None:
        d = Path(out_dir)  # created by the caller (the CLI's output_directory), as infer's -o is
        if not d.is_dir():
            raise UsageError(f"{d}: output directory does not exist; create it first")
        stem = name_stem(pred_path)
        outs = {"metrics": d / f"{stem}_metrics.csv", "confusion": d / f"{stem}_confusion.csv",
                "png": d / f"{stem}_confusion.png"}
        for p in outs.values():
            check_destination(p, overwrite=overwrite, inputs=[pred_path, truth_path])
    is_vector = os.path.splitext(str(truth_path).split("?", 1)[0])[1].lower() not in (
        ".tif", ".tiff", ".vrt", ".img", ".jp2")
    with open_raster(pred_path) as pds:
        if pds.crs is None:
            raise UsageError(f"{pred_path}: prediction has no CRS; it cannot be aligned with the truth")
        if np.dtype(pds.dtypes[0]).kind not in "ui":
            raise UsageError(f"{pred_path}: expected a class raster of integers, got {pds.dtypes[0]}")
        schema = schema_from_tags(pds.tags())
        pnod = pds.nodata
        H, W = pds.height, pds.width
        truth_reader: _VectorTruth | _RasterTruth
        if is_vector:
            truth_reader = _VectorTruth(truth_path, class_field, pds, schema, ignore_values)
        else:
            truth_reader = _RasterTruth(truth_path, pds, schema, ignore_values)
        with truth_reader:
            cm = np.zeros((256, 256), dtype=np.int64)
            pred_nodata_px = 0
            want_obj = object_level and H * W <= MAX_OBJECT_PIXELS
            full_t = np.zeros((H, W), dtype=np.int32) if want_obj else None
            full_p = np.zeros((H, W), dtype=np.uint8) if want_obj else None
            full_inst = np.zeros((H, W), dtype=np.int32) if (want_obj and is_vector) else None
            for r0 in range(0, H, block_rows):
                h = min(block_rows, H - r0)
                win = Window(0, r0, W, h)
                with read_errors(str(pred_path), win):
                    pred = pds.read(1, window=win).astype(np.int64)
                t, labelled, inst = truth_reader.read(win)
                pvalid = np.ones_like(labelled) if pnod is None else pred != int(pnod)
                ok = labelled & pvalid & (pred >= 0) & (pred < 256)
                pred_nodata_px += int((labelled & ~pvalid).sum())
                cm += np.bincount(t[ok] * 256 + pred[ok], minlength=65536).reshape(256, 256)
                if want_obj:
                    assert full_t is not None and full_p is not None
                    full_t[r0:r0 + h] = np.where(ok, t, -1)
                    full_p[r0:r0 + h] = np.where(pvalid, pred, 255).astype(np.uint8)
                    if full_inst is not None and inst is not None:
                        full_inst[r0:r0 + h] = np.where(ok, inst, 0)
    if cm.sum() == 0:
        raise LabelError(f"{truth_path}: no labelled truth pixel overlaps a predicted pixel of {pred_path}; check "
                         "that they cover the same area (and their CRS)")
    if isinstance(truth_reader, _RasterTruth):
        _warn_class_match(schema, truth_reader.schema, truth_path, cm, zero_scored=ignore_values is None)
    ids = sorted({int(i) for i in np.flatnonzero(cm.sum(axis=1))} | {int(i) for i in np.flatnonzero(cm.sum(axis=0))}
                 | (set(schema.ids) if schema else set()))
    sub = cm[np.ix_(ids, ids)]
    names = [schema.name_of(i) if schema else f"class_{i}" for i in ids]
    metrics = metrics_from_confusion(sub, names)
    objects: list[ObjectMetrics] = []
    note = ""
    if object_level and not want_obj:
        note = f"object-level metrics skipped: raster larger than {MAX_OBJECT_PIXELS} pixels"
    if want_obj:
        assert full_t is not None and full_p is not None
        counted = full_t >= 0
        for cid, name in zip(ids, names):
            if full_inst is not None:
                t_obj = np.where(full_t == cid, full_inst, 0)
            else:
                t_obj = connected_objects(full_t == cid)
            p_obj = connected_objects(full_p == cid)
            objects.append(match_objects(t_obj, p_obj, threshold=iou_threshold, name=name, counted=counted))
    report = EvaluationReport(metrics=metrics, class_ids=tuple(int(i) for i in ids), objects=objects,
                              pred_nodata_pixels=pred_nodata_px, note=note)
    if outs:
        _write_metrics_csv(outs["metrics"], report)
        _write_confusion_csv(outs["confusion"], report)
        write_confusion_png(outs["png"], metrics)
        report = EvaluationReport(metrics=metrics, class_ids=report.class_ids, objects=objects,
                                  pred_nodata_pixels=pred_nodata_px, metrics_csv=outs["metrics"],
                                  confusion_csv=outs["confusion"], confusion_png=outs["png"], note=note)
    return report


def _warn_class_match(schema: ClassSchema | None, truth_schema: ClassSchema | None, truth: Any, cm: np.ndarray,
                      zero_scored: bool) -> None:
    """A truth raster's values are scored as the prediction's class ids: say so where that may be wrong (its
    own class names disagree, or it names none while the prediction's classes have names), and when its
    value 0 is scored as a class (0 is a class of the prediction, so 0 is not taken as unlabelled)."""
    if schema is None:
        return
    scored = [int(i) for i in np.flatnonzero(cm.sum(axis=1))]
    if truth_schema is not None:
        differ = [(i, truth_schema.name_of(i), schema.name_of(i)) for i in scored
                  if i in truth_schema.ids and i in schema.ids
                  and truth_schema.name_of(i).casefold() != schema.name_of(i).casefold()]
        if differ:
            warnings.warn(f"{truth}: its class ids name other classes than the prediction's ("
                          + "; ".join(f"{i} is {t!r} there, {p!r} here" for i, t, p in differ[:4])
                          + "); scored by id, so these metrics compare different classes", ClassMatchWarning,
                          stacklevel=3)
    elif any(n != f"class_{i}" for i, n in zip(schema.ids, schema.names)):
        shown = ", ".join(f"{i} {schema.name_of(i)!r}" for i in scored[:6]) + (", ..." if len(scored) > 6 else "")
        warnings.warn(f"{truth}: names no classes, so its values are scored as the prediction's class ids ({shown}); "
                      "if they mean other classes (a model trained on polygon names numbers its classes itself), "
                      "these metrics are wrong", ClassMatchWarning, stacklevel=3)
    if zero_scored and 0 in schema.ids and cm[0].sum():
        warnings.warn(f"{truth}: its value 0 ({int(cm[0].sum())} pixels) is scored as the prediction's class 0 "
                      f"({schema.name_of(0)!r}); pass `ignore_values` 0 if 0 means unlabelled there",
                      ClassMatchWarning, stacklevel=3)


class _RasterTruth:
    """Truth raster warped onto the prediction grid (nearest neighbour)."""

    def __init__(self, path: Path, pds: Any, schema: ClassSchema | None, ignore_values: Sequence[int] | None) -> None:

        self.src = open_raster(path)
        self.schema = schema_from_tags(self.src.tags())  # a class raster of geoseg's names its classes
        try:
            check_label_raster(self.src, path, "truth raster")
            if not raster_overlaps(self.src, pds.crs, tuple(pds.bounds)):
                raise no_overlap(path, "the truth does", f"the prediction {pds.name}")
        except LabelError:
            self.src.close()
            raise
        if ignore_values is None:
            ignore_values = [] if (schema and 0 in schema.ids) else [0]
        self.ignore = [int(v) for v in ignore_values]
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        # without declared nodata the warp would fill the pixels outside the truth's footprint with 0,
        # a class: an alpha band marks the footprint instead, so those pixels are never scored
        self.vrt = WarpedVRT(self.src, crs=pds.crs, transform=pds.transform, width=pds.width, height=pds.height,
                             resampling=Resampling.nearest, nodata=self.src.nodata,
                             add_alpha=self.src.nodata is None)
        self.not_classes = 0  # labelled pixels whose value cannot be a class (< 0 or >= 256)
        self.path = path

    def __enter__(self) -> "_RasterTruth":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.vrt.close()
        self.src.close()
        if self.not_classes and exc[0] is None:
            warnings.warn(f"{self.path}: {self.not_classes} truth pixels hold values that cannot be classes "
                          "(below 0 or above 255); they were not scored", NodataWarning, stacklevel=3)

    def read(self, win: Window) -> tuple[np.ndarray, np.ndarray, None]:
        with read_errors(str(self.path), win):
            a = self.vrt.read(1, window=win, masked=True)
        labelled = ~np.ma.getmaskarray(a)
        t = np.asarray(a.data).astype(np.int64)
        for v in self.ignore:
            labelled &= t != v
        classes = (t >= 0) & (t < 256)
        self.not_classes += int((labelled & ~classes).sum())
        return t, labelled & classes, None


class _VectorTruth:
    """Polygons reprojected to the prediction CRS, rasterized per window (class and instance ids)."""

    def __init__(self, path: Path, class_field: str | None, pds: Any, schema: ClassSchema | None,
                 ignore_values: Sequence[int] | None = None) -> None:
        import shapely

        if not class_field:
            raise UsageError(f"{path}: vector truth needs `class_field`, the attribute holding each polygon's class")
        gdf = read_polygons(path, class_field)
        if ignore_values:
            # polygons whose class value (or the class id it maps to) means "unlabelled" are not scored
            ignored = {str(int(v)) for v in ignore_values}
            keep = [class_key(v) not in ignored for v in gdf[class_field]]
            gdf = gdf[keep]
            if len(gdf) == 0:
                raise LabelError(f"{path}: every polygon has an ignored {class_field!r} value "
                                 f"({', '.join(sorted(ignored))})")
        gdf, inside = polygons_inside(gdf, pds.crs, tuple(pds.bounds))
        gdf = gdf[inside]
        if len(gdf) == 0:
            raise no_overlap(path, "the polygons do", f"the prediction {pds.name}")
        codes = _truth_codes(list(gdf[class_field]), schema, str(path), class_field)
        cls = np.array([codes[class_key(v)] for v in gdf[class_field]], dtype=np.int64)
        if ignore_values:  # also by the class id a name maps to
            keep_ids = ~np.isin(cls, [int(v) for v in ignore_values])
            gdf, cls = gdf[keep_ids], cls[keep_ids]
        self.geoms = gdf.geometry.to_numpy()
        self.cls = cls
        self.tree = shapely.STRtree(self.geoms)
        self.transform = pds.transform
        self.width = pds.width

    def __enter__(self) -> "_VectorTruth":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def read(self, win: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import shapely
        from rasterio.features import rasterize
        from rasterio.windows import bounds as wbounds
        from rasterio.windows import transform as wtransform

        h, w = int(win.height), int(win.width)
        inst = np.zeros((h, w), dtype=np.int32)
        hits = self.tree.query(shapely.box(*wbounds(win, self.transform)))
        if len(hits):
            hits = np.sort(hits)
            inst = rasterize(((self.geoms[i], int(i) + 1) for i in hits), out_shape=(h, w),
                             transform=wtransform(win, self.transform), fill=0, dtype="int32")
        labelled = inst > 0
        t = np.zeros((h, w), dtype=np.int64)
        t[labelled] = self.cls[inst[labelled] - 1]
        return t, labelled, inst


def _fmt(v: float) -> str:
    return "" if isinstance(v, float) and math.isnan(v) else (f"{v:.6g}" if isinstance(v, float) else str(v))


def _write_metrics_csv(path: Path, r: EvaluationReport) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scope", "class_id", "class", "iou", "precision", "recall", "f1", "support"])
    m = r.metrics
    for cid, row in zip(r.class_ids, m.per_class()):
        w.writerow(["class", cid, row["class"], *(_fmt(row[k]) for k in ("iou", "precision", "recall", "f1")),  # type: ignore[arg-type]
                    row["support"]])
    w.writerow(["macro", "", "", _fmt(m.miou), _fmt(m.macro_precision), _fmt(m.macro_recall), _fmt(m.macro_f1),
                m.total])
    w.writerow(["overall_accuracy", "", "", "", "", "", _fmt(m.overall_accuracy), m.total])
    for o in r.objects:
        w.writerow(["objects", "", o.name, "", _fmt(o.precision), _fmt(o.recall), _fmt(o.f1), o.truth_objects])
    with atomic_output(path, overwrite=True, checked=True) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def _write_confusion_csv(path: Path, r: EvaluationReport) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = r.metrics.names
    w.writerow(["truth \\ prediction", *names])
    for n, row in zip(names, r.metrics.matrix):
        w.writerow([n, *(int(v) for v in row)])
    with atomic_output(path, overwrite=True, checked=True) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def write_confusion_png(path: str | os.PathLike[str], m: SegmentationMetrics) -> Path:
    """Plot the confusion matrix (row-normalised colours, pixel counts as text). Atomic."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    mat = m.matrix.astype(np.float64)
    rows = mat.sum(axis=1, keepdims=True)
    norm = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    n = len(m.names)
    side = max(4.0, 0.7 * n + 2.5)
    fig = Figure(figsize=(side + 1, side), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of truth row")
    ax.set_xticks(range(n), m.names, rotation=45, ha="right")
    ax.set_yticks(range(n), m.names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(mat[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"OA {m.overall_accuracy:.3f}, macro IoU {m.miou:.3f}, macro F1 {m.macro_f1:.3f}")
    fig.tight_layout()
    p = Path(path)
    with atomic_output(p, overwrite=True, checked=True) as tmp:
        fig.savefig(tmp, format="png")
    return p
