"""Shared fixtures: real rasters from ../shared/data and small rasters made on the fly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "sample_data"


def shared_file(rel: str) -> Path:
    """Path of a file in ../shared/data; skip the test when it is absent (never under CI)."""
    p = SHARED / rel
    if not p.exists():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"{p} is required under CI")
        pytest.skip(f"{p} not available (../shared/data is absent)")
    return p


@pytest.fixture
def make_raster(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a GeoTIFF from an array (bands, h, w) with a real CRS; returns its path."""
    import rasterio
    from rasterio.transform import from_origin

    def make(data: np.ndarray, name: str = "r.tif", crs: Any = "EPSG:32633", transform: Any = None,
             nodata: float | None = None, **profile: Any) -> Path:
        if data.ndim == 2:
            data = data[None]
        path = tmp_path / name
        tr = transform or from_origin(500000.0, 5300000.0, 10.0, 10.0)
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                           count=data.shape[0], dtype=data.dtype, crs=crs, transform=tr, nodata=nodata,
                           **profile) as ds:
            ds.write(data)
        return path

    return make
