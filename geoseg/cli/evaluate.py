"""``geoseg evaluate``: per-class and object-level scores of a class raster against truth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from geoseg.cli import app
from geoseg.cli._options import OverwriteOpt

if TYPE_CHECKING:
    from geoseg.metrics import SegmentationMetrics


def _f(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def metrics_table(m: "SegmentationMetrics", title: str = "per-class scores") -> Any:
    """A rich table of per-class IoU/precision/recall/F1/support plus the macro row."""
    from rich.table import Table
    from rich.text import Text

    from geoseg.cli._console import safe_line

    t = Table("class", "IoU", "precision", "recall", "F1", "support", title=title)
    for row in m.per_class():
        t.add_row(safe_line(row["class"]), _f(row["iou"]), _f(row["precision"]), _f(row["recall"]),  # type: ignore[arg-type]
                  _f(row["f1"]), str(row["support"]))  # type: ignore[arg-type]
    t.add_row(Text("macro", style="bold"), _f(m.miou), _f(m.macro_precision), _f(m.macro_recall), _f(m.macro_f1),
              str(m.total), end_section=True)
    t.add_row(Text("overall accuracy", style="bold"), "", "", "", _f(m.overall_accuracy), "")
    return t


def confusion_table(m: "SegmentationMetrics") -> Any:
    from rich.table import Table
    from rich.text import Text

    from geoseg.cli._console import safe_line

    t = Table("truth \\ prediction", *(safe_line(n) for n in m.names), title="confusion matrix (pixels)")
    for name, row in zip(m.names, m.matrix):
        t.add_row(safe_line(name), *(Text(str(v), style="bold") if i == j else str(v) for j, v in enumerate(row)
                                     for i in [list(m.names).index(name)]))
    return t


@app.command()
def evaluate(
    prediction: Annotated[str, typer.Argument(help="Predicted class raster (e.g. from 'geoseg infer'); a file, URL or GDAL /vsi path.")],
    truth: Annotated[str, typer.Argument(help="Truth: a label raster, or polygons (GPKG, GeoJSON, Shapefile...); a file, URL or GDAL /vsi path.")],
    class_field: Annotated[Optional[str], typer.Option(help="Polygon attribute holding the class name or id.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("-o", "--out-dir", help="Write <stem>_metrics.csv, _confusion.csv, _confusion.png here (default: beside the prediction).")] = None,
    ignore_value: Annotated[Optional[list[int]], typer.Option(help="Truth value meaning unlabelled: a truth raster value, or a class value (or id) of truth polygons, which are then not scored; repeatable [rasters: 0 unless 0 is a class; polygons: none].")] = None,
    objects: Annotated[bool, typer.Option("--objects/--no-objects", help="Object-level precision/recall/F1 (one-to-one matching at IoU > 0.5).")] = True,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score PREDICTION against TRUTH: per-class IoU, precision, recall, F1, macro mIoU, accuracy, confusion matrix."""
    from rich.table import Table

    from geoseg.cli._console import err, out, safe_line
    from geoseg.evaluate import evaluate as run
    from geoseg.io.atomic import output_directory
    from geoseg.io.paths import beside

    with output_directory(out_dir):  # -o DIR is created as infer's is; removed again if evaluate fails
        r = run(prediction, truth, class_field=class_field, out_dir=out_dir or beside(prediction),
                ignore_values=ignore_value or None, object_level=objects, overwrite=overwrite)
    out.print(metrics_table(r.metrics))
    out.print(confusion_table(r.metrics))
    if r.objects:
        t = Table("class", "truth objects", "predicted", "matched", "precision", "recall", "F1",
                  title="objects (one-to-one, IoU > 0.5)")
        for o in r.objects:
            t.add_row(safe_line(o.name), str(o.truth_objects), str(o.predicted_objects), str(o.matched), _f(o.precision),
                      _f(o.recall), _f(o.f1))
        out.print(t)
        note = merged_objects_note(r.metrics, r.objects)
        if note:
            err.print(note)
    if r.note:
        err.print(r.note)
    if r.pred_nodata_pixels:
        err.print(f"{r.pred_nodata_pixels} labelled pixels were skipped because the prediction is nodata there")
    out.print(f"metrics: {r.metrics_csv}\nconfusion: {r.confusion_csv}\nplot: {r.confusion_png}")


def merged_objects_note(metrics: "SegmentationMetrics", objects: Any) -> str:
    """Why a class can score well per pixel and zero per object: its predicted regions are connected
    pixels of one class, so neighbouring objects that touch merge into one region matching none."""
    iou = {row["class"]: row["iou"] for row in metrics.per_class()}
    merged = [o.name for o in objects if o.truth_objects > 0 and o.matched < o.truth_objects / 2
              and o.predicted_objects < o.truth_objects and float(iou.get(o.name, 0.0)) >= 0.5]
    if not merged:
        return ""
    return (f"note: {', '.join(merged)}: good pixel scores but few matched objects: predicted objects are connected "
            "regions of one class, so objects that touch (neighbouring fields) merge into one region that matches "
            "none of them; a model with a boundary class (e.g. background/field/boundary) separates them")
