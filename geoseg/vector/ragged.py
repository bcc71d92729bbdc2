"""Polygons as flat numpy arrays ("ragged" layout, the one shapely's ``to_ragged_array`` uses).

``coords`` (P, 2) float64 holds every ring's points (rings closed: last point == first),
``ring_off`` (R + 1) indexes ``coords`` by ring, ``poly_off`` (N + 1) indexes rings by
polygon; the first ring of a polygon is its exterior. Building shapely objects for every
polygon costs about as much as ``rasterio.features.shapes`` itself, so the common path
(polygons that never touch a band seam) stays in this layout from ``shapes`` to WKB.
Torch-free.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import shapely


@dataclass
class Ragged:
    """N polygons in flat arrays. Coordinates are pixel (column, row) until transformed."""

    coords: np.ndarray
    ring_off: np.ndarray
    poly_off: np.ndarray

    def __len__(self) -> int:
        return len(self.poly_off) - 1

    @property
    def n_rings(self) -> int:
        return len(self.ring_off) - 1

    # ------------------------------------------------------------------ build
    @classmethod
    def empty(cls) -> "Ragged":
        return cls(np.empty((0, 2)), np.zeros(1, np.int64), np.zeros(1, np.int64))

    @classmethod
    def from_geojson_rings(cls, rings: list[Sequence[tuple[float, float]]], ring_counts: list[int]) -> "Ragged":
        """From GeoJSON ring lists (as ``shapes`` yields them) and the ring count of each polygon."""
        if not ring_counts:
            return cls.empty()
        lens = np.fromiter(map(len, rings), dtype=np.int64, count=len(rings))
        flat = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(rings)),
                           dtype=np.float64, count=2 * int(lens.sum()))
        ring_off = np.zeros(len(rings) + 1, np.int64)
        np.cumsum(lens, out=ring_off[1:])
        poly_off = np.zeros(len(ring_counts) + 1, np.int64)
        np.cumsum(np.asarray(ring_counts, np.int64), out=poly_off[1:])
        return cls(flat.reshape(-1, 2), ring_off, poly_off)

    @classmethod
    def from_shapely(cls, geoms: Sequence[Any] | np.ndarray) -> "Ragged":
        """From shapely Polygons (not MultiPolygons)."""
        if len(geoms) == 0:
            return cls.empty()
        _, coords, (ring_off, poly_off) = shapely.to_ragged_array(np.asarray(geoms, dtype=object))
        return cls(np.ascontiguousarray(coords, dtype=np.float64), ring_off.astype(np.int64),
                   poly_off.astype(np.int64))

    def to_shapely(self) -> np.ndarray:
        if len(self) == 0:
            return np.empty(0, dtype=object)
        out: np.ndarray = shapely.from_ragged_array(shapely.GeometryType.POLYGON, self.coords,
                                                    (self.ring_off, self.poly_off))
        return out

    @staticmethod
    def concat(parts: Iterable["Ragged"]) -> "Ragged":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Ragged.empty()
        if len(parts) == 1:
            return parts[0]
        coords = np.concatenate([p.coords for p in parts])
        rings, polys = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
        pt_base = ring_base = 0
        for p in parts:
            rings.append(p.ring_off[1:] + pt_base)
            polys.append(p.poly_off[1:] + ring_base)
            pt_base += p.ring_off[-1]
            ring_base += p.poly_off[-1]
        return Ragged(coords, np.concatenate(rings), np.concatenate(polys))

    def take(self, idx: np.ndarray) -> "Ragged":
        """Polygons ``idx`` (an integer index array or boolean mask), in that order."""
        idx = np.flatnonzero(idx) if idx.dtype == bool else np.asarray(idx, np.int64)
        if len(idx) == 0:
            return Ragged.empty()
        r0, r1 = self.poly_off[idx], self.poly_off[idx + 1]
        ring_idx = _ranges(r0, r1)
        p0, p1 = self.ring_off[ring_idx], self.ring_off[ring_idx + 1]
        pt_idx = _ranges(p0, p1)
        ring_off = np.zeros(len(ring_idx) + 1, np.int64)
        np.cumsum(p1 - p0, out=ring_off[1:])
        poly_off = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(r1 - r0, out=poly_off[1:])
        return Ragged(self.coords[pt_idx], ring_off, poly_off)

    # ------------------------------------------------------------------ views
    def ring_of_point(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_rings), np.diff(self.ring_off))

    def poly_of_ring(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), np.diff(self.poly_off))

    def exterior_rings(self) -> np.ndarray:
        return self.poly_off[:-1]

    def segment_mask(self) -> np.ndarray:
        """Bool (P - 1): True where points i and i+1 form a segment of one ring."""
        m = np.ones(max(len(self.coords) - 1, 0), bool)
        ends = self.ring_off[1:-1] - 1  # last point of each ring but the final one
        m[ends] = False
        return m

    def y_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-polygon min and max of y over the exterior ring."""
        if len(self) == 0:
            return np.empty(0), np.empty(0)
        y = self.coords[:, 1]
        # reduce over every ring, then pick exteriors (holes lie inside them)
        rs = self.ring_off[:-1]
        ext = self.exterior_rings()
        return np.minimum.reduceat(y, rs)[ext], np.maximum.reduceat(y, rs)[ext]

    def ring_signed_area2(self) -> np.ndarray:
        """Twice the signed (shoelace) area of each ring, in coordinate units squared."""
        if self.n_rings == 0:
            return np.empty(0)
        x, y = self.coords[:, 0], self.coords[:, 1]
        cross = x[:-1] * y[1:] - x[1:] * y[:-1]
        cross = np.where(self.segment_mask(), cross, 0.0)
        cross = np.append(cross, 0.0)
        return np.add.reduceat(cross, self.ring_off[:-1])

    def areas(self) -> np.ndarray:
        """Area of each polygon (exterior minus holes), coordinate units squared."""
        if len(self) == 0:
            return np.empty(0)
        ra = np.abs(self.ring_signed_area2()) / 2.0
        sign = np.full(self.n_rings, -1.0)
        sign[self.exterior_rings()] = 1.0
        return np.add.reduceat(ra * sign, self.poly_off[:-1])

    def segment_lengths(self) -> np.ndarray:
        """Euclidean length of every point-to-next-point step (0 across ring ends), length P."""
        if len(self.coords) == 0:
            return np.empty(0)
        d = np.hypot(np.diff(self.coords[:, 0]), np.diff(self.coords[:, 1]))
        return np.append(np.where(self.segment_mask(), d, 0.0), 0.0)

    def per_polygon_sum(self, per_point: np.ndarray) -> np.ndarray:
        """Sum a per-point quantity (e.g. :meth:`segment_lengths`) over each polygon's points."""
        if len(self) == 0:
            return np.empty(0)
        return np.add.reduceat(per_point, self.ring_off[self.poly_off[:-1]])

    def transformed(self, a: float, b: float, c: float, d: float, e: float, f: float) -> "Ragged":
        """Apply ``x' = a x + b y + c``, ``y' = d x + e y + f`` (an affine.Affine's a..f)."""
        x, y = self.coords[:, 0], self.coords[:, 1]
        out = np.empty_like(self.coords)
        out[:, 0] = a * x + b * y + c
        out[:, 1] = d * x + e * y + f
        return Ragged(out, self.ring_off, self.poly_off)

    # ------------------------------------------------------------------ WKB
    def to_wkb(self) -> tuple[np.ndarray, np.ndarray]:
        """Little-endian 2D WKB Polygons: ``(buffer uint8, offsets int64 of length N + 1)``.

        Built with numpy only (no per-polygon Python), byte-identical to ``shapely.to_wkb``.
        """
        n, nr = len(self), self.n_rings
        if n == 0:
            return np.empty(0, np.uint8), np.zeros(1, np.int64)
        npts = np.diff(self.ring_off)
        nrings = np.diff(self.poly_off)
        first = np.zeros(nr, bool)
        first[self.poly_off[:-1]] = True
        prefix = np.zeros((nr, 13), np.uint8)
        hdr = np.zeros(nr, dtype=[("bo", "u1"), ("t", "<u4"), ("nr", "<u4"), ("np", "<u4")])
        hdr["bo"] = 1
        hdr["t"] = 3
        hdr["nr"][first] = nrings
        hdr["np"] = npts
        prefix[:] = hdr.view(np.uint8).reshape(nr, 13)
        keep = np.ones((nr, 13), bool)
        keep[~first, :9] = False
        values = prefix[keep]
        plen = np.where(first, 13, 4)
        positions = np.repeat(16 * self.ring_off[:-1], plen)
        body = np.ascontiguousarray(self.coords, dtype="<f8").view(np.uint8).ravel()
        buf = np.insert(body, positions, values)
        ring_bytes = plen + 16 * npts
        poly_bytes = np.add.reduceat(ring_bytes, self.poly_off[:-1])
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(poly_bytes, out=offsets[1:])
        return buf, offsets


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for each pair, vectorized."""
    lens = stops - starts
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, np.int64)
    keep = lens > 0
    starts, lens = starts[keep], lens[keep]
    out = np.ones(total, np.int64)
    out[0] = starts[0]
    ends = np.cumsum(lens)[:-1]
    out[ends] = starts[1:] - (starts[:-1] + lens[:-1] - 1)
    return np.cumsum(out)


def fill_intervals(width: int, x0: np.ndarray, x1: np.ndarray, values: np.ndarray, fill: int = -1) -> np.ndarray:
    """Array of ``width`` with ``out[x0[i]:x1[i]] = values[i]``, others ``fill`` (intervals disjoint)."""
    out = np.full(width, fill, np.int64)
    if len(x0):
        idx = _ranges(x0, x1)
        out[idx] = np.repeat(values, x1 - x0)
    return out
