"""``geoseg vectorize`` and the polygon options of ``geoseg infer`` from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, shared_file


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoseg", *args], cwd=ROOT, capture_output=True, text=True)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_vectorize_cdl_with_class_names(tmp_path: Path) -> None:
    import geopandas as gpd

    src = shared_file("usda_cdl_kansas/2021_30m_cdls.tif")
    out = tmp_path / "crops.gpkg"
    r = run("vectorize", str(src), "-o", str(out), "--class-names", "1=corn,5=soybeans,24=winter wheat",
            "--classes", "corn,soybeans,24", "--min-area", "9000", "-q")
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    got = gpd.read_file(out)
    assert set(got.class_name) == {"corn", "soybeans", "winter wheat"}
    assert got.area_m2.min() >= 9000
    assert "below --min-area dropped" in " ".join(r.stderr.split())


def test_vectorize_simplify_keeps_a_coverage(tmp_path: Path) -> None:
    import geopandas as gpd
    import shapely

    src = shared_file("sits_classified_maps/SENTINEL2_MSI_20LNR_2020-06-04_2021-08-26_class_v1.tif")
    out = tmp_path / "s.parquet"
    r = run("vectorize", str(src), "-o", str(out), "--simplify", "1.5px", "--band-rows", "100", "-q")
    assert r.returncode == 0, r.stderr
    got = gpd.read_parquet(out)
    g = got.geometry.values
    assert shapely.is_valid(g).all()
    # no overlaps between neighbours
    a, b = shapely.STRtree(g).query(g, predicate="intersects")
    sel = a < b
    assert shapely.area(shapely.intersection(g[a[sel]], g[b[sel]])).max(initial=0) < 1e-6
    # no gaps: the simplified coverage covers exactly the same area as the pixels
    assert shapely.area(shapely.union_all(g)) == pytest.approx(shapely.area(g).sum(), rel=1e-9)
    import rasterio

    with rasterio.open(src) as ds:
        valid = int((ds.read_masks(1) > 0).sum())
    assert shapely.area(g).sum() == pytest.approx(valid * 400.0, rel=1e-9)
    # and it did simplify: fewer vertices than the pixel-exact polygons
    exact = run("vectorize", str(src), "-o", str(tmp_path / "e.parquet"), "-q")
    assert exact.returncode == 0
    e = gpd.read_parquet(tmp_path / "e.parquet").geometry.values
    assert shapely.get_num_coordinates(g).sum() < 0.8 * shapely.get_num_coordinates(e).sum()


@pytest.mark.parametrize("args,needle", [
    (["missing.tif", "-o", "{tmp}/o.gpkg"], "file not found"),
    (["{mask}", "-o", "{tmp}/o.kml"], "unknown vector format"),
    (["{mask}", "-o", "{tmp}/nodir/o.gpkg"], "does not exist"),
    (["{mask}", "-o", "{tmp}/o.gpkg", "--simplify", "lots"], "--simplify"),
    (["{mask}", "-o", "{tmp}/o.gpkg", "--classes", "maize"], "no class of that name"),
    (["{mask}", "-o", "{tmp}/o.gpkg", "--class-names", "1=a,b"], "ID=NAME"),
    (["{mask}", "-o", "s3://bucket/o.gpkg"], "s3://bucket/o.gpkg: outputs are written to local files"),
])
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    mask = shared_file("ftw_baselines/mask.tif")
    argv = [a.format(tmp=tmp_path, mask=mask) for a in args]
    line = one_line_error(run("vectorize", *argv))
    assert needle in line
    assert not list(tmp_path.rglob("o.*")) and not list(tmp_path.rglob("*geoseg-tmp*"))


def test_cli_refuses_to_overwrite(tmp_path: Path) -> None:
    mask = shared_file("ftw_baselines/mask.tif")
    out = tmp_path / "f.geojson"
    out.write_text("keep me")
    line = one_line_error(run("vectorize", str(mask), "-o", str(out), "-q"))
    assert "--overwrite" in line
    assert out.read_text() == "keep me"
    r = run("vectorize", str(mask), "-o", str(out), "--overwrite", "--boundary-class", "2", "-q")
    assert r.returncode == 0, r.stderr
    assert out.read_text().startswith("{")


def test_cli_empty_result_says_so(tmp_path: Path, make_raster) -> None:
    src = make_raster(np.zeros((5, 5), np.uint8))
    r = run("vectorize", str(src), "-o", str(tmp_path / "e.fgb"), "--classes", "3", "-q")
    assert r.returncode == 0, r.stderr
    msg = " ".join(r.stderr.split())
    assert "empty layer" in msg and "0 polygons" in msg


def test_cli_help_lists_units() -> None:
    r = run("vectorize", "--help")
    assert r.returncode == 0
    for opt in ("--min-area", "--sieve", "--fill-holes", "--simplify", "--boundary-class", "--class-names"):
        assert opt in r.stdout


# ----------------------------------------------------------------- infer wiring
@pytest.fixture(scope="module")
def model8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 8-band, 3-class checkpoint for the FTW Sentinel-2 scene."""
    p = tmp_path_factory.mktemp("m") / "m.pt"
    src = shared_file("ftw_baselines/inference-img.tif")
    r = run("model", "init", "--bands", "8", "--classes", "3", "--class-names", "background,field,boundary",
            "--base-channels", "8", "--depth", "2", "--tile-size", "128", "--overlap", "32",
            "--stats-from", str(src), "-o", str(p))
    assert r.returncode == 0, r.stderr
    return p


def test_infer_checks_vector_destination_first(tmp_path: Path, model8: Path) -> None:
    img = shared_file("ftw_baselines/inference-img.tif")
    out = tmp_path / "o"
    out.mkdir()
    stem = img.stem
    (out / f"{stem}_polygons.fgb").write_text("old")
    r = run("infer", str(img), "-m", str(model8), "-o", str(out), "--vector-format", "fgb", "-q")
    line = one_line_error(r)
    assert "_polygons.fgb" in line and "--overwrite" in line
    assert not (out / f"{stem}_classes.tif").exists()  # refused before any inference
    line = one_line_error(run("infer", str(img), "-m", str(model8), "-o", str(out), "--vector-out",
                              str(out / "x.kml"), "-q"))
    assert "unknown vector format" in line


def test_infer_writes_polygons_with_confidence(tmp_path: Path, model8: Path) -> None:
    import geopandas as gpd

    img = shared_file("ftw_baselines/inference-img.tif")
    r = run("infer", str(img), "-m", str(model8), "-o", str(tmp_path), "--probabilities", "--device", "cpu", "-q",
            "--vector-format", "parquet")
    assert r.returncode == 0, r.stderr
    polys = tmp_path / f"{img.stem}_polygons.parquet"
    assert f"polygons: {polys}" in r.stdout.replace("\n", "")
    got = gpd.read_parquet(polys)
    assert len(got) > 0
    assert got.confidence_mean.between(0, 1).all()
    import rasterio

    with rasterio.open(tmp_path / f"{img.stem}_classes.tif") as ds:
        a = ds.read(1)
        px = abs(ds.transform.a * ds.transform.e)
    assert got.area_m2.sum() == pytest.approx((a != 255).sum() * px)
    (tmp_path / "x").mkdir()
    r = run("infer", str(img), "-m", str(model8), "-o", str(tmp_path / "x"), "--no-vector", "-q")
    assert r.returncode == 0, r.stderr
    assert "polygons:" not in r.stdout and not list((tmp_path / "x").glob("*_polygons.*"))


def test_writer_process_never_imports_from_the_working_directory(tmp_path: Path, make_raster) -> None:
    """The polygon writer runs in a child Python: a json.py where the user works must not run in it."""
    cls = make_raster(np.repeat(np.arange(4, dtype=np.uint8), 16).reshape(8, 8), name="c.tif", nodata=255)
    work = tmp_path / "work"
    work.mkdir()
    (work / "json.py").write_text("open('PWNED', 'w').write('ran')\nfrom json_real_never import x\n")
    launcher = "import sys; sys.argv = ['geoseg', *sys.argv[1:]]; from geoseg.cli import main; main()"
    # -P: the launcher itself must not import from the working directory either (the console script does not)
    r = subprocess.run([sys.executable, "-P", "-c", launcher, "vectorize", str(cls), "-o", str(work / "p.gpkg"),
                        "-q"], cwd=work, capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-800:]
    assert not (work / "PWNED").exists()
    assert (work / "p.gpkg").exists()


def test_one_polygon_is_singular(tmp_path: Path, make_raster) -> None:
    cls = make_raster(np.ones((6, 7), np.uint8), name="one.tif", nodata=255)
    r = run("vectorize", str(cls), "-o", str(tmp_path / "one.gpkg"), "-q")
    assert r.returncode == 0, r.stderr[-500:]
    assert "1 polygon (" in r.stderr and "1 polygons" not in r.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_quickly_says_so_and_leaves_nothing(tmp_path: Path, workers: str) -> None:
    """Ctrl-C during vectorize: exit 130 within a few seconds, one line that says what happened (typer turned
    it into a silent exit 130), no worker tracebacks, nothing at the destination (no -journal either)."""
    import signal
    import time

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _mirror import mirror_tile

    big = mirror_tile(shared_file("usda_cdl_kansas/2021_30m_cdls.tif"), tmp_path / "big.tif", 6144, 6144)
    out = tmp_path / "out"
    out.mkdir()
    # Ctrl-C's default action in the child even when the suite runs in the background (a shell's `cmd &`
    # starts it with SIGINT ignored, which the child would inherit and keep)
    p = subprocess.Popen([sys.executable, "-m", "geoseg", "vectorize", str(big), "-o", str(out / "v.gpkg"),
                          "--workers", workers, "-q"], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(5)
    if p.poll() is not None:
        pytest.skip("the job finished before the signal")
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    took = time.perf_counter() - t0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 130
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), err
    assert "Traceback" not in err
    # under 2 s here at a load of 5-7 on 2 cores (benchmarks/sigint_trials.py: median 0.9 s with 1 worker,
    # 0.4 s with 2; it was 2.8 s and 12 s before the polygonizing thread and the workers stopped on request)
    assert took < 5, took
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_nodata_option_leaves_an_undeclared_value_out(tmp_path: Path, workers: str) -> None:
    """--nodata 0 on a class raster whose 0 is not declared: no polygons of 0, the others unchanged
    (also when bands are polygonized by worker processes)."""
    import geopandas as gpd
    import rasterio

    src = shared_file("usda_cdl_kansas/2021_30m_cdls.tif")
    with rasterio.open(src) as ds:
        data, prof = ds.read(1), ds.profile
    data[:, :200] = 0
    prof.update(nodata=None)
    with rasterio.open(tmp_path / "c.tif", "w", **prof) as dst:
        dst.write(data, 1)
    plain = tmp_path / "plain.gpkg"
    marked = tmp_path / "marked.gpkg"
    assert run("vectorize", str(tmp_path / "c.tif"), "-o", str(plain), "-q", "--band-rows", "128").returncode == 0
    r = run("vectorize", str(tmp_path / "c.tif"), "-o", str(marked), "-q", "--nodata", "0", "--workers", workers,
            "--band-rows", "128")
    assert r.returncode == 0, r.stderr
    a = gpd.read_file(plain, layer="plain")
    b = gpd.read_file(marked, layer="marked")
    assert (a["class_id"] == 0).any() and not (b["class_id"] == 0).any()
    keep = a[a["class_id"] != 0]
    assert len(keep) == len(b) and abs(keep.area.sum() - b.area.sum()) < 1e-3 * keep.area.sum()


def test_resume_of_one_input_skips_a_complete_output_and_makes_a_missing_one(tmp_path: Path, make_raster) -> None:
    """vectorize --resume with one input (it was for several only): a finished output is kept and said to be
    complete (it failed with 'exists'); a missing one (an interrupted run leaves none) is made."""
    cls = make_raster(np.array([[1, 1, 2], [2, 2, 1]], np.uint8), name="one.tif", nodata=255)
    out = tmp_path / "one.gpkg"
    r = run("vectorize", str(cls), "-o", str(out), "-q", "--resume")
    assert r.returncode == 0 and out.exists(), r.stderr[-500:]
    before = out.stat().st_mtime_ns
    r = run("vectorize", str(cls), "-o", str(out), "-q", "--resume")
    assert r.returncode == 0, r.stderr[-500:]
    assert "already complete" in r.stderr and out.stat().st_mtime_ns == before


def test_an_image_passed_as_probabilities_is_refused(tmp_path: Path, make_raster) -> None:
    """A uint16 image of the same grid was read as confidence (its last band, unscaled): a meaningless
    confidence_mean on every polygon."""
    import numpy as np

    classes = make_raster(np.ones((20, 20), np.uint8), "c.tif", nodata=255)
    image = make_raster(np.full((4, 20, 20), 900, np.uint16), "image.tif")
    line = one_line_error(run("vectorize", str(classes), "-o", str(tmp_path / "o.gpkg"), "--probabilities",
                              str(image)))
    assert "not a probability raster" in line
    assert not (tmp_path / "o.gpkg").exists()
