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
              "geoseg.metrics", "geoseg.evaluate", "geoseg.train.config", "geoseg.styles", "geoseg.qgis_package",
              "geoseg.qgis_plugin.runner", "geoseg.qgis_plugin.options", "geoseg.cli"]
CLI_FREE = [m for m in TORCH_FREE if not m.startswith("geoseg.cli")] + ["geoseg.models", "geoseg.predict",
                                                                       "geoseg.train"]


def _imports(module: str, forbidden: tuple[str, ...]) -> list[str]:
    """Which of ``forbidden`` are in sys.modules after importing ``module`` in a fresh interpreter."""
    code = f"import sys, {module}; print([m for m in {forbidden!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-500:]
    return eval(r.stdout.strip())  # a printed list of module names


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free(module):
    assert _imports(module, ("torch", "torchgeo", "lightning")) == []


@pytest.mark.parametrize("module", CLI_FREE)
def test_cli_libraries_stay_in_cli(module):
    assert _imports(module, ("typer", "rich")) == []


def test_cli_choices_match_the_registries() -> None:
    """The CLI's --arch and --tta choices are spelled out (so --help needs no torch); they must not drift."""
    from geoseg.cli.infer import Tta
    from geoseg.cli.train import Arch
    from geoseg.modelmeta import ARCHITECTURES
    from geoseg.models.registry import MODELS
    from geoseg.predict.engine import TTA

    assert [a.value for a in Arch] == list(MODELS) == list(ARCHITECTURES)
    assert [t.value for t in Tta] == list(TTA)
