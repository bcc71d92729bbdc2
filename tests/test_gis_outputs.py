"""Outputs GIS tools read without help: GDAL class names and attribute table, GDAL band scale,
QGIS styles (.qml beside files, the GeoPackage layer_styles table), and --progress json.

Read back with independent readers: gdalinfo (GDAL's own), sqlite3, pyogrio, XML parsing.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import ROOT, SAMPLE
from geoseg.models.demo import DEMO_MODEL
from geoseg.classes import ClassSchema

HAVE_GDALINFO = shutil.which("gdalinfo") is not None


@pytest.fixture(scope="module")
def inferred(tmp_path_factory):
    """The sample scene segmented once by the CLI, with probabilities and GeoPackage polygons."""
    d = tmp_path_factory.mktemp("gis")
    r = subprocess.run([sys.executable, "-m", "geoseg", "infer", str(SAMPLE / "field.tif"), "-m",
                        str(DEMO_MODEL), "-o", str(d), "--probabilities", "-q"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    with rasterio.open(d / "field_classes.tif") as ds:
        schema = ClassSchema.from_json(ds.tags()["geoseg_classes"])
    return d, schema


def _gdalinfo(path: Path) -> dict:
    r = subprocess.run(["gdalinfo", "-json", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(not HAVE_GDALINFO, reason="gdalinfo (Debian's gdal-bin) is not installed")
def test_gdal_itself_reads_class_names_and_the_attribute_table(inferred) -> None:
    d, schema = inferred
    info = _gdalinfo(d / "field_classes.tif")
    band = info["bands"][0]
    assert band["categories"] == schema.category_names()
    assert [band["categories"][c.id] for c in schema.classes] == schema.names
    rat = info["rat"]
    names = [f["name"] for f in rat["fieldDefn"]]
    rows = {r["f"][0]: dict(zip(names, r["f"])) for r in rat["row"]}
    assert set(rows) == set(schema.ids)
    for c in schema.classes:
        row = rows[c.id]
        assert row["Class_Name"] == c.name and (row["Red"], row["Green"], row["Blue"]) == c.colour
    # the colour table is still there, nodata transparent
    assert band["colorTable"]["entries"][schema.nodata][3] == 0


def test_class_names_travel_with_the_raster_in_its_aux_xml(inferred) -> None:
    d, schema = inferred
    pam = ET.parse(d / "field_classes.tif.aux.xml").getroot()
    cats = [c.text or "" for c in pam.find("PAMRasterBand").find("CategoryNames")]
    assert cats == schema.category_names()
    assert not list(d.glob("*geoseg-tmp*"))  # no temporary aux.xml left


def test_category_names_leave_gaps_and_stop_before_nodata() -> None:
    s = ClassSchema.from_names(["corn", "soy"], ids=[1, 5])
    assert s.category_names() == ["", "corn", "", "", "", "soy"]


def test_probabilities_carry_gdal_scale(inferred, tmp_path) -> None:
    d, schema = inferred
    with rasterio.open(d / "field_probabilities.tif") as ds:
        assert ds.scales == (1 / 255,) * ds.count and ds.offsets == (0.0,) * ds.count
        assert ds.tags()["scale"] == "1/255"  # the old tag stays for older readers
        raw = ds.read(ds.count, masked=True)
    assert 0.2 < float(raw.mean()) * ds.scales[-1] <= 1.0  # the confidence, read 0-1 as GDAL tools do
    if HAVE_GDALINFO:
        band = _gdalinfo(d / "field_probabilities.tif")["bands"][0]
        assert band["scale"] == pytest.approx(1 / 255) and band["offset"] == 0


def test_float_probabilities_need_no_scale(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "geoseg", "infer", str(SAMPLE / "field.tif"), "-o", str(tmp_path),
                        "--probabilities-out", str(tmp_path / "p.tif"), "--classes-out", str(tmp_path / "c.tif"),
                        "--probability-dtype", "float32", "--no-vector", "-q"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qml", "c.tif", "c.tif.aux.xml", "p.tif"]
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.scales == (1.0,) * ds.count and ds.dtypes[0] == "float32"


def _colour(hex_or_rgba: str) -> tuple[int, int, int]:
    if hex_or_rgba.startswith("#"):
        return tuple(int(hex_or_rgba[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    return tuple(int(v) for v in hex_or_rgba.split(",")[:3])  # type: ignore[return-value]


def test_class_raster_qml_is_paletted_with_names_and_transparent_nodata(inferred) -> None:
    d, schema = inferred
    root = ET.parse(d / "field_classes.qml").getroot()
    r = root.find("pipe/rasterrenderer")
    assert r.get("type") == "paletted" and r.get("band") == "1"
    entries = {int(e.get("value")): (e.get("label"), _colour(e.get("color"))) for e in r.find("colorPalette")}
    assert entries == {c.id: (c.name, c.colour) for c in schema.classes}
    px = r.find("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert (float(px.get("min")), float(px.get("max")), float(px.get("percentTransparent"))) == \
        (schema.nodata, schema.nodata, 100)


def _vector_categories(qml: str) -> tuple[str, dict[int, tuple[str, tuple[int, int, int]]]]:
    root = ET.fromstring(qml)
    r = root.find("renderer-v2")
    assert r.get("type") == "categorizedSymbol"
    colours = {s.get("name"): _colour(s.find("layer/prop[@k='color']").get("v")) for s in r.find("symbols")}
    cats = {int(c.get("value")): (c.get("label"), colours[c.get("symbol")]) for c in r.find("categories")}
    return r.get("attr"), cats


def test_geopackage_holds_its_style_in_layer_styles(inferred) -> None:
    import pyogrio

    d, schema = inferred
    gpkg = d / "field_polygons.gpkg"
    assert "layer_styles" in [n for n, _ in pyogrio.list_layers(gpkg)]
    with sqlite3.connect(gpkg) as con:
        rows = con.execute("SELECT f_table_name, f_geometry_column, useAsDefault, styleQML "
                           "FROM layer_styles").fetchall()
        kind = con.execute("SELECT data_type FROM gpkg_contents WHERE table_name='layer_styles'").fetchone()
        geom = con.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name='field_polygons'").fetchone()
    assert kind == ("attributes",)
    assert len(rows) == 1
    table, geom_col, default, qml = rows[0]
    assert (table, geom_col, default) == ("field_polygons", geom[0], 1)
    attr, cats = _vector_categories(qml)
    assert attr == "class_id"
    assert cats == {c.id: (c.name, c.colour) for c in schema.classes}


@pytest.mark.parametrize("ext", [".shp", ".geojson", ".fgb", ".parquet"])
def test_file_formats_get_a_qml_beside_them(inferred, tmp_path, ext) -> None:
    from geoseg.vector import vectorize

    d, schema = inferred
    out = tmp_path / f"fields{ext}"
    vectorize(d / "field_classes.tif", out)
    attr, cats = _vector_categories((tmp_path / "fields.qml").read_text())
    assert attr == "class_id" and cats == {c.id: (c.name, c.colour) for c in schema.classes}


def test_a_users_own_qml_is_kept_unless_overwrite(inferred, tmp_path) -> None:
    from geoseg.errors import StyleWarning
    from geoseg.vector import vectorize

    d, _ = inferred
    mine = tmp_path / "f.qml"
    mine.write_text("<qgis>mine</qgis>")
    with pytest.warns(StyleWarning, match="f.qml: a different style file exists"):
        vectorize(d / "field_classes.tif", tmp_path / "f.shp")
    assert mine.read_text() == "<qgis>mine</qgis>" and (tmp_path / "f.shp").exists()
    vectorize(d / "field_classes.tif", tmp_path / "f.shp", overwrite=True)
    assert "categorizedSymbol" in mine.read_text()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", StyleWarning)
        vectorize(d / "field_classes.tif", tmp_path / "f.fgb")  # the same style is already there: no warning


def test_rasters_without_geoseg_classes_are_styled_from_their_colour_table(make_raster, tmp_path) -> None:
    path = make_raster(np.array([[1, 1, 7], [7, 7, 1]], np.uint8), nodata=0)
    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, {1: (10, 20, 30, 255), 7: (200, 100, 50, 255)})
    from geoseg.vector import vectorize

    vectorize(path, tmp_path / "cdl.shp", class_names="1=corn")
    _, cats = _vector_categories((tmp_path / "cdl.qml").read_text())
    assert cats == {1: ("corn", (10, 20, 30)), 7: ("class_7", (200, 100, 50))}


def test_progress_json_lines(inferred, tmp_path) -> None:
    d, _ = inferred
    r = subprocess.run([sys.executable, "-m", "geoseg", "vectorize", str(d / "field_classes.tif"), "-o",
                        str(tmp_path / "p.gpkg"), "--progress", "json", "--band-rows", "50"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert len(events) >= 3 and all(e["event"] == "progress" and e["stage"] == "rows" for e in events)
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert "\x1b" not in r.stderr  # no bar drawn


def test_readers_skip_the_style_table(inferred, tmp_path) -> None:
    """geoseg's own readers (preview outlines, training and truth polygons) read the polygons, never the
    style table, and say nothing about it; also when the style table was written first."""
    import warnings

    import pyogrio

    from geoseg.preview import write_preview
    from geoseg.styles import data_layer
    from geoseg.io.labels import read_vector

    d, _ = inferred
    gpkg = d / "field_polygons.gpkg"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_preview(d / "field_classes.tif", tmp_path / "p.png", polygons=gpkg)
        assert len(read_vector(gpkg)) == pyogrio.read_info(gpkg, layer="field_polygons")["features"]
    styles_first = tmp_path / "s.gpkg"
    pyogrio.write_dataframe(pyogrio.read_dataframe(gpkg, layer="layer_styles"), styles_first, layer="layer_styles")
    pyogrio.write_dataframe(pyogrio.read_dataframe(gpkg, layer="field_polygons"), styles_first, layer="fields")
    assert data_layer(styles_first) == "fields" and data_layer(d / "field_classes.tif") is None
    assert len(read_vector(styles_first)) > 0 and "class_id" in read_vector(styles_first).columns


def test_default_class_colours_are_told_apart_and_match_whole_words() -> None:
    """corn, soybeans and winter_wheat were one yellow; "broadleaf" took urban red (it holds "road"),
    "seasonal_pasture" water blue ("sea"); "land" beside "water" got a blue a hair from water's."""
    from geoseg.classes import ClassSchema, default_colours

    crops = default_colours(["corn", "soybeans", "winter_wheat", "broadleaf", "seasonal_pasture"])
    assert len(set(crops)) == 5
    assert crops[0] == (235, 200, 40) and crops[4] == (150, 205, 90)  # crop yellow, pasture green
    assert crops[3] != (200, 50, 50)  # not urban red
    land, water = default_colours(["land", "water"])
    assert water == (31, 120, 220) and sum((a - b) ** 2 for a, b in zip(land, water)) > 60 ** 2
    assert default_colours(["urban_roads"]) == [(200, 50, 50)] and default_colours(["lakes"]) == [(31, 120, 220)]
    schema = ClassSchema.from_names([f"class_{i}" for i in range(40)])
    assert len({c.colour for c in schema.classes}) == 40
