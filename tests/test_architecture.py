"""Import rules: torch only where models run; typer/rich only in the CLI.

(click is not checked: rasterio itself imports it.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

TORCH_FREE = ["geoseg", "geoseg.errors", "geoseg.classes", "geoseg.architectures", "geoseg.models",
              "geoseg.models.meta", "geoseg.models.demo", "geoseg.models.files",
              "geoseg.tiling", "geoseg.blend",
              "geoseg.io.raster", "geoseg.io.writer", "geoseg.io.atomic", "geoseg.io.stats", "geoseg.io.labels",
              "geoseg.io.gdalcache", "geoseg.pipeline",
              "geoseg.resume", "geoseg.vector", "geoseg.export", "geoseg.preview",
              "geoseg.metrics", "geoseg.evaluate", "geoseg.train.config", "geoseg.train.history", "geoseg.train.auto",
              "geoseg.predict.onnx",
              "geoseg.styles",
              "geoseg.qgis_package", "geoseg.qgis_plugin.runner", "geoseg.qgis_plugin.options", "geoseg.cli",
              "geoseg.batch", "geoseg.pipeline.assemble", "geoseg.distributed.cluster", "geoseg.distributed.jobs",
              "geoseg.distributed.tasks"]
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
    """The CLI's --arch choices come from the architecture table, every family there has a builder, and
    the --tta choices (spelled out, so --help needs no torch) match the engine's."""
    from geoseg.architectures import ARCHITECTURES
    from geoseg.cli._options import Arch
    from geoseg.cli.infer import Tta
    from geoseg.models.registry import BUILDERS
    from geoseg.predict.engine import TTA

    assert [a.value for a in Arch] == list(ARCHITECTURES)
    assert {a.family for a in ARCHITECTURES.values()} <= set(BUILDERS)
    assert [t.value for t in Tta] == list(TTA)


@pytest.mark.parametrize("module", ["geoseg.pipeline", "geoseg.pipeline.assemble", "geoseg.vector", "geoseg.batch",
                                    "geoseg.predict", "geoseg.cli"])
def test_dask_stays_in_geoseg_distributed(module):
    """Dask is imported by geoseg.distributed when a cluster is asked for, never by the core."""
    assert _imports(module, ("dask", "distributed")) == []
