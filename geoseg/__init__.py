"""geoseg: tiled U-Net segmentation of large GeoTIFFs into class rasters and polygons.

Importing ``geoseg`` is torch-free. Torch-bound names (``predict_raster``) and
heavier ones (``vectorize``) are imported lazily on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from geoseg.classes import ClassInfo, ClassSchema  # noqa: E402
from geoseg.errors import GeosegError  # noqa: E402

_LAZY = {
    "predict_raster": ("geoseg.pipeline", "predict_raster"),
    "PredictionReport": ("geoseg.pipeline", "PredictionReport"),
    "vectorize": ("geoseg.vector", "vectorize"),
}

__all__ = ["ClassInfo", "ClassSchema", "GeosegError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")
