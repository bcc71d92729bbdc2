"""Build large benchmark rasters by mirror-tiling a real raster (real texture, real CRS), by windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window


def mirror_tile(src_path: str | Path, dst_path: str | Path, height: int, width: int, block: int = 1024) -> Path:
    """Write ``dst_path`` (height x width) by mirroring ``src_path`` in both directions.

    Each output block is built from the source, read once, with reflected indexes, so the
    texture stays real and seamless; memory is one block plus the source.
    """
    with rasterio.open(src_path) as src:
        data = src.read()
        profile = src.profile.copy()
    _, sh, sw = data.shape
    ri = _mirror_index(height, sh)
    ci = _mirror_index(width, sw)
    profile.update(width=width, height=height, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   bigtiff="if_safer", num_threads="all_cpus")
    with rasterio.open(dst_path, "w", **profile) as dst:
        for r in range(0, height, block):
            h = min(block, height - r)
            rows = data[:, ri[r:r + h]]
            for c in range(0, width, block):
                w = min(block, width - c)
                dst.write(rows[:, :, ci[c:c + w]], window=Window(c, r, w, h))
    return Path(dst_path)


def _mirror_index(n: int, m: int) -> np.ndarray:
    period = np.concatenate([np.arange(m), np.arange(m)[::-1]])
    return np.resize(period, n)
