"""Any name the file system allows works as an output, with nothing hidden left beside it.

GDAL and pyogrio misread some of them (``a;b.gpkg`` was written as a hidden ``.a``; a GeoPackage
layer may not start with ``-``): temporary files get safe names, and layers names GDAL accepts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SAMPLE

NAMES = ["a;b", "it's", 'q"uote', "new\nline", "-dash", "sp ace", "x$(id)", "ünï", "semi;colon;"]
FORMATS = [".gpkg", ".shp", ".geojson", ".fgb", ".parquet"]


def _cli(args: list[str]) -> int:
    from geoseg.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("c")
    assert _cli(["infer", str(SAMPLE / "field.tif"), "-o", str(out), "--no-vector", "-q"]) == 0
    return out / "field_classes.tif"


@pytest.mark.parametrize("i,name", list(enumerate(NAMES)))
def test_vectorize_writes_any_legal_name(classes: Path, tmp_path: Path, i: int, name: str) -> None:
    import pyogrio

    from geoseg.io.atomic import gdal_safe_path

    for ext in dict.fromkeys((".gpkg", FORMATS[i % len(FORMATS)])):
        dest = tmp_path / f"{name}{ext}"
        assert _cli(["vectorize", str(classes), "-o", str(dest), "-q"]) == 0
        assert dest.exists()
        if ext != ".parquet":
            with gdal_safe_path(dest) as safe:  # pyogrio reads a;b.gpkg as a (URL parameters)
                assert len(pyogrio.read_dataframe(safe)) > 10
    assert not [p for p in tmp_path.iterdir() if "geoseg-tmp" in p.name or p.name.startswith(".")]


@pytest.mark.parametrize("name", ["a;b", "-dash", "new\nline"])
def test_infer_and_preview_write_any_legal_name(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    assert _cli(["infer", str(SAMPLE / "field.tif"), "-o", str(out), "-q"]) == 0
    assert (out / "field_classes.tif").exists() and (out / "field_polygons.gpkg").exists()
    png = tmp_path / f"{name}.png"
    assert _cli(["preview", str(out / "field_classes.tif"), "-o", str(png)]) == 0
    assert png.stat().st_size > 1000
    left = [p for p in [*tmp_path.iterdir(), *out.iterdir()] if "geoseg-tmp" in p.name or p.name.startswith(".")]
    assert not left


def test_output_names_made_from_urls_hold_no_colon() -> None:
    """Two inputs named field.tif on two servers gave "127.0.0.1:40353_field_classes.tif" (no valid name on
    Windows, and a drive-letter look elsewhere)."""
    from geoseg.batch import plan_outputs

    items = plan_outputs(["http://127.0.0.1:8000/a/field.tif", "http://127.0.0.1:9000/a/field.tif"], "out")
    assert [i.stem for i in items] == ["127.0.0.1_8000_a_field", "127.0.0.1_9000_a_field"]
