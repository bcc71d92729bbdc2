"""Post-processing of final polygons: fill small empty holes, coverage simplification. Torch-free.

All of it works on one chunk (the polygons released after one band) in pixel coordinates.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize

from geoseg.vector.ragged import Ragged


class EmitMaskStore:
    """Bit-packed on-disk copy of the "polygon pixel" mask, to look back at holes.

    One bit per pixel in a temporary file (a 100 000² raster needs 1.2 GB of disk, no RAM
    beyond the pages the OS caches). Only used with ``fill_holes``.
    """

    def __init__(self, width: int, height: int, directory: str | None = None) -> None:
        self.width, self.height = width, height
        self.row_bytes = (width + 7) // 8
        fd, self.path = tempfile.mkstemp(prefix="geoseg-emit-", suffix=".bits", dir=directory)
        os.close(fd)
        self.mm = np.memmap(self.path, dtype=np.uint8, mode="w+", shape=(max(height, 1), self.row_bytes))

    def write(self, r0: int, emit: np.ndarray) -> None:
        self.write_bits(r0, np.packbits(emit, axis=1))

    def write_bits(self, r0: int, bits: np.ndarray) -> None:
        """Rows from ``r0`` as ``np.packbits(emit, axis=1)``."""
        self.mm[r0:r0 + bits.shape[0]] = bits

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        bits = np.unpackbits(self.mm[y0:y1], axis=1)[:, :self.width]
        return bits[:, x0:x1].astype(bool)

    def close(self) -> None:
        del self.mm
        try:
            os.unlink(self.path)
        except OSError:
            pass


def fill_holes(rag: Ragged, ring_area_m2: np.ndarray, max_area_m2: float, store: EmitMaskStore
               ) -> tuple[Ragged, int]:
    """Drop holes smaller than ``max_area_m2`` that contain no polygon pixel.

    A hole that holds another output polygon is kept, so filling never creates an overlap
    (remove small enclosed polygons first with ``sieve``). Returns the new polygons and the
    number of holes filled.
    """
    n_r = rag.n_rings
    if n_r == len(rag):
        return rag, 0
    is_hole = np.ones(n_r, bool)
    is_hole[rag.exterior_rings()] = False
    cand = np.flatnonzero(is_hole & (ring_area_m2 < max_area_m2))
    if len(cand) == 0:
        return rag, 0
    drop = np.zeros(n_r, bool)
    for r in cand.tolist():
        pts = rag.coords[rag.ring_off[r]:rag.ring_off[r + 1]]
        x0, y0 = np.floor(pts.min(axis=0)).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
        inside = rasterize([(shapely.Polygon(pts), 1)], out_shape=(y1 - y0, x1 - x0),
                           transform=Affine.translation(x0, y0), fill=0, dtype="uint8").astype(bool)
        if not store.read(y0, y1, x0, x1)[inside].any():
            drop[r] = True
    if not drop.any():
        return rag, 0
    keep_rings = np.flatnonzero(~drop)
    pts_keep = np.repeat(~drop, np.diff(rag.ring_off))
    lens = np.diff(rag.ring_off)[keep_rings]
    ring_off = np.zeros(len(keep_rings) + 1, np.int64)
    np.cumsum(lens, out=ring_off[1:])
    rings_per_poly = np.add.reduceat((~drop).astype(np.int64), rag.poly_off[:-1])
    poly_off = np.zeros(len(rag) + 1, np.int64)
    np.cumsum(rings_per_poly, out=poly_off[1:])
    return Ragged(rag.coords[pts_keep], ring_off, poly_off), int(drop.sum())


def coverage_simplify(rag: Ragged, tolerance_px: float) -> Ragged:
    """``shapely.coverage_simplify`` of one chunk, keeping the chunk's outer boundary.

    Edges shared with polygons of *other* chunks lie on this chunk's outer boundary and are
    kept vertex for vertex (``simplify_boundary=False``), so neighbours released in different
    bands still share their edge exactly: no gaps, no overlaps. Edges between polygons of the
    same chunk are simplified together. Polygons are first segmentized to one vertex per
    pixel corner so that neighbours' vertices match (a valid coverage for GEOS).
    """
    if len(rag) == 0 or tolerance_px <= 0:
        return rag
    geoms = shapely.segmentize(rag.to_shapely(), 1.0)
    simp = shapely.coverage_simplify(geoms, tolerance_px, simplify_boundary=False)
    bad = shapely.get_type_id(simp) != shapely.GeometryType.POLYGON
    bad |= shapely.is_empty(simp)
    if bad.any():  # a polygon collapsed: keep the input for the whole chunk (still a coverage)
        return rag
    # drop the per-pixel vertices left on kept boundaries (exactly collinear: shape unchanged)
    return Ragged.from_shapely(shapely.simplify(simp, 0.0, preserve_topology=True))


def parse_tolerance(value: Any, pixel_size: float) -> tuple[float, str]:
    """``"2px"`` / ``"2 px"`` -> pixels; a number -> CRS units. Returns (pixels, description)."""
    from geoseg.errors import UsageError

    if value is None:
        return 0.0, "none"
    s = str(value).strip().lower()
    try:
        if s.endswith("px"):
            v = float(s[:-2])
            px = v
        else:
            v = float(s)
            px = v / pixel_size
    except ValueError:
        raise UsageError(f"`simplify` {value!r}: expected a tolerance in CRS units (e.g. 15) or pixels "
                         "(e.g. 1.5px)") from None
    if not np.isfinite(v) or v < 0:
        raise UsageError(f"`simplify` {value!r}: tolerance must be a non-negative number")
    if not s.endswith("px") and px > LARGE_TOLERANCE_PX:
        import warnings

        warnings.warn(f"`simplify` {v:g} in CRS units is {px:,.0f} pixels, which erases most shapes (degrees, in a "
                      f"geographic CRS?); for pixels write {v:g}px", UserWarning, stacklevel=3)
    return px, (f"{v:g} px" if s.endswith("px") else f"{v:g} CRS units ({px:g} px)")


#: a simplification tolerance in CRS units beyond this many pixels is almost surely a unit mistake
LARGE_TOLERANCE_PX = 100
