"""The QGIS plugin in a real, headless QGIS (Debian's 3.22 in CI): the zip installs into a fresh
profile, the provider lists its algorithms, qgis_process runs of segment and vectorize give the
CLI's outputs, and QGIS renders the class raster and polygons in the class colours on its own.

QGIS runs in its own processes (qgis_process.bin, and /usr/bin/python3 for PyQGIS): this
environment's Python cannot import it. Skipped only where QGIS is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import ROOT, SAMPLE
from geoseg.models.demo import DEMO_MODEL

QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
SYSTEM_PYTHON = "/usr/bin/python3"


def _qgis_missing() -> str | None:
    if QGIS_PROCESS is None:
        return "QGIS is not installed (no qgis_process.bin; apt-get install qgis python3-qgis)"
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True,
                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    if r.returncode != 0:
        return f"PyQGIS cannot be imported by {SYSTEM_PYTHON} (apt-get install python3-qgis)"
    return None


pytestmark = pytest.mark.skipif(_qgis_missing() is not None, reason=str(_qgis_missing()))

ALGORITHMS = ["geoseg:evaluate", "geoseg:preview", "geoseg:segment", "geoseg:train", "geoseg:vectorize"]


def _geoseg_cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "geoseg", *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r


def _profile(root: Path, command: str) -> dict[str, str]:
    """A fresh QGIS settings folder with the plugin installed from its zip by 'geoseg qgis install';
    returns the environment that makes QGIS use it."""
    (root / "profiles").mkdir(parents=True)
    _geoseg_cli("qgis", "install", "--profiles-path", str(root / "profiles"), "--zip", str(root.parent / "plugin.zip"),
                "--command", command)
    run_dir = root / "runtime"
    run_dir.mkdir(mode=0o700)
    # QGIS embeds the system Python: an activated virtual environment (its bin first on PATH) would make it
    # look for its standard library there and fail ("Couldn't load SIP module"); the plugin's command runs
    # this environment's geoseg by its full path anyway
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                      if not d.startswith(venv.rstrip("/") + "/"))
    return {**env, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(root),
            "XDG_RUNTIME_DIR": str(run_dir)}


@pytest.fixture(scope="module")
def qgis(tmp_path_factory):
    d = tmp_path_factory.mktemp("qgis")
    _geoseg_cli("qgis", "build", "-o", str(d / "plugin.zip"))
    # the geoseg command of this environment, running this checkout
    command = d / "geoseg"
    command.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m geoseg "$@"\n')
    command.chmod(0o755)
    return d, _profile(d / "config", str(command))


def _qgis_process(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def test_plugin_installs_into_a_fresh_profile_and_lists_its_algorithms(qgis) -> None:
    d, env = qgis
    installed = d / "config" / "profiles" / "default" / "python" / "plugins" / "geoseg_qgis"
    assert (installed / "metadata.txt").is_file() and (installed / "provider.py").is_file()
    plugins = _qgis_process(env, "plugins").stdout
    assert "* geoseg_qgis" in plugins  # loaded, with a Processing provider
    listed = [line.split()[0] for line in _qgis_process(env, "list").stdout.splitlines()
              if line.strip().startswith("geoseg:")]
    assert sorted(listed) == ALGORITHMS
    help_text = _qgis_process(env, "help", "geoseg:segment").stdout
    for p in ("INPUT", "MODEL", "TILE_SIZE", "BLEND", "RESUME", "OUTPUT", "PROBABILITIES", "POLYGONS"):
        assert p in help_text


@pytest.fixture(scope="module")
def runs(qgis):
    """The sample scene segmented by the CLI and by qgis_process geoseg:segment."""
    d, env = qgis
    cli, alg = d / "cli", d / "alg"
    _geoseg_cli("infer", str(SAMPLE / "field.tif"), "-m", str(DEMO_MODEL), "-o", str(cli),
                "--probabilities", "-q")
    alg.mkdir()
    r = _qgis_process(env, "run", "geoseg:segment", "--", f"INPUT={SAMPLE / 'field.tif'}",
                      f"MODEL={DEMO_MODEL}", f"OUTPUT={alg / 'c.tif'}",
                      f"PROBABILITIES={alg / 'p.tif'}", f"POLYGONS={alg / 'poly.gpkg'}")
    assert "tiles" in r.stdout + r.stderr  # progress reached Processing
    return cli, alg, env


def _same_raster(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.profile == y.profile
        assert x.tags() == y.tags() and x.scales == y.scales and x.descriptions == y.descriptions
        assert np.array_equal(x.read(masked=True).filled(0), y.read(masked=True).filled(0))
        assert np.array_equal(x.dataset_mask(), y.dataset_mask())


def _same_polygons(a: Path, b: Path) -> None:
    import pyogrio
    import shapely

    x, y = pyogrio.read_dataframe(a, layer=0), pyogrio.read_dataframe(b, layer=0)
    assert len(x) == len(y) > 0
    assert list(x.columns) == list(y.columns)
    for col in x.columns:
        if col == x.geometry.name:
            assert shapely.equals(np.asarray(x.geometry.values), np.asarray(y.geometry.values)).all()
        else:
            assert list(x[col]) == list(y[col]), col


def test_qgis_process_segment_matches_the_cli(runs) -> None:
    cli, alg, _ = runs
    _same_raster(cli / "field_classes.tif", alg / "c.tif")
    _same_raster(cli / "field_probabilities.tif", alg / "p.tif")
    _same_polygons(cli / "field_polygons.gpkg", alg / "poly.gpkg")
    assert (alg / "c.qml").read_text() == (cli / "field_classes.qml").read_text()
    assert (alg / "c.tif.aux.xml").read_text() == (cli / "field_classes.tif.aux.xml").read_text()


def test_qgis_process_vectorize_matches_the_cli(runs, tmp_path) -> None:
    cli, alg, env = runs
    _geoseg_cli("vectorize", str(cli / "field_classes.tif"), "-o", str(tmp_path / "cli.shp"), "--min-area", "2000",
                "--simplify", "1px", "-q")
    _qgis_process(env, "run", "geoseg:vectorize", "--", f"INPUT={cli / 'field_classes.tif'}", "MIN_AREA=2000",
                  "SIMPLIFY=1px", f"OUTPUT={tmp_path / 'alg.shp'}")
    _same_polygons(tmp_path / "cli.shp", tmp_path / "alg.shp")
    assert (tmp_path / "alg.qml").read_text() == (tmp_path / "cli.qml").read_text()


def _render(env: dict[str, str], out: Path, width: int, height: int, *layers: Path) -> tuple[np.ndarray, list]:
    import matplotlib.image

    r = subprocess.run([SYSTEM_PYTHON, str(ROOT / "tests" / "qgis_render.py"), str(out), str(width), str(height),
                        *map(str, layers)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    return (matplotlib.image.imread(out)[..., :3] * 255).round().astype(int), info


def test_qgis_draws_classes_and_polygons_in_their_colours_where_they_are(runs) -> None:
    """Each layer rendered by QGIS with the style it found by itself, at one screen pixel per raster pixel:
    the pixels of each class show that class's colour (polygons: away from their outlines)."""
    cli, alg, env = runs
    with rasterio.open(alg / "c.tif") as ds:
        classes, h, w, bounds = ds.read(1), ds.height, ds.width, list(ds.bounds)
        from geoseg.classes import ClassSchema

        schema = ClassSchema.from_json(ds.tags()["geoseg_classes"])
    png, info = _render(env, alg / "classes.png", w, h, alg / "c.tif")
    assert info[0]["renderer"] == "paletted"
    assert [255.0, 255.0, 100.0] in info[0]["transparent"]  # our .qml's: QGIS's own default has no such entry
    assert info[0]["classes"] == [[c.id, c.name, "#" + "".join(f"{v:02x}" for v in c.colour)] for c in schema.classes]
    for c in schema.classes:
        where = classes == c.id
        assert where.sum() > 50
        hit = (np.abs(png[where] - np.array(c.colour)).max(axis=1) <= 2).mean()
        assert hit > 0.99, (c.name, hit)

    # the polygons alone (they cover the raster, so their extent is the raster's)
    png, info = _render(env, alg / "polygons.png", w, h, alg / "poly.gpkg")
    assert info[0]["renderer"] == "categorizedSymbol"
    assert np.allclose(info[0]["extent"], bounds)
    from scipy.ndimage import maximum_filter, minimum_filter

    frame = np.zeros_like(classes, dtype=bool)
    frame[3:-3, 3:-3] = True  # outlines run along the map's border too
    for c in schema.classes:
        # 2 px from any class edge, so away from the outlines
        inner = (minimum_filter(classes, 5) == c.id) & (maximum_filter(classes, 5) == c.id) & frame
        hit = (np.abs(png[inner] - np.array(c.colour)).max(axis=1) <= 2).mean()
        assert hit > 0.97, (c.name, hit)


def test_a_missing_geoseg_command_is_one_clear_message(qgis, tmp_path) -> None:
    d, _ = qgis
    env = _profile(d / "broken", str(tmp_path / "no" / "geoseg"))
    r = _qgis_process(env, "run", "geoseg:vectorize", "--", f"INPUT={SAMPLE / 'field.tif'}",
                      f"OUTPUT={tmp_path / 'x.gpkg'}", check=False)
    assert r.returncode != 0
    assert "does not exist or is not executable" in r.stdout + r.stderr
    assert not (tmp_path / "x.gpkg").exists()


def test_outputs_are_loaded_into_the_project_with_their_styles(qgis) -> None:
    """As after a run from Processing's dialog: both outputs land in the project, styled by class."""
    d, env = qgis
    plugins = d / "config" / "profiles" / "default" / "python" / "plugins"
    r = subprocess.run([SYSTEM_PYTHON, str(ROOT / "tests" / "qgis_load.py"), str(plugins), str(SAMPLE / "field.tif")],
                       capture_output=True, text=True, timeout=300,
                       env={**env, "GEOSEG_COMMAND": str(d / "geoseg")})  # a standalone app reads no profile
    assert r.returncode == 0, r.stderr[-3000:]
    layers = json.loads(r.stdout.strip().splitlines()[-1])
    from geoseg.models.meta import peek_meta

    names = peek_meta(DEMO_MODEL).schema.names
    assert layers == [["Classes", "paletted", names], ["Polygons", "categorizedSymbol", names]]


def test_qgis_process_evaluate_and_preview_match_the_cli(runs, tmp_path) -> None:
    cli, alg, env = runs
    truth = SAMPLE / "field_training_polygons.gpkg"
    _geoseg_cli("evaluate", str(alg / "c.tif"), str(truth), "--class-field", "class", "-o", str(tmp_path / "cli"))
    r = _qgis_process(env, "--json", "run", "geoseg:evaluate", "--", f"PREDICTION={alg / 'c.tif'}", f"TRUTH={truth}",
                      "CLASS_FIELD=class", f"OUTPUT_FOLDER={tmp_path / 'alg'}")
    results = json.loads(r.stdout[r.stdout.index("{"):])["results"]
    assert Path(results["METRICS"]) == tmp_path / "alg" / "c_metrics.csv"
    for name in ("c_metrics.csv", "c_confusion.csv"):
        assert (tmp_path / "alg" / name).read_text() == (tmp_path / "cli" / name).read_text()
    _qgis_process(env, "run", "geoseg:preview", "--", f"CLASSES={alg / 'c.tif'}", f"IMAGE={SAMPLE / 'field.tif'}",
                  f"OUTPUT={tmp_path / 'p.png'}")
    _geoseg_cli("preview", str(alg / "c.tif"), "--image", str(SAMPLE / "field.tif"), "-o", str(tmp_path / "c.png"))
    import matplotlib.image

    assert np.array_equal(matplotlib.image.imread(tmp_path / "p.png"), matplotlib.image.imread(tmp_path / "c.png"))
