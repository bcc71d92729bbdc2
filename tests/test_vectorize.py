"""Streaming vectorization equals a whole-raster polygonization (real rasters and random ones)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import shapes

from geoseg.errors import GeosegError, RasterReadError, UsageError
from geoseg.vector import vectorize
from geoseg.vector.ragged import Ragged
from geoseg.vector.seams import SeamMerger
from geoseg.vector.source import Band
from tests.conftest import ROOT, shared_file

CDL = "usda_cdl_kansas/2021_30m_cdls.tif"
MASK = "ftw_baselines/mask.tif"
SITS_UTM = "sits_classified_maps/SENTINEL2_MSI_20LNR_2020-06-04_2021-08-26_class_v1.tif"
SITS_GEO = "sits_classified_maps/PRODES_LANDSAT_AMZ_2000-08-01_2020-07-31_class_v20220606.tif"


def reference(path: Path, window: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Whole-raster ``shapes`` (4-connected, nodata masked): (normalized geometries, class ids)."""
    with rasterio.open(path) as ds:
        a = ds.read(1)
        m = ds.read_masks(1) > 0
        t = ds.transform
    if window:
        a, m = a[:window[0], :window[1]], m[:window[0], :window[1]]
    out = [(shapely.geometry.shape(g), int(v)) for g, v in shapes(a, mask=m, connectivity=4, transform=t)]
    geoms = shapely.normalize(np.array([g for g, _ in out], dtype=object))
    return geoms, np.array([v for _, v in out], dtype=np.int64)


def assert_same(gdf, ref_geoms: np.ndarray, ref_cls: np.ndarray) -> None:
    got = shapely.normalize(gdf.geometry.values)
    assert len(got) == len(ref_geoms)
    assert shapely.is_valid(got).all()
    assert (gdf.geometry.geom_type == "Polygon").all()
    # same per-class area
    n = max(int(ref_cls.max(initial=0)), int(gdf.class_id.max() if len(gdf) else 0)) + 1
    ra = np.bincount(ref_cls, weights=shapely.area(ref_geoms), minlength=n)
    ga = np.bincount(gdf.class_id.values, weights=shapely.area(got), minlength=n)
    np.testing.assert_allclose(ga, ra, rtol=1e-12, atol=1e-6)
    # same geometries (as sets of normalized WKB: vertex order and start point do not matter)
    key = lambda g, c: sorted(zip(c.tolist(), shapely.to_wkb(g).tolist()))  # noqa: E731
    assert key(got, gdf.class_id.values) == key(ref_geoms, ref_cls)


@pytest.mark.parametrize("band_rows", [64, pytest.param(97, marks=pytest.mark.slow),
                                       pytest.param(1000, marks=pytest.mark.slow)])
def test_cdl_equals_whole_raster_shapes(band_rows: int) -> None:
    path = shared_file(CDL)
    gdf = vectorize(path, band_rows=band_rows)
    ref_g, ref_c = reference(path)
    assert_same(gdf, ref_g, ref_c)
    # areas: pixel count x pixel area, per class
    with rasterio.open(path) as ds:
        counts = np.bincount(ds.read(1).ravel())
    per_class = gdf.groupby("class_id").area_m2.sum()
    for cid, area in per_class.items():
        assert area == counts[cid] * 900.0
    assert gdf.area_m2.sum() == 1000 * 1000 * 900.0
    assert list(gdf.id) == list(range(1, len(gdf) + 1))


def test_worker_processes_give_the_same_result() -> None:
    path = shared_file(CDL)
    gdf = vectorize(path, band_rows=64, workers=2)
    assert_same(gdf, *reference(path))


@pytest.mark.parametrize("rel,band_rows", [(MASK, 7), (SITS_UTM, 50), (SITS_GEO, 33)])
def test_real_maps_equal_whole_raster_shapes(rel: str, band_rows: int) -> None:
    path = shared_file(rel)
    gdf = vectorize(path, band_rows=band_rows)
    assert_same(gdf, *reference(path))


def test_no_overlaps_and_holes_kept() -> None:
    path = shared_file(SITS_UTM)
    gdf = vectorize(path, band_rows=40)
    g = gdf.geometry.values
    tree = shapely.STRtree(g)
    a, b = tree.query(g, predicate="intersects")
    sel = a < b
    inter = shapely.area(shapely.intersection(g[a[sel]], g[b[sel]]))
    assert inter.max(initial=0) == 0
    assert shapely.get_num_interior_rings(g).sum() > 0  # holes survive the seam merge
    # the polygons cover exactly the valid pixels
    with rasterio.open(path) as ds:
        valid = int((ds.read_masks(1) > 0).sum())
    assert gdf.area_m2.sum() == pytest.approx(valid * 400.0, rel=1e-12)


def test_geographic_areas_in_square_metres() -> None:
    path = shared_file(SITS_GEO)
    gdf = vectorize(path, band_rows=100)
    assert gdf.crs.is_geographic
    # ~0.000269 deg pixels near 8-13 deg S: about 29.6 m x 29.7 m, never ~7e-8 square degrees
    px = gdf.area_m2 / (shapely.area(gdf.geometry.values) / (0.00026899952629299824 * 0.0002690009218520014))
    assert px.between(850, 900).all()
    # geodesic areas agree with an independent pyproj.Geod computation
    import pyproj

    geod = pyproj.Geod(ellps="GRS80")
    big = gdf.nlargest(5, "area_m2")
    for geom, area, perim in zip(big.geometry, big.area_m2, big.perimeter_m):
        ga, _ = geod.geometry_area_perimeter(geom)
        assert abs(ga) == pytest.approx(area, rel=1e-3)
        # perimeter_m counts every ring (exterior and holes), geodesic
        gp = sum(geod.line_length(*r.xy) for r in [geom.exterior, *geom.interiors])
        assert gp == pytest.approx(perim, rel=1e-6)
    # min-area works in m²: 10 pixels ≈ 8 800 m²
    small = vectorize(path, band_rows=100, min_area=8800)
    assert len(small) < len(gdf)
    assert small.area_m2.min() >= 8800


def rasters(max_side: int = 24) -> st.SearchStrategy:
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side), st.integers(2, 4), st.integers(0, 2**31 - 1),
                     st.integers(1, 9), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=rasters())
def test_property_random_rasters(spec, make_raster) -> None:
    h, w, k, seed, band_rows, with_nodata = spec
    rng = np.random.default_rng(seed)
    # blocky random classes so regions span several rows and bands
    coarse = rng.integers(0, k, size=(h // 2 + 1, w // 2 + 1)).astype(np.uint8)
    a = np.kron(coarse, np.ones((2, 2), np.uint8))[:h, :w]
    a = np.where(rng.random((h, w)) < 0.15, rng.integers(0, k, (h, w)), a).astype(np.uint8)
    nodata = None
    if with_nodata:
        a[rng.random((h, w)) < 0.1] = 255
        nodata = 255
    path = make_raster(a, name=f"r{seed}_{h}_{w}.tif", nodata=nodata)
    gdf = vectorize(path, band_rows=band_rows)
    assert_same(gdf, *reference(path))


def test_ragged_wkb_matches_shapely() -> None:
    polys = [shapely.Polygon([(0, 0), (0, 3), (3, 3), (3, 0)], [[(1, 1), (2, 1), (2, 2), (1, 2)]]),
             shapely.box(5, 5, 7, 9)]
    rag = Ragged.from_shapely(polys)
    buf, off = rag.to_wkb()
    got = [bytes(buf[off[i]:off[i + 1]]) for i in range(len(polys))]
    assert got == list(shapely.to_wkb(np.array(polys), byte_order=1))
    np.testing.assert_allclose(rag.areas(), shapely.area(polys))


def test_merger_rejects_out_of_order_bands() -> None:
    m = SeamMerger(4, 4)
    d = np.zeros((2, 4), np.uint8)
    m.feed(Band(0, 2, d, np.ones_like(d, bool)))
    with pytest.raises(ValueError):
        m.feed(Band(0, 2, d, np.ones_like(d, bool)))


def test_corner_touching_regions_stay_separate(make_raster) -> None:
    # a diagonal staircase of class 1 crossing every band seam: 4-connectivity keeps them apart
    a = np.zeros((6, 6), np.uint8)
    for i in range(6):
        a[i, i] = 1
    gdf = vectorize(make_raster(a), band_rows=1)
    assert (gdf.class_id == 1).sum() == 6
    assert_same(gdf, *reference(make_raster(a, name="b.tif")))


def test_boundary_class_separates_fields(make_raster) -> None:
    # two fields (1) separated by a boundary line (2) that crosses a band seam; background 0
    a = np.zeros((8, 9), np.uint8)
    a[1:7, 1:8] = 1
    a[1:7, 4] = 2
    path = make_raster(a, nodata=None)
    merged = vectorize(path, classes=[1, 2], band_rows=3)
    assert (merged.class_id == 1).sum() == 2  # already two regions of class 1...
    a[3, 4] = 1  # ...now one field pixel bridges them through the boundary
    path = make_raster(a, name="bridge.tif")
    plain = vectorize(path, classes=[1], band_rows=3)
    assert (plain.class_id == 1).sum() == 1
    sep = vectorize(path, boundary_class=2, classes=[1], band_rows=3)
    assert (sep.class_id == 1).sum() == 1  # the bridge pixel is a field pixel: still one field
    # boundary pixels are never polygons and the 3-class mask keeps touching fields apart
    mask = shared_file(MASK)
    fields = vectorize(mask, boundary_class=2, band_rows=20)
    assert set(fields.class_id) == {1}
    merged_all = vectorize(mask, classes=[1], band_rows=20)
    with rasterio.open(mask) as ds:
        m = ds.read(1)
    assert fields.area_m2.sum() == (m == 1).sum() * 100.0
    assert len(fields) == len(merged_all)  # same field pixels, same 4-connected fields


def test_boundary_class_by_name(make_raster) -> None:
    a = np.array([[1, 2, 1], [1, 2, 1]], np.uint8)
    gdf = vectorize(make_raster(a), class_names="0=background,1=field,2=boundary", boundary_class="boundary")
    assert len(gdf) == 2 and set(gdf.class_name) == {"field"}
    with pytest.raises(UsageError, match="boundary"):
        vectorize(make_raster(a, name="c.tif"), boundary_class="edge")


def test_class_names_from_geoseg_tag_and_override(make_raster) -> None:
    from geoseg.classes import ClassSchema

    a = np.array([[0, 0, 1], [2, 2, 1]], np.uint8)
    path = make_raster(a, nodata=255)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(geoseg_classes=ClassSchema.from_names(["water", "wheat", "maize"]).to_json())
    gdf = vectorize(path)
    assert dict(zip(gdf.class_id, gdf.class_name)) == {0: "water", 1: "wheat", 2: "maize"}
    gdf = vectorize(path, class_names={2: "corn"}, classes=["wheat", 2])
    assert dict(zip(gdf.class_id, gdf.class_name)) == {1: "wheat", 2: "corn"}


@pytest.mark.parametrize("kind", ["categories", "rat", "geoseg_output"])
def test_class_names_from_gdal_category_names_or_attribute_table(make_raster, tmp_path, kind) -> None:
    """A class raster without geoseg's tag (exported, or made by another tool) that names its classes in GDAL's
    category names or attribute table (its .aux.xml) gave polygons named class_0, class_1..."""
    from geoseg.classes import ClassSchema, category_names
    from geoseg.preview import write_preview

    a = np.array([[0, 0, 1], [2, 2, 1]], np.uint8)
    path = make_raster(a, nodata=255)
    if kind == "geoseg_output":  # a geoseg COG (names in its tag and, through GDAL, in its .aux.xml) copied
        from geoseg.io.writer import GeoTiffSink  # without the tag, as gdal_translate -unsetmd... would

        schema = ClassSchema.from_names(["water", "wheat", "maize"])
        with rasterio.open(path) as ds:
            crs, tr = ds.crs, ds.transform
        sink = GeoTiffSink(tmp_path / "c.tif", width=3, height=2, count=1, dtype="uint8", crs=crs, transform=tr,
                           nodata=255, colormap=schema.colormap(), classes=schema)
        sink.write(a[None], 0, 0)
        sink.commit()
        with rasterio.open(tmp_path / "c.tif") as src:
            assert "geoseg_classes" not in src.tags()  # this sink was not given the tag: GDAL's names only
        shutil.copy(tmp_path / "c.tif.aux.xml", path.with_name(path.name + ".aux.xml"))
    elif kind == "categories":
        path.with_name(path.name + ".aux.xml").write_text(
            '<PAMDataset><PAMRasterBand band="1"><CategoryNames><Category>water</Category><Category>wheat'
            '</Category><Category>maize</Category></CategoryNames></PAMRasterBand></PAMDataset>')
    else:
        path.with_name(path.name + ".aux.xml").write_text(
            '<PAMDataset><PAMRasterBand band="1"><GDALRasterAttributeTable tableType="thematic">'
            '<FieldDefn index="0"><Name>Value</Name><Type>0</Type><Usage>5</Usage></FieldDefn>'
            '<FieldDefn index="1"><Name>Class_Name</Name><Type>2</Type><Usage>2</Usage></FieldDefn>'
            '<Row index="0"><F>0</F><F>water</F></Row><Row index="1"><F>1</F><F>wheat</F></Row>'
            '<Row index="2"><F>2</F><F>maize</F></Row></GDALRasterAttributeTable></PAMRasterBand></PAMDataset>')
    with rasterio.open(path) as ds:
        assert category_names(ds) == {0: "water", 1: "wheat", 2: "maize"}
    gdf = vectorize(path)
    assert dict(zip(gdf.class_id, gdf.class_name)) == {0: "water", 1: "wheat", 2: "maize"}
    assert write_preview(path, tmp_path / "p.png").exists()


def test_sieve_removes_small_regions_across_seams(make_raster) -> None:
    rng = np.random.default_rng(3)
    a = np.kron(rng.integers(0, 3, (10, 10)), np.ones((6, 6), int)).astype(np.uint8)
    a[rng.random(a.shape) < 0.02] = 7  # single-pixel speckle
    a[10:12, 10:12] = 8  # a 4-pixel region: kept by --sieve 4
    path = make_raster(a)
    gdf = vectorize(path, sieve=4, band_rows=5)
    assert 7 not in set(gdf.class_id) and 8 in set(gdf.class_id)
    assert shapely.area(gdf.geometry.values).min() >= 4 * 100.0  # no region under 4 px survives
    assert gdf.area_m2.sum() == a.size * 100.0  # sieving moves pixels between classes, never drops them
    # the pixels GDAL's whole-raster sieve changes are exactly the ones changed here
    whole = rasterio.features.sieve(a, 4, connectivity=4)
    with rasterio.open(path) as ds:
        ours = rasterio.features.rasterize(zip(gdf.geometry, gdf.class_id), out_shape=a.shape,
                                           transform=ds.transform, fill=255, dtype="uint8")
    np.testing.assert_array_equal(ours != a, whole != a)
    assert (ours[whole == a] == a[whole == a]).all()


def test_fill_holes_only_empty_holes(make_raster) -> None:
    a = np.ones((12, 12), np.uint8)
    a[2:4, 2:4] = 255  # a 4-pixel nodata hole: filled
    a[7:10, 7:10] = 3  # a 9-pixel island of another class: hole kept (no overlap)
    path = make_raster(a, nodata=255)
    gdf = vectorize(path, fill_holes=10 * 100.0, band_rows=3)
    field = gdf[gdf.class_id == 1].geometry.iloc[0]
    assert len(field.interiors) == 1
    assert field.area == (144 - 9) * 100.0
    gdf2 = vectorize(path, fill_holes=3 * 100.0, band_rows=3)  # too small a threshold: both kept
    assert len(gdf2[gdf2.class_id == 1].geometry.iloc[0].interiors) == 2


def test_confidence_mean(make_raster) -> None:
    a = np.array([[1, 1, 2], [1, 2, 2], [1, 1, 2]], np.uint8)
    cls = make_raster(a, nodata=255)
    conf = np.array([[255, 51, 0], [102, 0, 255], [0, 0, 0]], np.uint8)
    probs = np.stack([conf, conf, conf])
    p = make_raster(probs, name="probs.tif")
    with rasterio.open(p, "r+") as ds:
        ds.descriptions = ("p_a", "p_b", "confidence")
        ds.update_tags(scale="1/255")
    gdf = vectorize(cls, probabilities=p, band_rows=2)
    got = dict(zip(gdf.class_id, gdf.confidence_mean))
    assert got[1] == pytest.approx((255 + 51 + 102) / 255 / 5)
    assert got[2] == pytest.approx(255 / 255 / 4)


def test_bad_inputs_raise_one_line_errors(make_raster, tmp_path: Path) -> None:
    with pytest.raises(RasterReadError, match="file not found"):
        vectorize(tmp_path / "missing.tif")
    f = make_raster(np.random.default_rng(0).random((4, 4)).astype(np.float32), name="f.tif")
    with pytest.raises(RasterReadError, match="non-integer"):
        vectorize(f)
    ok = make_raster(np.zeros((4, 4), np.uint8), name="ok.tif")
    with pytest.raises(UsageError, match="`simplify`"):
        vectorize(ok, simplify="a lot")
    with pytest.raises(GeosegError, match="unknown vector format"):
        vectorize(ok, tmp_path / "out.xyz")
    for e in (RasterReadError, UsageError):
        assert issubclass(e, GeosegError)


def test_never_imports_torch(tmp_path: Path) -> None:
    path = shared_file(MASK)
    code = ("import sys, geoseg\n"
            f"r = geoseg.vectorize({str(path)!r}, {str(tmp_path / 'o.gpkg')!r}, boundary_class=2, simplify='1px')\n"
            "import geoseg.export, geoseg.cli.vectorize\n"
            "assert r.polygons > 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("gdal_polygonize.py") is None and not os.environ.get("CI"),
                    reason="gdal_polygonize.py not installed (apt-get install gdal-bin python3-gdal)")
@pytest.mark.parametrize("rel", [pytest.param(CDL, marks=pytest.mark.slow), MASK, SITS_UTM, SITS_GEO])
def test_agrees_with_gdal_polygonize(rel: str, tmp_path: Path) -> None:
    import geopandas as gpd

    path = shared_file(rel)
    out = tmp_path / "gdal.gpkg"
    subprocess.run(["gdal_polygonize.py", "-q", str(path), "-f", "GPKG", str(out), "polys", "DN"], check=True)
    ref = gpd.read_file(out)
    gdf = vectorize(path, band_rows=71)
    assert len(gdf) == len(ref)
    ra = ref.groupby("DN").geometry.apply(lambda s: shapely.area(s.values).sum())
    ga = gdf.groupby("class_id").geometry.apply(lambda s: shapely.area(s.values).sum())
    assert sorted(ra.index) == sorted(ga.index)
    np.testing.assert_allclose(ga.loc[ra.index].values, ra.values, rtol=1e-9)


def test_block_cache_holds_about_one_band_not_the_raster(make_raster) -> None:
    """GDAL's block cache is capped at one band's blocks while vectorizing (issue 15).

    Uncapped (or capped at a fixed 64 MiB), GDAL kept every block it decoded, so a class
    raster smaller than the cap stayed whole in memory and the peak grew with its height.
    """
    from rasterio.env import get_gdal_config

    a = np.zeros((8192, 1024), np.uint8)  # 8 MiB, 256-pixel tiles
    a[:, 500:520] = 1
    a[4000:4100, :] = 2
    a[::512, 100:110] = 3
    path = make_raster(a, nodata=255, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    caps: list[int] = []
    gdf = vectorize(path, band_rows=256,
                    on_progress=lambda p: caps.append(int(get_gdal_config("GDAL_CACHEMAX"))))
    assert len(caps) == 8192 // 256
    assert max(caps) < a.nbytes  # the cache can never hold the whole raster
    assert_same(gdf, *reference(path))


def test_auto_workers_leave_cores_to_the_merge_and_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """``workers=0`` polygonizes in-process unless >= 2 cores are free beside the merge and writer.

    On 2 cores the automatic worker processes were no faster, but their interpreters made a
    raster above 16 M pixels need ~200 MiB more than a smaller one (issue 15).
    """
    from geoseg.vector.parallel import auto_workers

    for cpus, want in [(1, 1), (2, 1), (3, 1), (4, 2), (5, 3), (16, 4)]:
        monkeypatch.setattr(os, "cpu_count", lambda c=cpus: c)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cpus: set(range(c)), raising=False)
        assert auto_workers(1024, 16384) == want, cpus
        assert auto_workers(1024, 1024) == 1


@pytest.mark.parametrize("crs,lon,lat,res", [("EPSG:3857", 10.0, 50.0, 30.0), ("EPSG:32633", 11.5, 48.0, 20.0),
                                             ("EPSG:32633", 15.0, 60.0, 10.0), ("EPSG:4326", 10.0, 50.0, 3e-4),
                                             ("EPSG:5070", -75.0, 45.0, 30.0)])
def test_areas_and_perimeters_are_ground_values_in_any_crs(make_raster, crs, lon, lat, res) -> None:
    """area_m2 / perimeter_m within 0.5% of pyproj's geodesic values (Web Mercator was +60% at 50 N)."""
    import pyproj
    from rasterio.transform import from_origin

    to_crs = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x0, y0 = to_crs.transform(lon, lat)
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 3, size=(6, 6)).astype(np.uint8)
    data = np.kron(blocks, np.ones((40, 40), np.uint8))
    path = make_raster(data, name=f"m_{crs.replace(':', '')}_{lat}.tif", crs=crs,
                       transform=from_origin(x0, y0, res, res))
    gdf = vectorize(path)
    geod = pyproj.Geod(ellps="WGS84") if crs != "EPSG:5070" else pyproj.Geod(ellps="GRS80")
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    for geom, area, perim in zip(gdf.geometry, gdf.area_m2, gdf.perimeter_m):
        g = shapely.ops.transform(to_ll.transform, shapely.segmentize(geom, res * 5))
        ga, gp = geod.geometry_area_perimeter(g)
        assert area == pytest.approx(abs(ga), rel=5e-3)
        assert perim == pytest.approx(gp, rel=5e-3)
    # --min-area works on the same ground areas
    cut = float(gdf.area_m2.min()) * 1.5
    small = vectorize(path, min_area=cut)
    assert small.area_m2.min() >= cut and len(small) < len(gdf)


def test_a_second_vectorize_on_the_same_output_is_refused(tmp_path) -> None:
    """The later of two runs silently replaced the earlier's output (issue 21): now one clear error."""
    from geoseg.errors import UsageError
    from geoseg.io.atomic import destination_lock

    out = tmp_path / "p.gpkg"
    with destination_lock(out):
        with pytest.raises(UsageError, match="another geoseg run is writing this output"):
            vectorize(shared_file(MASK), out)
        assert not out.exists()
    vectorize(shared_file(MASK), out)
    assert out.exists() and not [p for p in tmp_path.iterdir() if p.name != "p.gpkg"]


def test_a_tolerance_of_many_pixels_in_crs_units_is_pointed_out(make_raster) -> None:
    """`--simplify 15` on a geographic raster is 15 degrees (55 762 px of PRODES): shapes were distorted
    without a word."""
    import warnings

    from rasterio.transform import from_origin

    a = np.zeros((20, 20), np.uint8)
    a[5:15, 5:15] = 1
    path = make_raster(a, crs="EPSG:4674", transform=from_origin(-55.0, -10.0, 0.00027, 0.00027))
    with pytest.warns(UserWarning, match=r"`simplify` 15 in CRS units is 55,556 pixels.*15px"):
        vectorize(path, simplify=15)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        vectorize(path, simplify="15px")
        vectorize(path, simplify=0.0005)  # about two pixels


def test_geojson_neighbours_stay_edge_to_edge_in_longitude_latitude(tmp_path) -> None:
    """GeoJSON is reprojected to CRS84 vertex by vertex; a corner of one polygon on a straight edge of its
    neighbour then fell off that edge: 14 377 overlapping pairs on this CDL subset (none in the other formats)."""
    import geopandas as gpd

    src = shared_file("usda_cdl_kansas/2021_30m_cdls_-106095_1807575_15000.tif")
    vectorize(src, tmp_path / "c.geojson")
    g = gpd.read_file(tmp_path / "c.geojson")
    pairs = shapely.STRtree(g.geometry.values).query(g.geometry.values, predicate="overlaps")
    assert pairs.shape[1] == 0
    assert g.geometry.area.sum() == pytest.approx(shapely.union_all(g.geometry.values).area, rel=1e-9)
