"""Training on label rasters or polygons with torchgeo (``geoseg train``).

Importing this package is torch-free; :func:`train` (torch, torchgeo, Lightning
Fabric) is imported on first use. :class:`TrainConfig` is plain Python.
"""

from __future__ import annotations

from typing import Any

from geoseg.train.config import IGNORE_INDEX, TrainConfig

__all__ = ["IGNORE_INDEX", "TrainConfig", "TrainReport", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainReport", "TrainProgress"):
        from geoseg.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'geoseg.train' has no attribute {name!r}")
