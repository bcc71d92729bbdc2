"""Rasters read where they live: over HTTP (GDAL's /vsicurl/, range requests) and inside zip files.

A small HTTP server with range requests runs on 127.0.0.1 for each test module, started and stopped
here; every wait is bounded.
"""

from __future__ import annotations

from geoseg.models.demo import DEMO_MODEL

import http.server
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import rasterio

from tests.conftest import SAMPLE


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` support (what GDAL's /vsicurl/ asks for)."""

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        a, _, b = rng.replace("bytes=", "").partition("-")
        start, end = int(a or 0), min(int(b) if b else size - 1, size - 1)
        if start >= size:
            self.send_error(416)
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by the base class after copyfile
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):  # type: ignore[no-untyped-def]
        n = getattr(self, "_remaining", None)
        if n is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(n))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("www")
    shutil.copy(SAMPLE / "field.tif", root / "field.tif")
    import geopandas as gpd

    # GeoJSON: read whole (GDAL 3.10's SQLite over /vsicurl/ misreads this small GeoPackage; GDAL 3.6's reads it)
    gpd.read_file(SAMPLE / "field_training_polygons.gpkg").to_file(root / "polygons.geojson")
    with zipfile.ZipFile(root / "bundle.zip", "w") as z:
        z.write(SAMPLE / "field.tif", "scenes/field.tif")

    def handler(*args, **kwargs):  # type: ignore[no-untyped-def]
        return _RangeHandler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "20")  # every request bounded
    monkeypatch.setenv("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", ".tif,.zip,.geojson")


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
