"""geoseg installs like a library: a wheel, installed in a fresh environment, runs `geoseg infer` with
its default model from a directory outside the source tree.

The fresh environment sees this one's site-packages through a ``.pth`` file (torch and the other
dependencies are not installed again); ``.pth`` files inside that folder are not processed, so this
environment's editable install of geoseg stays invisible and only the wheel's geoseg is importable.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import ROOT, SAMPLE


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)  # type: ignore[call-overload]
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_the_wheel_installs_and_infers_with_its_default_model(tmp_path: Path) -> None:
    import numpy as np
    import rasterio

    src = tmp_path / "src"  # a clean copy: a build must not write into the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                              "tests", "docs", "benchmarks"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
          str(src)])
    (wheel,) = dist.glob("geoseg-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    outer = sorted({*site.getsitepackages(), sysconfig.get_paths()["purelib"]})
    (purelib / "_outer_site_packages.pth").write_text("\n".join(outer) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--ignore-installed",
          str(wheel)])

    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(SAMPLE / "field.tif", work / "field.tif")
    where = _run([str(py), "-c", "import geoseg; print(geoseg.__file__)"], cwd=work).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's geoseg, not the checkout's
    _run([str(venv / "bin" / "geoseg"), "infer", "field.tif", "-o", "out", "-q"], cwd=work)
    assert (work / "out" / "field_polygons.gpkg").stat().st_size > 0
    with rasterio.open(work / "out" / "field_classes.tif") as ds, rasterio.open(work / "field.tif") as img:
        assert (ds.width, ds.height, ds.crs) == (img.width, img.height, img.crs)
        classes = ds.read(1)
    assert np.isin(classes, [*range(4), 255]).all() and len(np.unique(classes)) > 1
