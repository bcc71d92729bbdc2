"""``geoseg train`` on the command line: bad inputs give one clear line, a non-zero exit and no output."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from rasterio.transform import from_origin

from tests.conftest import shared_file

pytest.importorskip("torch")

BR_IMG = "rstoolbox_brazil/lsat_tm_1988.tif"
BR_POLY = "rstoolbox_brazil/trainingPolygons_lsat.gpkg"
FAST = ["--arch", "unet", "--tile-size", "32", "--depth", "2", "--base-channels", "4", "--epochs", "1",
        "--samples-per-epoch", "4", "--batch-size", "4", "-q"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from geoseg.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(code: int, err: str, needle: str, dest: Path) -> None:
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not dest.exists()
    assert not list(dest.parent.glob(f"{dest.stem}*"))


def test_labels_that_do_not_overlap(tmp_path: Path, make_raster: Callable[..., Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # a label raster in the image's CRS but 500 km away
    lab = make_raster(np.ones((64, 64), dtype=np.uint8), name="far.tif", crs="EPSG:32622",
                      transform=from_origin(120000.0, 4000000.0, 30.0, 30.0))
    out = tmp_path / "out" / "m.pt"
    out.parent.mkdir()
    code, _, err = run(["train", "--image", str(shared_file(BR_IMG)), "--labels", str(lab), "-o", str(out), *FAST],
                       capsys)
    assert_one_line_error(code, err, "do not overlap", out)


def test_polygons_that_do_not_overlap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import geopandas as gpd

    g = gpd.read_file(shared_file(BR_POLY))
    g["geometry"] = g.translate(300000, 0)
    p = tmp_path / "moved.gpkg"
    g.to_file(p)
    out = tmp_path / "out" / "m.pt"
    out.parent.mkdir()
    code, _, err = run(["train", "--image", str(shared_file(BR_IMG)), "--vector-labels", str(p), "--class-field",
                        "class", "-o", str(out), *FAST], capsys)
    assert_one_line_error(code, err, "do not overlap", out)


def test_missing_class_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "m.pt"
    out.parent.mkdir()
    code, _, err = run(["train", "--image", str(shared_file(BR_IMG)), "--vector-labels", str(shared_file(BR_POLY)),
                        "--class-field", "landcover", "-o", str(out), *FAST], capsys)
    assert_one_line_error(code, err, "has no field 'landcover'; available fields: class", out)


def test_vector_labels_without_crs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shp = shared_file("scikit_eo_l8/endmembers.shp")
    assert not shp.with_suffix(".prj").exists()
    out = tmp_path / "out" / "m.pt"
    out.parent.mkdir()
    code, _, err = run(["train", "--image", str(shared_file("scikit_eo_l8/LC08_232066_20190727.tif")),
                        "--vector-labels", str(shp), "--class-field", "class", "-o", str(out), *FAST], capsys)
    assert_one_line_error(code, err, "has no CRS", out)


@pytest.mark.parametrize("kind", ["empty_tif", "empty_gpkg", "all_unlabelled"])
def test_empty_label_files(tmp_path: Path, make_raster: Callable[..., Path], capsys: pytest.CaptureFixture[str],
                           kind: str) -> None:
    import rasterio

    img = shared_file(BR_IMG)
    args: list[Any]
    if kind == "empty_tif":
        lab = tmp_path / "labels.tif"
        lab.write_bytes(b"")
        args, needle = ["--labels", str(lab)], "file is empty"
    elif kind == "empty_gpkg":
        import geopandas as gpd

        g = gpd.read_file(shared_file(BR_POLY)).iloc[:0]
        lab = tmp_path / "none.gpkg"
        g.to_file(lab)
        args, needle = ["--vector-labels", str(lab), "--class-field", "class"], "no features"
    else:
        with rasterio.open(img) as ds:
            lab = make_raster(np.zeros((ds.height, ds.width), dtype=np.uint8), name="zeros.tif", crs=ds.crs,
                              transform=ds.transform)
        args, needle = ["--labels", str(lab)], "no labelled pixels"
    out = tmp_path / "out" / "m.pt"
    out.parent.mkdir()
    code, _, err = run(["train", "--image", str(img), *args, "-o", str(out), *FAST], capsys)
    assert_one_line_error(code, err, needle, out)


def test_tile_larger_than_image_and_bad_class_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "m.pt"
    out.parent.mkdir()
    base = ["train", "--image", str(shared_file(BR_IMG)), "--vector-labels", str(shared_file(BR_POLY)),
            "--class-field", "class", "-o", str(out)]
    code, _, err = run([*base, "--arch", "unet", "--tile-size", "512", "--depth", "2", "-q"], capsys)
    assert_one_line_error(code, err, "exceeds the image (287x310 px)", out)
    code, _, err = run([*base, *FAST, "--class-map", "forrest=trees"], capsys)
    assert_one_line_error(code, err, "forrest", out)


def test_config_file_and_cli_train_then_infer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import rasterio
    import torch

    cfgf = tmp_path / "train.toml"
    cfgf.write_text(f'images = ["{shared_file("eolearn_slovenia/NDVI_timeseries_68dates.tif")}"]\n'
                    f'labels = "{shared_file("eolearn_slovenia/LULC_label.tif")}"\n'
                    'arch = "unet"\ntile_size = 32\ndepth = 2\nbase_channels = 4\nepochs = 1\nsamples_per_epoch = 4\n'
                    'batch_size = 4\nval_block = 48\nclass_map = ["1=cultivated", "8=artificial"]\n')
    out = tmp_path / "m.pt"
    code, stdout, err = run(["train", "--config", str(cfgf), "-o", str(out), "-q"], capsys)
    assert code == 0, err
    assert "best model" in stdout and "validation" in stdout
    meta = torch.load(out, map_location="cpu", weights_only=True)["geoseg_meta"]
    assert '"tile_size": 32' in meta and "cultivated" in meta and '"command": ["geoseg"' in meta
    code, stdout, err = run(["infer", str(shared_file("eolearn_slovenia/NDVI_timeseries_68dates.tif")), "-m",
                             str(out), "-o", str(tmp_path), "-q"], capsys)
    assert code == 0, err
    with rasterio.open(tmp_path / "NDVI_timeseries_68dates_classes.tif") as ds:
        vals = set(np.unique(ds.read(1)).tolist())
    assert vals <= {1, 2, 3, 4, 8}


@pytest.mark.parametrize("command", ["train", "model init"])
def test_a_checkpoint_named_onnx_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            command: str) -> None:
    """`-o m.onnx` wrote a torch checkpoint there, which `geoseg infer -m m.onnx` then failed to load."""
    out = tmp_path / "m.onnx"
    if command == "train":
        args = ["train", "--image", str(shared_file(BR_IMG)), "--vector-labels", str(shared_file(BR_POLY)),
                "--class-field", "class", "-o", str(out), *FAST]
    else:
        args = ["model", "init", "--bands", "3", "--classes", "2", "-o", str(out)]
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "name it .pt", out)


def test_features_with_an_empty_or_null_class_are_unlabelled_and_said_so(tmp_path: Path) -> None:
    """An empty text class became a class named "" (in the legend, RAT and style) while NULL was dropped
    without a word; both are now left out, with one warning that counts them."""
    import geopandas as gpd
    from shapely.geometry import box

    from geoseg.io.labels import read_polygons

    g = gpd.GeoDataFrame({"c": ["crop", "", None, "  ", "forest"]},
                         geometry=[box(i, 0, i + 1, 1) for i in range(5)], crs="EPSG:32633")
    g.to_file(tmp_path / "p.gpkg")
    with pytest.warns(UserWarning, match=r"3 feature\(s\) with an empty or NULL 'c' are left out"):
        got = read_polygons(tmp_path / "p.gpkg", "c")
    assert list(got["c"]) == ["crop", "forest"]


def test_ignore_value_with_polygon_labels_is_refused_with_what_to_use(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--ignore-value 0 with --vector-labels did nothing: the polygons of value 0 were trained on, silently."""
    out = tmp_path / "m.pt"
    code, _, err = run(["train", "--image", str(shared_file(BR_IMG)), "--vector-labels", str(shared_file(BR_POLY)),
                        "--class-field", "class", "--ignore-value", "0", "-o", str(out), *FAST], capsys)
    assert_one_line_error(code, err, "--class-map VALUE=ignore", out)
