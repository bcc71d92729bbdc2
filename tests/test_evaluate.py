"""``geoseg evaluate``: alignment, ignored pixels, outputs, errors (hand-computed expectations)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from rasterio.transform import from_origin

from geoseg.classes import ClassSchema
from geoseg.errors import LabelError, OutputExistsError, VectorError

TR = from_origin(500000.0, 5300000.0, 10.0, 10.0)
SCHEMA = ClassSchema.from_names(["crop", "forest", "water"], ids=[1, 2, 5])


def _pred(make_raster: Callable[..., Path]) -> Path:
    a = np.full((20, 30), 1, dtype=np.uint8)
    a[:, 15:] = 2
    a[15:, :] = 5
    a[0, 0] = 255  # prediction nodata
    p = make_raster(a, name="pred.tif", transform=TR, nodata=255)
    import rasterio

    with rasterio.open(p, "r+") as ds:
        ds.update_tags(geoseg_classes=SCHEMA.to_json())
    return p


def test_raster_truth_hand_computed(tmp_path: Path, make_raster: Callable[..., Path]) -> None:
    from geoseg.evaluate import evaluate

    pred = _pred(make_raster)
    t = np.full((20, 30), 1, dtype=np.uint8)
    t[:, 10:] = 2          # truth forest starts 5 columns earlier than predicted
    t[15:, :] = 5
    t[:2, :] = 0           # unlabelled rows
    t[19, 29] = 9          # a class the model does not know
    truth = make_raster(t, name="truth.tif", transform=TR)
    out = tmp_path / "o"
    out.mkdir()
    r = evaluate(pred, truth, out_dir=out)
    # counted: rows 2..19 (18 rows x 30 = 540 px); pred nodata at (0,0) is in an unlabelled row
    m = r.metrics
    assert r.class_ids == (1, 2, 5, 9)
    assert m.total == 540
    # rows 2..14: truth crop cols 0-9 (130 px) all predicted crop; truth forest cols 10-29 (260 px):
    # cols 10-14 predicted crop (65 px), cols 15-29 forest (195 px); rows 15..19 water (150 px, one is 9)
    expected = np.array([[130, 0, 0, 0],
                         [65, 195, 0, 0],
                         [0, 0, 149, 0],
                         [0, 0, 1, 0]])
    np.testing.assert_array_equal(m.matrix, expected)
    assert m.iou[0] == pytest.approx(130 / 195)
    assert m.overall_accuracy == pytest.approx((130 + 195 + 149) / 540)
    assert r.pred_nodata_pixels == 0
    rows = list(csv.reader(open(r.metrics_csv)))
    assert rows[0][:4] == ["scope", "class_id", "class", "iou"]
    assert rows[1][:3] == ["class", "1", "crop"] and float(rows[1][3]) == pytest.approx(130 / 195)
    conf = list(csv.reader(open(r.confusion_csv)))
    assert conf[0] == ["truth \\ prediction", "crop", "forest", "water", "class_9"]
    assert conf[2] == ["forest", "65", "195", "0", "0"]
    assert r.confusion_png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(OutputExistsError):
        evaluate(pred, truth, out_dir=out)


def test_truth_in_another_crs_is_reprojected(tmp_path: Path, make_raster: Callable[..., Path]) -> None:
    import geopandas as gpd
    import shapely

    from geoseg.evaluate import evaluate

    pred = _pred(make_raster)
    # two field polygons on pixel edges, written in EPSG:4326
    left = shapely.box(500000.0 + 20, 5300000.0 - 100, 500000.0 + 120, 5300000.0 - 30)     # cols 2-11, rows 3-9
    right = shapely.box(500000.0 + 160, 5300000.0 - 140, 500000.0 + 290, 5300000.0 - 40)   # cols 16-28, rows 4-13
    g = gpd.GeoDataFrame({"landuse": ["crop", "forest"]}, geometry=[left, right], crs="EPSG:32633").to_crs(4326)
    gp = tmp_path / "truth.gpkg"
    g.to_file(gp)
    r = evaluate(pred, gp, class_field="landuse")
    m = r.metrics
    # reprojection moves edges by far less than a pixel, so pixel-centre rasterization is exact:
    # left field: cols 2-11 rows 3-9 = 70 px, predicted crop; right: 13 x 10 = 130 px predicted forest
    assert m.matrix[0, 0] == 70 and m.matrix[1, 1] == 130 and m.total == 200
    assert m.overall_accuracy == 1.0
    crop = next(o for o in r.objects if o.name == "crop")
    # the truth object is matched by no predicted component (the crop area is much larger) -> IoU < 0.5
    assert crop.truth_objects == 1 and crop.matched == 0


def test_vector_truth_errors(tmp_path: Path, make_raster: Callable[..., Path]) -> None:
    import geopandas as gpd
    import shapely

    from geoseg.evaluate import evaluate

    pred = _pred(make_raster)
    g = gpd.GeoDataFrame({"landuse": ["rice"]}, geometry=[shapely.box(500020, 5299900, 500120, 5299970)],
                         crs="EPSG:32633")
    p = tmp_path / "t.gpkg"
    g.to_file(p)
    with pytest.raises(VectorError, match="match no predicted class"):
        evaluate(pred, p, class_field="landuse")
    with pytest.raises(VectorError, match="has no field 'klass'"):
        evaluate(pred, p, class_field="klass")
    far = g.translate(1e5, 0)
    fp = tmp_path / "far.gpkg"
    gpd.GeoDataFrame({"landuse": ["crop"]}, geometry=far, crs="EPSG:32633").to_file(fp)
    with pytest.raises(LabelError, match="do not overlap"):
        evaluate(pred, fp, class_field="landuse")


def test_evaluate_cli(tmp_path: Path, make_raster: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    pred = _pred(make_raster)
    t = np.full((20, 30), 1, dtype=np.uint8)
    truth = make_raster(t, name="truth.tif", transform=TR)
    main(["evaluate", str(pred), str(truth)])
    out = capsys.readouterr().out
    assert "confusion matrix" in out and "macro" in out and "crop" in out
    assert (tmp_path / "pred_metrics.csv").exists() and (tmp_path / "pred_confusion.png").exists()
    far = make_raster(t, name="far.tif", transform=from_origin(900000.0, 5300000.0, 10.0, 10.0))
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(pred), str(far), "-o", str(tmp_path), "--overwrite"])
    assert e.value.code == 1
    assert "does not overlap" in capsys.readouterr().err


def test_truth_covering_part_of_the_prediction_scores_only_its_footprint(tmp_path: Path,
                                                                        make_raster: Callable[..., Path]) -> None:
    """A truth raster without nodata that covers a corner: pixels outside it are not class 0 (issue 21);
    values that cannot be classes are not scored and said so."""
    from geoseg.errors import NodataWarning
    from geoseg.evaluate import evaluate

    pred = _pred(make_raster)  # 20 x 30, classes 1, 2, 5
    t = np.full((10, 10), 1, dtype=np.uint16)  # the top-left 10 x 10 pixels, all crop, no nodata declared
    t[9, 9] = 300  # not a class
    truth = make_raster(t, name="corner.tif", transform=TR)
    out = tmp_path / "o"
    out.mkdir()
    with pytest.warns(NodataWarning, match="1 truth pixels hold values that cannot be classes"):
        r = evaluate(pred, truth, out_dir=out, ignore_values=[])
    m = r.metrics
    assert m.total == 100 - 1 - 1  # the footprint, less the prediction's nodata pixel and the value 300
    assert m.overall_accuracy == 1.0


def test_touching_objects_get_an_explanation_beside_zero_object_scores(tmp_path, capsys):
    """Four touching truth fields of one class, predicted perfectly per pixel: one predicted region matches
    none of them; the CLI says why instead of leaving a table of zeros beside perfect pixel scores."""
    import geopandas as gpd
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import box

    from geoseg.cli import main

    a = np.zeros((60, 60), np.uint8)
    a[10:50, 10:50] = 1
    with rasterio.open(tmp_path / "pred.tif", "w", driver="GTiff", width=60, height=60, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 5300000, 10, 10), nodata=255) as d:
        d.write(a, 1)
    polys = [box(500100 + i * 100, 5299500, 500200 + i * 100, 5299900) for i in range(4)]
    gpd.GeoDataFrame({"id": [1] * 4}, geometry=polys, crs="EPSG:32633").to_file(tmp_path / "truth.gpkg")
    main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "truth.gpkg"), "--class-field", "id", "-o",
          str(tmp_path / "ev")])
    cap = capsys.readouterr()
    assert "│ class_1 │ 4 " in cap.out and "objects that touch" in " ".join(cap.err.split())


def test_ignore_value_applies_to_polygon_truth(tmp_path):
    """Polygons whose class is an --ignore-value are not scored (it applied to raster truth only)."""
    import geopandas as gpd
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import box

    from geoseg.evaluate import evaluate

    a = np.ones((60, 60), np.uint8)
    with rasterio.open(tmp_path / "pred.tif", "w", driver="GTiff", width=60, height=60, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 5300000, 10, 10), nodata=255) as d:
        d.write(a, 1)
    # a 10x10 px polygon of class 1 (right) and a 20x20 px one of class 0 meaning "unlabelled" (wrong if scored)
    gpd.GeoDataFrame({"id": [1, 0]}, geometry=[box(500000, 5299900, 500100, 5300000),
                                               box(500200, 5299600, 500400, 5299800)],
                     crs="EPSG:32633").to_file(tmp_path / "truth.gpkg")
    scored = evaluate(tmp_path / "pred.tif", tmp_path / "truth.gpkg", class_field="id", object_level=False)
    assert scored.metrics.matrix.sum() == 100 + 400
    ignored = evaluate(tmp_path / "pred.tif", tmp_path / "truth.gpkg", class_field="id", ignore_values=[0],
                       object_level=False)
    assert ignored.metrics.matrix.sum() == 100 and ignored.metrics.matrix.trace() == 100


def test_class_ids_that_may_mean_other_classes_are_pointed_out(tmp_path: Path,
                                                              make_raster: Callable[..., Path]) -> None:
    """A model trained on polygon names numbers its classes itself; scored against a label raster with other
    ids, its metrics were silently wrong (0.03 accuracy for a 0.92 model). Now a warning says how ids were
    matched, a truth that names its classes differently is named, and a scored truth value 0 is pointed out."""
    import warnings

    import rasterio

    from geoseg.errors import ClassMatchWarning
    from geoseg.evaluate import evaluate

    pred = _pred(make_raster)
    t = np.full((20, 30), 1, dtype=np.uint8)
    t[15:, :] = 5
    plain = make_raster(t, name="plain.tif", transform=TR)
    with pytest.warns(ClassMatchWarning, match=r"names no classes, so its values are scored as the prediction's "
                                               r"class ids \(1 'crop', 5 'water'\)"):
        evaluate(pred, plain)
    named = make_raster(t, name="named.tif", transform=TR)
    with rasterio.open(named, "r+") as ds:
        ds.update_tags(geoseg_classes=ClassSchema.from_names(["forest", "water"], ids=[1, 5]).to_json())
    with pytest.warns(ClassMatchWarning, match="1 is 'forest' there, 'crop' here"):
        evaluate(pred, named)
    with rasterio.open(named, "r+") as ds:  # the same names (case aside): nothing to say
        ds.update_tags(geoseg_classes=ClassSchema.from_names(["Crop", "water"], ids=[1, 5]).to_json())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassMatchWarning)
        evaluate(pred, named)
    # unnamed classes on both sides: ids are all there is to go by, nothing to say
    a = np.ones((20, 30), dtype=np.uint8)
    a[:, 15:] = 2
    bare = make_raster(a, name="bare.tif", transform=TR, nodata=255)
    with rasterio.open(bare, "r+") as ds:
        ds.update_tags(geoseg_classes=ClassSchema.default(3).to_json())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassMatchWarning)
        evaluate(bare, plain)
    # 0 is a class of the prediction: the truth's 0 is scored, and said so
    t0 = t.copy()
    t0[:3] = 0
    with pytest.warns(ClassMatchWarning, match=r"its value 0 \(90 pixels\) is scored as the prediction's class 0"):
        evaluate(bare, make_raster(t0, name="zeros.tif", transform=TR))
