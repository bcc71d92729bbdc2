"""Rasters read where they live: over HTTP (GDAL's /vsicurl/, range requests) and inside zip files.

A small HTTP server with range requests (tests/range_server.py) runs on 127.0.0.1 for this module, started
and stopped here; every wait is bounded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import rasterio

from geoseg.models.demo import DEMO_MODEL
from tests.conftest import SAMPLE


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("www")
    shutil.copy(SAMPLE / "field.tif", root / "field.tif")
    shutil.copy(SAMPLE / "field_training_polygons.gpkg", root / "polygons.gpkg")  # SQLite read by ranges
    import geopandas as gpd

    gpd.read_file(SAMPLE / "field_training_polygons.gpkg").to_file(root / "polygons.geojson")
    with zipfile.ZipFile(root / "bundle.zip", "w") as z:
        z.write(SAMPLE / "field.tif", "scenes/field.tif")

    # the server is a process of its own (see range_server.py: as a thread here it answered too late)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("range_server.py")), str(root)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}", root
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "20")  # every request bounded
    monkeypatch.setenv("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", ".tif,.zip,.geojson,.gpkg")


def _cli(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    from geoseg.cli import main

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as e:
            code = int(e.code or 0)
    return code, err.getvalue()


@pytest.mark.parametrize("form", ["http", "vsicurl", "vsizip", "zip_over_http"])
def test_remote_and_zipped_rasters_give_the_local_result(served: tuple[str, Path], tmp_path: Path, form: str) -> None:
    from geoseg.pipeline import predict_raster

    url, root = served
    source = {"http": f"{url}/field.tif", "vsicurl": f"/vsicurl/{url}/field.tif",
              "vsizip": f"/vsizip/{root}/bundle.zip/scenes/field.tif",
              "zip_over_http": f"/vsizip/vsicurl/{url}/bundle.zip/scenes/field.tif"}[form]
    local = predict_raster(SAMPLE / "field.tif", DEMO_MODEL, tmp_path / "local.tif", device="cpu")
    remote = predict_raster(source, DEMO_MODEL, tmp_path / "remote.tif", device="cpu")
    with rasterio.open(local.classes_path) as a, rasterio.open(remote.classes_path) as b:
        assert np.array_equal(a.read(1), b.read(1))
        assert a.transform == b.transform and a.crs == b.crs


def test_cli_reads_urls_and_names_outputs_by_the_url(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    code, err = _cli(["infer", f"{url}/field.tif", "-o", str(tmp_path / "out"), "-q"])
    assert code == 0, err
    assert (tmp_path / "out" / "field_classes.tif").exists()
    code, err = _cli(["preview", str(tmp_path / "out" / "field_classes.tif"), "--image", f"{url}/field.tif", "-o",
                      str(tmp_path / "p.png")])
    assert code == 0, err


def test_a_dead_url_is_one_clear_line(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    code, err = _cli(["infer", f"{url}/missing.tif", "-o", str(tmp_path / "out"), "-q"])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "missing.tif" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_evaluate_reads_truth_polygons_and_predictions_over_http(served: tuple[str, Path], tmp_path: Path) -> None:
    from geoseg.evaluate import evaluate
    from geoseg.pipeline import predict_raster

    url, _ = served
    classes = predict_raster(SAMPLE / "field.tif", DEMO_MODEL, tmp_path / "c.tif").classes_path
    local = evaluate(classes, SAMPLE / "field_training_polygons.gpkg", class_field="class", object_level=False)
    remote = evaluate(classes, f"{url}/polygons.geojson", class_field="class", object_level=False)
    assert np.array_equal(local.metrics.matrix, remote.metrics.matrix) and local.metrics.matrix.sum() > 0
    code, err = _cli(["evaluate", str(classes), f"{url}/polygons.geojson", "--class-field", "class", "-o",
                      str(tmp_path / "ev")])
    assert code == 0, err
    assert (tmp_path / "ev" / "c_metrics.csv").exists()


@pytest.mark.parametrize("truth", ["polygons.gpkg", "polygons.geojson", "labels.tif"])
def test_evaluate_and_preview_read_every_input_over_http(served: tuple[str, Path], tmp_path: Path, truth: str) -> None:
    """The prediction, the truth (GeoPackage, GeoJSON or a label raster) and a preview's rasters, all by URL:
    the same scores as the local files."""
    from geoseg.evaluate import evaluate
    from geoseg.pipeline import predict_raster

    url, root = served
    classes = predict_raster(SAMPLE / "field.tif", DEMO_MODEL, tmp_path / "c.tif").classes_path
    shutil.copy(classes, root / "c.tif")
    shutil.copy(classes, root / "labels.tif")
    field = {} if truth.endswith(".tif") else {"class_field": "class"}
    local_truth = root / truth if truth.endswith(".tif") else SAMPLE / "field_training_polygons.gpkg"
    local = evaluate(classes, local_truth, object_level=False, **field)
    remote = evaluate(f"{url}/c.tif", f"{url}/{truth}", object_level=False, **field)
    assert np.array_equal(local.metrics.matrix, remote.metrics.matrix) and local.metrics.matrix.sum() > 0
    code, err = _cli(["evaluate", f"/vsicurl/{url}/c.tif", f"/vsicurl/{url}/{truth}", *(["--class-field", "class"]
                      if field else []), "-o", str(tmp_path / "ev")])
    assert code == 0, err
    assert (tmp_path / "ev" / "c_metrics.csv").exists()
    code, err = _cli(["preview", f"{url}/c.tif", "--image", f"{url}/field.tif", "-o", str(tmp_path / "p.png")])
    assert code == 0 and (tmp_path / "p.png").exists(), err


@pytest.mark.parametrize("labels", ["polygons.gpkg", "labels.tif"])
def test_training_reads_images_and_labels_over_http(served: tuple[str, Path], tmp_path: Path, labels: str) -> None:
    """geoseg train with the image and the labels (polygons or a label raster) given by URL trains the same
    model as from the local files (`--image http://...` became `http:/...`, file not found)."""
    import torch

    from geoseg.pipeline import predict_raster

    url, root = served
    if labels.endswith(".tif"):
        predict_raster(SAMPLE / "field.tif", DEMO_MODEL, root / "labels.tif", overwrite=True)
        local_labels, option = [root / "labels.tif"], ["--labels"]
    else:
        local_labels, option = [SAMPLE / "field_training_polygons.gpkg"], ["--vector-labels"]
    common = ["--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "2", "--tile-size", "32",
              "--base-channels", "4", "--depth", "2", "--seed", "0", "-q", "--device", "cpu",
              *(["--class-field", "class"] if option == ["--vector-labels"] else [])]
    runs = {"local": (str(SAMPLE / "field.tif"), str(local_labels[0])), "url": (f"{url}/field.tif", f"{url}/{labels}")}
    weights = {}
    for name, (image, lab) in runs.items():
        code, err = _cli(["train", "--image", image, *option, lab, "-o", str(tmp_path / f"{name}.pt"), *common])
        assert code == 0, err
        weights[name] = torch.load(tmp_path / f"{name}.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert weights["local"].keys() == weights["url"].keys()
    assert all(torch.equal(weights["local"][k], weights["url"][k]) for k in weights["local"])
