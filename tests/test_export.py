"""Export formats: round trips through geopandas and GDAL's ogrinfo, conventions, atomicity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely

from geoseg.errors import OutputExistsError, VectorError
from geoseg.export import FORMATS, GEOPARQUET_VERSION, format_for, write_geodataframe
from geoseg.vector import vectorize
from tests.conftest import shared_file

EXTS = [".gpkg", ".shp", ".geojson", ".parquet", ".fgb"]
HAVE_OGRINFO = shutil.which("ogrinfo") is not None
needs_ogrinfo = pytest.mark.skipif(not HAVE_OGRINFO and not os.environ.get("CI"),
                                   reason="ogrinfo not installed (apt-get install gdal-bin)")


def read(path: Path):
    import geopandas as gpd

    return gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)


@pytest.fixture(scope="module")
def mask_polys(tmp_path_factory):
    """The real FTW field mask vectorized once to every format."""
    src = shared_file("ftw_baselines/mask.tif")
    d = tmp_path_factory.mktemp("export")
    ref = vectorize(src, band_rows=50)
    outs = {}
    for ext in EXTS:
        rep = vectorize(src, d / f"fields{ext}", band_rows=50)
        assert rep.polygons == len(ref) and not rep.empty
        outs[ext] = d / f"fields{ext}"
    return src, ref, outs


@pytest.mark.parametrize("ext", EXTS)
def test_round_trip_geopandas(mask_polys, ext: str) -> None:
    src, ref, outs = mask_polys
    got = read(outs[ext])
    assert len(got) == len(ref)
    cols = {"perimeter_m": "perim_m"} if ext == ".shp" else {}
    for c in ["id", "class_id", "class_name", "area_m2", "perimeter_m"]:
        assert cols.get(c, c) in got.columns
    got = got.sort_values("id").reset_index(drop=True)
    np.testing.assert_allclose(got["area_m2"], ref["area_m2"])
    if ext == ".geojson":
        assert got.crs.to_epsg() == 4326
        back = got.to_crs(ref.crs)
        # RFC 7946 writes 7 decimals (~1 cm): areas agree to a centimetre strip around each polygon
        np.testing.assert_allclose(back.area, ref.area, atol=0.02 * ref.length.max())
    else:
        assert got.crs.to_epsg() == 32633
        assert shapely.equals(shapely.normalize(got.geometry.values), shapely.normalize(ref.geometry.values)).all()
    assert shapely.is_valid(got.geometry.values).all()


@needs_ogrinfo
@pytest.mark.parametrize("ext", EXTS)
def test_round_trip_ogrinfo(mask_polys, ext: str) -> None:
    src, ref, outs = mask_polys
    if ext == ".parquet":
        formats = subprocess.run(["ogrinfo", "--formats"], capture_output=True, text=True).stdout
        if "Parquet" not in formats:
            pytest.skip("this GDAL build has no (Geo)Parquet driver; GeoParquet is checked against the spec "
                        "in test_geoparquet_metadata")
    r = subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(outs[ext])], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"Feature Count: {len(ref)}" in out
    assert "Polygon" in out
    if ext == ".geojson":
        assert "WGS 84" in out or "4326" in out
    else:
        assert "UTM zone 33N" in out
    for field in ["class_id", "class_name", "area_m2"]:
        assert field in out


def test_shapefile_sidecars_and_field_names(mask_polys) -> None:
    _, _, outs = mask_polys
    shp = outs[".shp"]
    for ext in (".shx", ".dbf", ".prj", ".cpg"):
        assert shp.with_suffix(ext).exists(), ext
    assert shp.with_suffix(".cpg").read_text().strip().upper().replace("-", "") == "UTF8"
    names = read(shp).columns
    assert all(len(n) <= 10 for n in names)
    assert not list(shp.parent.glob("*geoseg-tmp*"))  # no temporary leftovers


def test_geojson_is_rfc7946(mask_polys) -> None:
    _, _, outs = mask_polys
    doc = json.loads(outs[".geojson"].read_text())
    assert "crs" not in doc
    for feat in doc["features"]:
        rings = feat["geometry"]["coordinates"]
        ext = shapely.LinearRing(rings[0])
        assert ext.is_ccw
        for hole in rings[1:]:
            assert not shapely.LinearRing(hole).is_ccw
        lon, lat = np.asarray(rings[0]).T
        assert (np.abs(lon) <= 180).all() and (np.abs(lat) <= 90).all()
        assert 12 < lon.mean() < 18 and 45 < lat.mean() < 50  # Austria


def test_geoparquet_metadata(mask_polys) -> None:
    import pyarrow.parquet as pq
    import pyproj

    _, ref, outs = mask_polys
    meta = pq.read_schema(outs[".parquet"]).metadata
    geo = json.loads(meta[b"geo"])
    # required keys of the GeoParquet spec (file level and column level)
    assert geo["version"] == GEOPARQUET_VERSION
    assert geo["primary_column"] == "geometry"
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB"
    assert col["geometry_types"] == ["Polygon"]
    assert pyproj.CRS.from_json_dict(col["crs"]).to_epsg() == 32633
    t = pq.read_table(outs[".parquet"])
    assert t.schema.field("geometry").type in ("binary", "large_binary")
    wkb = t.column("geometry").to_pylist()
    assert shapely.equals(shapely.normalize(shapely.from_wkb(wkb)),
                          shapely.normalize(ref.sort_values("id").geometry.values)).all()


@pytest.mark.parametrize("ext", EXTS)
def test_empty_result_writes_valid_empty_layer(make_raster, tmp_path: Path, ext: str) -> None:
    path = make_raster(np.zeros((10, 10), np.uint8), crs="EPSG:32633")
    out = tmp_path / f"none{ext}"
    rep = vectorize(path, out, classes=[5])
    assert rep.empty and rep.polygons == 0
    assert any("empty" in w for w in rep.warnings)
    got = read(out)
    assert len(got) == 0
    assert got.crs is not None
    assert got.crs.to_epsg() == (4326 if ext == ".geojson" else 32633)
    if ext != ".geojson":  # GeoJSON has no schema without features
        assert {"class_id", "class_name", "area_m2"} <= set(got.columns)
    if HAVE_OGRINFO and ext != ".parquet":
        r = subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(out)], capture_output=True, text=True)
        assert r.returncode == 0 and "Feature Count: 0" in r.stdout


def test_overwrite_policy_and_atomicity(make_raster, tmp_path: Path) -> None:
    path = make_raster(np.array([[1, 2], [2, 1]], np.uint8))
    out = tmp_path / "p.shp"
    vectorize(path, out)
    before = out.stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="`overwrite=True`"):
        vectorize(path, out)
    assert out.stat().st_mtime_ns == before
    vectorize(path, out, overwrite=True, classes=[1])
    assert len(read(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("p.")) == \
        ["p.cpg", "p.dbf", "p.prj", "p.qml", "p.shp", "p.shx"]  # the .qml: its QGIS style


def test_shapefile_parts_of_another_file_are_not_replaced(make_raster, tmp_path: Path) -> None:
    # an existing .dbf / .qix without the .shp: another file's parts, kept (they were replaced and deleted)
    path = make_raster(np.array([[1, 2], [2, 1]], np.uint8))
    (tmp_path / "p.dbf").write_text("mine")
    (tmp_path / "p.qix").write_text("mine too")
    with pytest.raises(OutputExistsError, match="p.dbf: file exists"):
        vectorize(path, tmp_path / "p.shp")
    assert (tmp_path / "p.dbf").read_text() == "mine" and (tmp_path / "p.qix").read_text() == "mine too"
    assert not (tmp_path / "p.shp").exists()
    vectorize(path, tmp_path / "p.shp", overwrite=True)
    assert len(read(tmp_path / "p.shp")) == 4


def test_failure_leaves_nothing(make_raster, tmp_path: Path) -> None:
    path = make_raster(np.array([[1, 2], [2, 1]], np.uint8))
    out = tmp_path / "p.gpkg"

    def boom(p):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vectorize(path, out, on_progress=boom)
    assert list(tmp_path.glob("p*")) == [] and not list(tmp_path.glob(".*geoseg-tmp*"))


def test_unknown_extension() -> None:
    with pytest.raises(VectorError, match="unknown vector format"):
        format_for("x.kml")
    assert set(FORMATS) == set(EXTS)


@pytest.mark.parametrize("ext", EXTS)
def test_write_geodataframe(tmp_path: Path, ext: str) -> None:
    import geopandas as gpd

    gdf = gpd.GeoDataFrame({"class_id": [1, 2], "class_name": ["a", "b"]},
                           geometry=[shapely.box(0, 0, 10, 10), shapely.box(10, 0, 20, 10)], crs="EPSG:3857")
    out = tmp_path / f"g{ext}"
    assert write_geodataframe(gdf, out) == 2
    got = read(out)
    assert len(got) == 2 and sorted(got.class_name) == ["a", "b"]  # FlatGeobuf's index reorders features


def test_geographic_raster_keeps_crs(tmp_path: Path) -> None:
    src = shared_file("sits_classified_maps/PRODES_LANDSAT_AMZ_2000-08-01_2020-07-31_class_v20220606.tif")
    out = tmp_path / "p.fgb"
    vectorize(src, out, classes=[1, 2, 3])
    got = read(out)
    with rasterio.open(src) as ds:
        assert got.crs == ds.crs


def _gpkg_index_parts(path: Path, layer: str) -> tuple[list[tuple[str, str]], list[tuple], np.ndarray]:
    import sqlite3

    con = sqlite3.connect(str(path))
    try:
        ddl = con.execute("SELECT name, sql FROM sqlite_master WHERE name LIKE 'rtree_%' ORDER BY name").fetchall()
        ext = con.execute("SELECT * FROM gpkg_extensions WHERE table_name = ?", (layer,)).fetchall()
        (col,) = con.execute("SELECT column_name FROM gpkg_geometry_columns").fetchone()
        rows = np.array(con.execute(f'SELECT * FROM "rtree_{layer}_{col}" ORDER BY id').fetchall(),
                        dtype=float).reshape(-1, 5)
    finally:
        con.close()
    return ddl, ext, rows


@pytest.mark.parametrize("n", [0, 1, 300])
def test_gpkg_spatial_index_is_gdals(tmp_path: Path, n: int) -> None:
    """The R-tree built after streaming equals the one GDAL builds itself, and readers use it."""
    import geopandas as gpd
    import pyogrio

    rng = np.random.default_rng(n)
    x, y = rng.random(n) * 1000, rng.random(n) * 1000
    gdf = gpd.GeoDataFrame({"class_id": np.arange(n, dtype=np.int32)},
                           geometry=list(shapely.box(x, y, x + 5, y + 7)), crs="EPSG:3857")
    out = tmp_path / "idx.gpkg"
    assert write_geodataframe(gdf, out) == n
    ref = tmp_path / "ref" / "idx.gpkg"
    ref.parent.mkdir()
    pyogrio.write_dataframe(gdf, ref, layer="idx", driver="GPKG")  # GDAL's own index
    ddl, ext, rows = _gpkg_index_parts(out, "idx")
    rddl, rext, rrows = _gpkg_index_parts(ref, "idx")
    assert ddl == rddl and len(ddl) >= 5  # virtual table, shadow tables, triggers
    assert ext == rext and ext[0][2] == "gpkg_rtree_index"
    assert rows.shape == (n, 5)
    np.testing.assert_array_equal(rows, rrows)  # same float32 rounding as SQLite's own inserts
    import sqlite3

    con = sqlite3.connect(str(out))
    assert con.execute("SELECT rtreecheck('rtree_idx_geom')").fetchone()[0] == "ok"
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    if n:
        got = gpd.read_file(out, bbox=(0, 0, 500, 500))
        want = gdf[gdf.intersects(shapely.box(0, 0, 500, 500))]
        assert sorted(got.class_id) == sorted(want.class_id)
    if HAVE_OGRINFO:
        r = subprocess.run(["ogrinfo", "-ro", str(out), "-sql", "SELECT HasSpatialIndex('idx', 'geom')"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "= 1" in r.stdout, r.stdout + r.stderr
        r = subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(out)], capture_output=True, text=True)
        assert r.returncode == 0 and f"Feature Count: {n}" in r.stdout


def test_vectorize_gpkg_has_spatial_index(mask_polys) -> None:
    import sqlite3

    out = mask_polys[2][".gpkg"]
    con = sqlite3.connect(str(out))
    try:
        layer = con.execute("SELECT table_name FROM gpkg_contents").fetchone()[0]
        n = con.execute(f'SELECT count(*) FROM "{layer}"').fetchone()[0]
        assert con.execute(f'SELECT count(*) FROM "rtree_{layer}_geom"').fetchone()[0] == n > 0
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()


def _batches_schema() -> tuple:
    import pyarrow as pa

    schema = pa.schema([("id", pa.int64()), ("geometry", pa.large_binary())])

    def batch(i: int, wkb: bytes) -> object:
        return pa.RecordBatch.from_arrays([pa.array([i]), pa.array([wkb], type=pa.large_binary())], schema=schema)

    return schema, batch


@pytest.mark.parametrize("ext", [".gpkg", ".fgb"])
def test_writer_process_error_is_one_geoseg_error(tmp_path: Path, ext: str) -> None:
    from geoseg.errors import GeosegError, RasterWriteError
    from geoseg.export import write_batches

    schema, batch = _batches_schema()
    out = tmp_path / f"w{ext}"
    good = batch(1, shapely.to_wkb(shapely.box(0, 0, 1, 1)))
    bad = batch(2, b"\x01\x03\x00\x00\x00not wkb")
    with pytest.raises(RasterWriteError) as ei:
        write_batches(out, schema, [good, bad], crs="EPSG:3857")
    assert isinstance(ei.value, GeosegError) and "failed" in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_producer_error_stops_writer_and_leaves_nothing(tmp_path: Path) -> None:
    from geoseg.export import write_batches

    schema, batch = _batches_schema()
    out = tmp_path / "w.gpkg"

    def gen():
        import time

        yield batch(1, shapely.to_wkb(shapely.box(0, 0, 1, 1)))
        time.sleep(3)  # the writer process is well into its work (its box spill file exists)
        raise ValueError("band 2 broke")

    with pytest.raises(ValueError, match="band 2 broke"):
        write_batches(out, schema, gen(), crs="EPSG:3857")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n,chunk", [(1, 64), (150, 64), (30000, 7000), (60000, 65536)])
def test_rtree_bulk_load_answers_like_sqlite(n: int, chunk: int) -> None:
    """Bulk-loaded shadow tables form a valid SQLite R-tree that answers window queries exactly."""
    import sqlite3

    from geoseg.export.rtree import rtree_bulk_load

    rng = np.random.default_rng(n)
    x, y = rng.random(n) * 1e5 - 5e4, rng.random(n) * 1e5 + 4e6
    box = np.column_stack([x, x + rng.random(n) * 90, y, y + rng.random(n) * 90])
    box[n // 2] = np.nan  # an empty geometry: not indexed
    con = sqlite3.connect(":memory:")
    con.execute("CREATE VIRTUAL TABLE rt USING rtree(id, minx, maxx, miny, maxy)")
    rtree_bulk_load(con, "rt", box, chunk)
    assert con.execute("SELECT rtreecheck('rt')").fetchone()[0] == "ok"
    ref = sqlite3.connect(":memory:")
    ref.execute("CREATE VIRTUAL TABLE rt USING rtree(id, minx, maxx, miny, maxy)")
    ok = np.isfinite(box).all(axis=1)
    ref.executemany("INSERT INTO rt VALUES (?, ?, ?, ?, ?)",
                    ((int(i) + 1, *map(float, box[i])) for i in np.flatnonzero(ok)))
    q = "SELECT * FROM rt ORDER BY id"
    assert con.execute(q).fetchall() == ref.execute(q).fetchall()
    for _ in range(20):
        qx, qy = rng.random() * 1e5 - 5e4, rng.random() * 1e5 + 4e6
        w = "SELECT id FROM rt WHERE maxx >= ? AND minx <= ? AND maxy >= ? AND miny <= ? ORDER BY id"
        args = (qx, qx + 5000, qy, qy + 5000)
        assert con.execute(w, args).fetchall() == ref.execute(w, args).fetchall()


def test_polygon_wkb_bounds_equal_shapely() -> None:
    """The numpy WKB reader behind the GeoPackage R-tree gives shapely's bounds, or declines."""
    import pyarrow as pa
    import shapely

    from geoseg.export.rtree import polygon_wkb_bounds

    rng = np.random.default_rng(0)
    geoms = [shapely.Polygon()]  # empty: NaN bounds, as in shapely
    for _ in range(300):
        x, y = rng.uniform(-1e6, 1e6, 2)
        w, h = rng.uniform(1, 500, 2)
        shell = shapely.box(x, y, x + w, y + h)
        if rng.random() < 0.3:
            shell = shell.difference(shapely.box(x + w / 4, y + h / 4, x + w / 2, y + h / 2))  # a hole
        if rng.random() < 0.3:
            shell = shapely.segmentize(shell, w / 7)  # more vertices: unaligned doubles further on
        geoms.append(shell)
    wkb = shapely.to_wkb(np.array(geoms, dtype=object))
    for typ in (pa.large_binary(), pa.binary()):
        col = pa.array(wkb, type=typ)
        for sl in (col, col.slice(7, 100)):  # sliced arrays have an offset into the buffers
            want = shapely.bounds(shapely.from_wkb(sl.to_numpy(zero_copy_only=False)))
            got = polygon_wkb_bounds(sl)
            assert got is not None
            np.testing.assert_array_equal(got, want)
    multi = shapely.to_wkb(np.array([shapely.MultiPolygon([geoms[1]])], dtype=object))
    assert polygon_wkb_bounds(pa.array(multi, type=pa.large_binary())) is None
    big = shapely.to_wkb(np.array(geoms[1:3], dtype=object), byte_order=0)
    assert polygon_wkb_bounds(pa.array(big, type=pa.large_binary())) is None


def test_an_interrupted_geopackage_write_leaves_no_sqlite_journal(tmp_path: Path) -> None:
    """Ctrl-C reaches the writer process too: killed in a transaction, SQLite leaves ``-journal`` (or
    ``-wal``/``-shm``) beside the temporary GeoPackage; an interrupted write removes them with it."""
    import sqlite3

    from geoseg.io.atomic import atomic_output

    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "v.gpkg") as tmp:
        con = sqlite3.connect(tmp, isolation_level=None)
        con.execute("CREATE TABLE t (x)")
        con.execute("BEGIN")
        con.execute("INSERT INTO t VALUES (1)")  # a rollback journal exists while the transaction is open
        assert Path(f"{tmp}-journal").exists()
        for ext in ("-wal", "-shm"):  # and these in WAL mode
            Path(f"{tmp}{ext}").write_bytes(b"x")
        raise KeyboardInterrupt
    con.close()
    assert list(tmp_path.iterdir()) == []
