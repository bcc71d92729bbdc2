"""Polygonize row bands and merge polygons across band seams exactly. Torch-free.

Each band goes through ``rasterio.features.shapes`` (4-connected, nodata masked) with a
transform that yields *global pixel coordinates*: every vertex is an integer, so unions
are exact. A polygon touching neither the band's top seam nor its bottom seam is final at
once and never becomes a shapely object. The others are matched across the seam: the
bottom edge of a piece above and the top edge of a piece below, both on the line
``y = r``, share a pixel edge exactly where their x-intervals overlap; same-class pieces
that share one are one 4-connected region of the whole raster. Matched pieces go into a
group (union-find); a group stays *open* while one of its pieces touches the bottom of
the current band, and is unioned into one polygon when it closes. So memory holds one
band plus the open groups, never the whole raster or all polygons.
"""

from __future__ import annotations

import gc
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize, shapes

from geoseg.io.threads import check_stop
from geoseg.vector.ragged import Ragged, fill_intervals
from geoseg.vector.source import Band


@dataclass
class Chunk:
    """Final polygons (pixel coordinates) released after one band."""

    rag: Ragged
    class_id: np.ndarray  #: int64 per polygon
    conf_sum: np.ndarray | None = None  #: per polygon sum of confidence over its pixels
    conf_n: np.ndarray | None = None  #: per polygon number of pixels with a confidence

    def __len__(self) -> int:
        return len(self.rag)

    @staticmethod
    def concat(chunks: list["Chunk"]) -> "Chunk":
        if len(chunks) == 1:
            return chunks[0]
        conf = chunks[0].conf_sum is not None
        return Chunk(Ragged.concat([c.rag for c in chunks]), np.concatenate([c.class_id for c in chunks]),
                     np.concatenate([c.conf_sum for c in chunks]) if conf else None,
                     np.concatenate([c.conf_n for c in chunks]) if conf else None)


@dataclass
class _Group:
    cls: int
    pieces: list[Any] = field(default_factory=list)
    conf_sum: float = 0.0
    conf_n: float = 0.0


def _seam_intervals(rag: Ragged, sel: np.ndarray, y: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal edges lying on the line ``y`` of polygons ``sel``: (x0, x1, polygon index)."""
    if not sel.any() or len(rag.coords) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    c = rag.coords
    on = (c[:-1, 1] == y) & (c[1:, 1] == y) & rag.segment_mask()
    idx = np.flatnonzero(on)
    poly = rag.poly_of_ring()[rag.ring_of_point()[idx]]
    keep = sel[poly]
    idx, poly = idx[keep], poly[keep]
    xa, xb = c[idx, 0], c[idx + 1, 0]
    return np.minimum(xa, xb).astype(np.int64), np.maximum(xa, xb).astype(np.int64), poly


class SeamMerger:
    """Feed bands top to bottom; each :meth:`feed` returns the polygons that became final.

    Args:
        width, height: raster size in pixels.
        want_confidence: also accumulate per-polygon confidence sums (needs ``conf`` in feed).
    """

    def __init__(self, width: int, height: int, want_confidence: bool = False) -> None:
        self.width, self.height = width, height
        self.want_conf = want_confidence
        self.groups: dict[int, _Group] = {}  # open groups
        self.owner = np.full(width, -1, np.int64)  # group id of each column of the previous band's last row
        self.owner_cls = np.full(width, -1, np.int64)
        self.next_id = 0
        self.max_open = 0
        self.next_row = 0

    def feed(self, band: Band, conf: np.ndarray | None = None) -> Chunk:
        """Polygonize ``band`` here and merge it (see :func:`polygonize_band`, :meth:`merge`)."""
        return self.merge(polygonize_band(band, conf if self.want_conf else None))

    def merge(self, bp: "BandPolygons") -> Chunk:
        """Merge one polygonized band (bands in order, top to bottom); return the final polygons."""
        r0, r1 = bp.r0, bp.r1
        if r0 != self.next_row:
            raise ValueError(f"bands must be fed in order: expected row {self.next_row}, got {r0}")
        self.next_row = r1
        rag, cls, csum, cn = bp.rag, bp.cls, bp.conf_sum, bp.conf_n
        n = len(rag)

        ymin, ymax = rag.y_range()
        top = (ymin == r0) & (r0 > 0)
        bot = (ymax == r1) & (r1 < self.height)
        seam = top | bot
        final_idx = np.flatnonzero(~seam)
        seam_idx = np.flatnonzero(seam)

        out_rag = [rag.take(final_idx)]
        out_cls = [cls[final_idx]]
        out_cs = [csum[final_idx]] if csum is not None else []
        out_cn = [cn[final_idx]] if cn is not None else []

        # new group per seam piece
        local_gid = np.full(n, -1, np.int64)
        if len(seam_idx):
            geoms = rag.take(seam_idx).to_shapely()
            for k, i in enumerate(seam_idx):
                gid = self.next_id
                self.next_id += 1
                local_gid[i] = gid
                g = _Group(int(cls[i]), [geoms[k]])
                if csum is not None and cn is not None:
                    g.conf_sum, g.conf_n = float(csum[i]), float(cn[i])
                self.groups[gid] = g

        # match the previous band's bottom row with this band's top row
        parent: dict[int, int] = {}

        def find(a: int) -> int:
            root = a
            while parent.get(root, root) != root:
                root = parent[root]
            while parent.get(a, a) != root:
                parent[a], a = root, parent[a]
            return root

        if r0 > 0 and top.any():
            x0, x1, p = _seam_intervals(rag, top, float(r0))
            below = fill_intervals(self.width, x0, x1, local_gid[p])
            below_cls = fill_intervals(self.width, x0, x1, cls[p])
            hit = (self.owner >= 0) & (below >= 0) & (self.owner_cls == below_cls)
            if hit.any():
                pairs = np.unique(np.stack([self.owner[hit], below[hit]], axis=1), axis=0)
                for a, b in pairs.tolist():
                    ra, rb = find(a), find(b)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
        # fold merged groups into their roots (roots are the older ids)
        for gid in sorted(parent):
            root = find(gid)
            if root != gid:
                src = self.groups.pop(gid)
                dst = self.groups[root]
                dst.pieces.extend(src.pieces)
                dst.conf_sum += src.conf_sum
                dst.conf_n += src.conf_n

        # groups still open: those with a piece of this band touching its bottom
        new_owner = np.full(self.width, -1, np.int64)
        new_cls = np.full(self.width, -1, np.int64)
        open_ids: set[int] = set()
        if bot.any():
            x0, x1, p = _seam_intervals(rag, bot, float(r1))
            roots = np.fromiter((find(int(g)) for g in local_gid[p]), dtype=np.int64, count=len(p))
            new_owner = fill_intervals(self.width, x0, x1, roots)
            new_cls = fill_intervals(self.width, x0, x1, cls[p])
            open_ids = set(roots.tolist())
        self.owner, self.owner_cls = new_owner, new_cls

        closed = [gid for gid in self.groups if gid not in open_ids]
        if closed:
            geoms_out, cls_out, cs_out, cn_out = [], [], [], []
            for gid in closed:
                g = self.groups.pop(gid)
                geoms_out.append(_union(g.pieces))
                cls_out.append(g.cls)
                cs_out.append(g.conf_sum)
                cn_out.append(g.conf_n)
            out_rag.append(Ragged.from_shapely(geoms_out))
            out_cls.append(np.asarray(cls_out, np.int64))
            if csum is not None:
                out_cs.append(np.asarray(cs_out))
                out_cn.append(np.asarray(cn_out))
        self.max_open = max(self.max_open, len(self.groups))
        return Chunk(Ragged.concat(out_rag), np.concatenate(out_cls),
                     np.concatenate(out_cs) if out_cs else None, np.concatenate(out_cn) if out_cn else None)

    @property
    def open_pieces(self) -> int:
        return sum(len(g.pieces) for g in self.groups.values())


@dataclass
class BandPolygons:
    """The ``shapes`` polygons of one band in global pixel coordinates (picklable, numpy only)."""

    r0: int
    r1: int
    rag: Ragged
    cls: np.ndarray
    conf_sum: np.ndarray | None = None
    conf_n: np.ndarray | None = None
    emit_bits: np.ndarray | None = None  #: ``np.packbits(emit, axis=1)`` when asked for


def polygonize_band(band: Band, conf: np.ndarray | None = None, keep_emit: bool = False) -> BandPolygons:
    """``rasterio.features.shapes`` (4-connected, masked) of one band, flattened to numpy arrays.

    With ``conf`` (the confidence rows of the band), also the per-polygon sum and count of
    confidence over the polygon's pixels.
    """
    r0 = band.r0
    tr = Affine.translation(0, r0)
    # shapes builds one dict/list/tuple per vertex; none of them forms a cycle, so the
    # cyclic GC only burns time here (it doubles the cost of collecting the band)
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        pairs = _shapes_stoppable(shapes(band.data, mask=band.emit, connectivity=4, transform=tr))
        coords = [g["coordinates"] for g, _ in pairs]
        counts = list(map(len, coords))
        rag = Ragged.from_geojson_rings(list(itertools.chain.from_iterable(coords)), counts)
        del coords
        cls = np.fromiter((v for _, v in pairs), dtype=np.float64, count=len(pairs)).astype(np.int64)
    finally:
        if gc_was_on:
            gc.enable()
    n = len(cls)
    csum: np.ndarray | None = None
    cn: np.ndarray | None = None
    if conf is not None:
        csum, cn = np.zeros(n), np.zeros(n)
        if n:
            labels = rasterize(((g, i + 1) for i, (g, _) in enumerate(pairs)), out_shape=band.data.shape,
                               transform=tr, fill=0, dtype="int32")
            ok = np.isfinite(conf)
            lab = labels[ok]
            csum = np.bincount(lab, weights=conf[ok], minlength=n + 1)[1:]
            cn = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    del pairs
    bits = np.packbits(band.emit, axis=1) if keep_emit else None
    return BandPolygons(band.r0, band.r1, rag, cls, csum, cn, bits)


def _shapes_stoppable(features: Any, chunk: int = 8192) -> list[Any]:
    """The features of a ``shapes`` iterator, checking between chunks whether to stop (a Ctrl-C): building
    them is most of a band's seconds."""
    out: list[Any] = []
    while True:
        check_stop()
        part = list(itertools.islice(features, chunk))
        if not part:
            return out
        out.extend(part)


def _union(pieces: list[Any]) -> Any:
    """Union of the pieces of one 4-connected region: one Polygon, no redundant vertices."""
    if len(pieces) == 1:
        return pieces[0]
    u = shapely.union_all(pieces)
    if u.geom_type != "Polygon":
        raise RuntimeError(f"internal error: seam merge produced a {u.geom_type}; please report this")
    # union keeps the vertices where pieces met on a seam; collinear vertices add nothing
    return shapely.simplify(u, 0.0)
