"""Import rules: torch only where models run; typer/rich only in the CLI.

(click is not checked: rasterio itself imports it.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

TORCH_FREE = ["geoseg", "geoseg.errors", "geoseg.classes", "geoseg.modelmeta", "geoseg.tiling", "geoseg.blend",
              "geoseg.io.raster", "geoseg.io.writer", "geoseg.io.atomic", "geoseg.io.stats", "geoseg.pipeline",
              "geoseg.resume", "geoseg.vectorize", "geoseg.vector", "geoseg.export", "geoseg.preview",
              "geoseg.metrics", "geoseg.evaluate", "geoseg.train.config", "geoseg.cli"]
CLI_FREE = [m for m in TORCH_FREE if not m.startswith("geoseg.cli")] + ["geoseg.models", "geoseg.predict",
                                                                       "geoseg.train"]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free(module):
    code = f"import sys, {module}; bad = [m for m in ('torch', 'torchgeo', 'lightning') if m in sys.modules]; " \
           f"print(bad); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, f"{module} imports {r.stdout.strip()} {r.stderr[-500:]}"


@pytest.mark.parametrize("module", CLI_FREE)
def test_cli_libraries_stay_in_cli(module):
    code = f"import sys, {module}; bad = [m for m in ('typer', 'rich') if m in sys.modules]; " \
           f"print(bad); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, f"{module} imports {r.stdout.strip()} {r.stderr[-500:]}"
