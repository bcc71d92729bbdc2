"""The GeoPackage R-tree spatial index, bulk-loaded once a layer is written: the same index GDAL builds,
without the per-feature memory GDAL keeps until the end of a streamed write (docs/performance.md).
Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from geoseg.errors import VectorError
from geoseg.export.formats import kept_errors, quote_identifier as _q


class _BoxFile:
    """The spilled boxes, read a slice at a time (a memmap would keep every page it touched resident)."""

    def __init__(self, path: Path, n: int) -> None:
        self.path, self.n = path, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, sl: slice) -> Any:
        import numpy as np

        start, stop, _ = sl.indices(self.n)
        return np.fromfile(self.path, dtype=np.float64, count=4 * max(0, stop - start),
                           offset=32 * start).reshape(-1, 4)


class BoxSpill:
    """Bounding boxes (minx, maxx, miny, maxy; float64) of the written features, spilled to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, "wb")
        self.count = 0
        self.error: BaseException | None = None

    def tap(self, reader: Any) -> Iterator[Any]:
        """``reader``'s batches, their boxes spilled on the way."""
        return kept_errors(self, self._spilled(reader))

    def _spilled(self, reader: Any) -> Iterator[Any]:
        import numpy as np
        import shapely

        for b in reader:
            col = b.column(b.schema.get_field_index("geometry"))
            bb = polygon_wkb_bounds(col)
            if bb is None:  # not plain little-endian 2-D polygons: let shapely parse them
                bb = shapely.bounds(shapely.from_wkb(col.to_numpy(zero_copy_only=False)))
            np.ascontiguousarray(bb[:, [0, 2, 1, 3]]).tofile(self.f)
            self.count += len(bb)
            yield b

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()
        try:
            self.path.unlink()
        except OSError:
            pass


def polygon_wkb_bounds(col: Any) -> Any:
    """(minx, miny, maxx, maxy) per feature of a (large_)binary WKB column, or None.

    A fast path for what :func:`geoseg.vectorize` writes: little-endian 2-D Polygons, whose
    bounds are those of their exterior ring, read straight from the WKB buffer with numpy
    (shapely would build every geometry first). Empty polygons get NaN, as in shapely.
    Returns None if any feature is something else (the caller falls back to shapely).
    """
    import numpy as np
    import pyarrow as pa

    n = len(col)
    if n == 0:
        return np.empty((0, 4))
    if col.null_count or not (pa.types.is_large_binary(col.type) or pa.types.is_binary(col.type)):
        return None
    _, offs_buf, data_buf = col.buffers()
    otype = np.int64 if pa.types.is_large_binary(col.type) else np.int32
    off = np.frombuffer(offs_buf, dtype=otype, count=n + 1, offset=col.offset * np.dtype(otype).itemsize)
    off = off.astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8)
    length = np.diff(off)
    if (length < 9).any():
        return None
    start = off[:-1]

    def u32(pos: Any) -> Any:
        b = data[pos[:, None] + np.arange(4)].astype(np.uint32)
        return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)

    if not ((data[start] == 1).all() and (u32(start + 1) == 3).all()):
        return None  # big-endian, or not a 2-D Polygon
    rings = u32(start + 5)
    out = np.full((n, 4), np.nan)
    has = rings > 0
    if not has.any():
        return out
    s = start[has]
    if (length[has] < 13).any():
        return None
    npts = u32(s + 9).astype(np.int64)
    if (npts < 1).any() or (13 + 16 * npts > length[has]).any():
        return None
    # every exterior-ring coordinate: float64 pairs from byte s + 13
    first = np.zeros(len(s) + 1, np.int64)
    np.cumsum(npts, out=first[1:])
    pos = np.repeat(s + 13 - 16 * first[:-1], npts) + 16 * np.arange(first[-1])  # byte offset of each x
    x, y = np.empty(len(pos)), np.empty(len(pos))
    align = pos % 8
    # WKB doubles need not be 8-byte aligned: one float64 view of the buffer per alignment
    for a in np.flatnonzero(np.bincount(align, minlength=8)).tolist():
        view = np.frombuffer(data_buf, dtype="<f8", offset=a, count=(data_buf.size - a) // 8)
        m = align == a
        k = (pos[m] - a) // 8
        x[m], y[m] = view[k], view[k + 1]
    lo = first[:-1]
    out[has, 0] = np.minimum.reduceat(x, lo)
    out[has, 1] = np.minimum.reduceat(y, lo)
    out[has, 2] = np.maximum.reduceat(x, lo)
    out[has, 3] = np.maximum.reduceat(y, lo)
    return out


def gpkg_rtree(path: Path, layer: str, boxes: BoxSpill, chunk: int = 1 << 16) -> None:
    """Add GDAL's R-tree spatial index to a GeoPackage layer written with ``SPATIAL_INDEX=NO``.

    The index's DDL (virtual table, maintenance triggers, ``gpkg_extensions`` rows) is
    copied from a one-feature layer GDAL writes with its index, so it is exactly what GDAL
    itself would have created; the boxes come from :class:`BoxSpill`, in feature order
    (GDAL numbers features 1..N as written; checked). The tree is bulk-loaded
    (:func:`rtree_bulk_load`), as GDAL's own threaded R-tree builder does.
    """
    import sqlite3
    import tempfile

    import pyarrow as pa
    import pyogrio
    import shapely

    con = sqlite3.connect(str(path))
    try:
        (geom_col,) = con.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?",
                                  (layer,)).fetchone()
        with tempfile.TemporaryDirectory(dir=path.parent) as d:
            ref = Path(d) / "ref.gpkg"
            wkb = pa.array([shapely.to_wkb(shapely.box(0, 0, 1, 1))], type=pa.large_binary())
            pyogrio.write_arrow(pa.table({"geometry": wkb}), str(ref), layer=layer, driver="GPKG",
                                geometry_name="geometry", geometry_type="Polygon", crs="EPSG:4326")
            rcon = sqlite3.connect(str(ref))
            try:
                rtree = f"rtree_{layer}_{geom_col}"
                ddl = [r[0] for r in rcon.execute(
                    "SELECT sql FROM sqlite_master WHERE name = ? OR (type = 'trigger' AND name LIKE ?) "
                    "ORDER BY type = 'trigger', name", (rtree, rtree + "%"))]
                ext_table = rcon.execute("SELECT sql FROM sqlite_master WHERE name = 'gpkg_extensions'").fetchone()
                ext_rows = rcon.execute("SELECT * FROM gpkg_extensions WHERE table_name = ?", (layer,)).fetchall()
            finally:
                rcon.close()
        if not ddl or not ddl[0].upper().startswith("CREATE VIRTUAL TABLE") or not ext_rows:
            raise VectorError("could not find GDAL's R-tree definition")
        n = boxes.count
        lo, hi, cnt = con.execute(f'SELECT min(fid), max(fid), count(*) FROM {_q(layer)}').fetchone() \
            if n else (None, None, 0)
        if n and (lo != 1 or hi != n or cnt != n):
            raise VectorError(f"unexpected feature ids {lo}..{hi} for {n} features")
        con.execute("PRAGMA synchronous = OFF")
        con.execute("PRAGMA cache_size = -65536")  # 64 MiB
        with con:
            if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'gpkg_extensions'").fetchone() is None:
                con.execute(ext_table[0])
            con.execute(ddl[0])
            if n:
                rtree_bulk_load(con, rtree, _BoxFile(boxes.path, n), chunk)
            for q in ddl[1:]:
                con.execute(q)
            con.executemany(f"INSERT INTO gpkg_extensions VALUES ({', '.join('?' * len(ext_rows[0]))})", ext_rows)
    finally:
        con.close()


def _sqlite_f32(d: Any, up: bool) -> Any:
    """Round doubles to float32 the way SQLite's R-tree does (min down, max up)."""
    import numpy as np

    f = d.astype(np.float32)
    bad = f < d if up else f > d
    if bad.any():
        toward, away = 1.0 - 1.0 / 8388608.0, 1.0 + 1.0 / 8388608.0
        if up:
            adj = d * np.where(d < 0, toward, away)
        else:
            adj = d * np.where(d < 0, away, toward)
        f = np.where(bad, adj.astype(np.float32), f)
    return f


def rtree_bulk_load(con: Any, rtree: str, box: Any, chunk: int) -> None:
    """Fill an empty SQLite R-tree (2-D) from ``box`` (N x [minx, maxx, miny, maxy], ids 1..N).

    Writes the R-tree's shadow tables directly (``_node`` blobs, ``_rowid``, ``_parent``;
    SQLite's documented node format: big-endian depth and cell count, then cells of a
    64-bit id and four float32), packing each ``chunk`` of features Sort-Tile-Recursive
    so memory stays bounded; inserting row by row costs ~5 µs a feature.
    """
    import numpy as np

    node_size = con.execute(f'SELECT length(data) FROM {_q(rtree + "_node")} WHERE nodeno = 1').fetchone()[0]
    maxc = (node_size - 4) // 24
    cell = np.dtype([("id", ">i8"), ("b", ">f4", (4,))])

    def blob(ids: Any, b: Any, depth: int) -> bytes:
        cells = np.zeros(len(ids), cell)
        cells["id"], cells["b"] = ids, b
        head = np.array([depth, len(ids)], ">u2").tobytes()
        data = head + cells.tobytes()
        return data + bytes(node_size - len(data))

    def str_order(b: Any) -> Any:
        m = len(b)
        slices = max(1, int(np.ceil(np.sqrt(np.ceil(m / maxc)))))
        per = int(np.ceil(m / slices / maxc)) * maxc
        ox = np.argsort((b[:, 0] + b[:, 1]) * 0.5, kind="stable")
        cy = (b[ox, 2] + b[ox, 3]) * 0.5
        return np.concatenate([ox[s:s + per][np.argsort(cy[s:s + per], kind="stable")]
                               for s in range(0, m, per)])

    def pack(ids: Any, b: Any, depth: int, next_no: int) -> tuple[Any, Any, int, list[Any], list[Any]]:
        """Nodes of ``maxc`` cells; returns their numbers and boxes, and the rows to write."""
        nodes, rows, nos = [], [], []
        starts = np.arange(0, len(ids), maxc)
        for s in starts.tolist():
            i, bb = ids[s:s + maxc], b[s:s + maxc]
            nodes.append((next_no, blob(i, bb, depth)))
            rows.append((next_no, i))
            nos.append(next_no)
            next_no += 1
        nb = np.column_stack([np.minimum.reduceat(b[:, 0], starts), np.maximum.reduceat(b[:, 1], starts),
                              np.minimum.reduceat(b[:, 2], starts), np.maximum.reduceat(b[:, 3], starts)])
        return np.array(nos, np.int64), nb.astype(np.float32).reshape(-1, 4), next_no, nodes, rows

    n = len(box)
    total = 0
    level_ids, level_box = [], []
    next_no = 2
    leaves_pending = None
    for s in range(0, n, chunk):
        d = np.asarray(box[s:s + chunk])
        ok = np.isfinite(d).all(axis=1)  # empty geometries are not indexed (as in GDAL)
        ids = np.arange(s + 1, s + 1 + len(d), dtype=np.int64)[ok]
        d = d[ok]
        b = np.column_stack([_sqlite_f32(d[:, 0], False), _sqlite_f32(d[:, 1], True),
                             _sqlite_f32(d[:, 2], False), _sqlite_f32(d[:, 3], True)])
        if not len(ids):
            continue
        if total == 0 and s + chunk >= n and len(ids) <= maxc:
            leaves_pending = (ids, b)  # the whole tree is one root leaf
            total = len(ids)
            break
        total += len(ids)
        o = str_order(b)
        nos, nb, next_no, nodes, rows = pack(ids[o], b[o], 0, next_no)
        con.executemany(f'INSERT INTO {_q(rtree + "_node")} VALUES (?, ?)', nodes)
        # in id order: SQLite appends to the rowid table instead of inserting at random places
        rid = np.concatenate([rr for _, rr in rows])
        rno = np.repeat([no for no, _ in rows], [len(rr) for _, rr in rows])
        o = np.argsort(rid, kind="stable")
        rid, rno = rid[o], rno[o]
        if rid[-1] - rid[0] == len(rid) - 1:
            # consecutive ids (no empty geometry in this chunk): one statement, the node
            # numbers passed as a JSON array that SQLite unpacks in C (~3x executemany's speed)
            con.execute(f'INSERT INTO {_q(rtree + "_rowid")} SELECT key + ?, value FROM json_each(?)',
                        (int(rid[0]), "[" + ",".join(map(str, rno.tolist())) + "]"))
        else:
            con.executemany(f'INSERT INTO {_q(rtree + "_rowid")} VALUES (?, ?)', zip(rid.tolist(), rno.tolist()))
        level_ids.append(nos)
        level_box.append(nb)
    if total == 0:
        return
    if leaves_pending is not None:
        ids, b = leaves_pending
        con.execute(f'UPDATE {_q(rtree + "_node")} SET data = ? WHERE nodeno = 1', (blob(ids, b, 0),))
        con.executemany(f'INSERT INTO {_q(rtree + "_rowid")} VALUES (?, 1)', ((int(i),) for i in ids))
        return
    ids, b = np.concatenate(level_ids), np.concatenate(level_box)
    depth = 1
    while len(ids) > maxc:
        o = str_order(b.astype(np.float64))
        nos, nb, next_no, nodes, rows = pack(ids[o], b[o], 0, next_no)
        con.executemany(f'INSERT INTO {_q(rtree + "_node")} VALUES (?, ?)', nodes)
        con.executemany(f'INSERT INTO {_q(rtree + "_parent")} VALUES (?, ?)',
                        ((int(c), no) for no, cc in rows for c in cc))
        ids, b = nos, nb
        depth += 1
    con.execute(f'UPDATE {_q(rtree + "_node")} SET data = ? WHERE nodeno = 1', (blob(ids, b, depth),))
    con.executemany(f'INSERT INTO {_q(rtree + "_parent")} VALUES (?, 1)', ((int(c),) for c in ids))
