"""Write polygon tables to GeoPackage, Shapefile, GeoJSON, GeoParquet or FlatGeobuf. Torch-free.

The format comes from the file extension (:data:`FORMATS`). Tables arrive as a stream of
pyarrow RecordBatches (WKB ``geometry`` column) and are written batch by batch — OGR
formats through one ``pyogrio.write_arrow`` call fed by a RecordBatchReader, GeoParquet
through a ``pyarrow.parquet.ParquetWriter`` — so the whole table is never in memory.
Every file is written under a temporary name beside the destination and renamed when
complete (Shapefile sidecars too); an existing file is replaced only with ``overwrite``.

Conventions:

* every format but GeoJSON keeps the raster CRS;
* ``.geojson`` follows RFC 7946: WGS84 longitude/latitude, counter-clockwise exteriors,
  no ``crs`` member;
* ``.shp`` gets ``.prj`` and ``.cpg`` (UTF-8) and 10-character field names
  (:data:`SHAPEFILE_FIELDS`);
* ``.parquet`` is GeoParquet 1.1.0 (WKB encoding, ``geo`` metadata with ``version``,
  ``primary_column``, ``columns.geometry.encoding``/``geometry_types``/``crs``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from geoseg.errors import RasterWriteError, VectorError
from geoseg.io.atomic import atomic_output, check_destination, gdal_safe_path
from geoseg.styles import STYLE_TABLE, qml_path, write_qml


@dataclass(frozen=True)
class Format:
    """One output format."""

    name: str  #: short name (``--vector-format`` value)
    driver: str | None  #: OGR driver, None for GeoParquet (pyarrow)
    extension: str


#: extension -> format
FORMATS: dict[str, Format] = {
    ".gpkg": Format("gpkg", "GPKG", ".gpkg"),
    ".shp": Format("shp", "ESRI Shapefile", ".shp"),
    ".geojson": Format("geojson", "GeoJSON", ".geojson"),
    ".parquet": Format("parquet", None, ".parquet"),
    ".fgb": Format("fgb", "FlatGeobuf", ".fgb"),
}

#: format name -> extension (for ``--vector-format``)
EXTENSIONS = {f.name: ext for ext, f in FORMATS.items()}

#: Shapefile field names (dBase allows 10 characters)
SHAPEFILE_FIELDS = {"perimeter_m": "perim_m", "confidence_mean": "conf_mean"}

#: GeoParquet metadata version written
GEOPARQUET_VERSION = "1.1.0"


def format_for(path: str | os.PathLike[str]) -> Format:
    """The format of ``path`` from its extension (VectorError when unknown)."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise VectorError(f"{path}: unknown vector format {ext or '(no extension)'!r}; use one of "
                          f"{', '.join(FORMATS)}")
    return FORMATS[ext]


def style_path(path: str | os.PathLike[str]) -> Path | None:
    """Where the QGIS style of the layer file ``path`` goes: the ``.qml`` beside it, or None for a
    GeoPackage, which holds its style inside (the ``layer_styles`` table)."""
    return None if format_for(path).name == "gpkg" else qml_path(path)


def check_output(path: str | os.PathLike[str], *, overwrite: bool,
                 inputs: Sequence[str | os.PathLike[str]] = ()) -> tuple[Path, str]:
    """Check format and destination before any work; returns ``(path, format name)``."""
    fmt = format_for(path)
    return check_destination(path, overwrite=overwrite, inputs=inputs), fmt.name


def _q(name: str) -> str:
    """An SQL identifier, quoted (a layer named ``q"uote`` broke the index SQL)."""
    return '"' + name.replace('"', '""') + '"'


def layer_name(stem: str) -> str:
    """A layer name GDAL and SQL tools take for a file named ``stem``: control characters and double
    quotes become ``_``, and a name that starts with punctuation GeoPackage refuses (``-x``, ``.x``)
    gets a leading ``_``."""
    import re

    name = re.sub(r'[\x00-\x1f\x7f"]', "_", stem) or "polygons"
    return name if (name[0].isalnum() or name[0] in "_ ") else "_" + name


class _Capture:
    """Wrap a batch iterator so its exceptions survive the trip through Arrow's C stream."""

    def __init__(self, batches: Iterable[Any], transform: Any = None) -> None:
        self.it = iter(batches)
        self.transform = transform
        self.error: BaseException | None = None
        self.count = 0

    def __iter__(self) -> Any:
        try:
            for b in self.it:
                if self.transform is not None:
                    b = self.transform(b)
                self.count += b.num_rows
                yield b
        except GeneratorExit:  # closed by the consumer (a writer that died): not the batches' error
            raise
        except BaseException as e:  # noqa: BLE001
            self.error = e
            raise


def _geojson_batch(crs: Any) -> Any:
    """Batch transform: geometry to WGS84 lon/lat with counter-clockwise exteriors (RFC 7946)."""
    import numpy as np
    import pyarrow as pa
    import pyproj
    import shapely

    tr = None
    if crs is not None:
        src = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
        tr = pyproj.Transformer.from_crs(src, "EPSG:4326", always_xy=True)

    def f(batch: Any) -> Any:
        i = batch.schema.get_field_index("geometry")
        g = shapely.from_wkb(np.asarray(batch.column(i).to_pylist(), dtype=object))
        if tr is not None:
            g = shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
            xy = shapely.get_coordinates(g)
            if not np.isfinite(xy).all():
                raise VectorError("polygons lie outside where the raster's CRS maps to the Earth, so they cannot "
                                  "be written as GeoJSON longitude/latitude; check the raster's georeferencing, "
                                  "or write .gpkg/.fgb (coordinates kept as they are)")
        g = shapely.orient_polygons(g, exterior_cw=False)
        return batch.set_column(i, "geometry", pa.array(shapely.to_wkb(g), type=pa.large_binary()))

    return f


def write_batches(path: str | os.PathLike[str], schema: Any, batches: Iterable[Any], *, crs: Any,
                  overwrite: bool = False, geometry_type: str = "Polygon", checked: bool = False,
                  layer: str | None = None, style: Callable[[], str] | None = None) -> int:
    """Stream RecordBatches (WKB ``geometry`` column in ``crs``) to ``path``; returns rows written.

    An empty stream writes a valid empty layer with the schema and CRS. ``style`` (called once
    the batches are written) gives the layer's QGIS style (QML), stored where QGIS finds it:
    the default row of a GeoPackage's ``layer_styles`` table, else a ``.qml`` beside the file.
    """
    dest = Path(path)
    fmt = format_for(dest)
    if not checked:
        check_destination(dest, overwrite=overwrite)
    with atomic_output(dest, overwrite=overwrite, checked=True) as tmp:
        lname = layer or layer_name(dest.stem)
        if fmt.driver is None:
            count = _write_parquet(tmp, schema, batches, crs, geometry_type)
        else:
            count = _write_ogr(tmp, fmt, schema, batches, crs, geometry_type, lname, dest)
        if style is not None and fmt.name == "gpkg":
            gpkg_layer_style(tmp, lname, style())
    if style is not None and style_path(dest) is not None:
        write_qml(dest, style(), overwrite=overwrite)
    return count


#: columns of the ``layer_styles`` table QGIS reads from (and writes to) GeoPackages
_LAYER_STYLES_FIELDS = ["f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName",
                        "styleQML", "styleSLD", "useAsDefault", "description", "owner", "ui", "update_time"]


def gpkg_layer_style(path: Path, layer: str, qml: str) -> None:
    """Store ``qml`` as the default style of ``layer`` in the GeoPackage ``path``: a row of its
    ``layer_styles`` table (created as QGIS does, an attribute table), which QGIS applies when it
    opens the layer."""
    with gdal_safe_path(path) as safe:
        _write_style_row(safe, layer, qml, path)


def _write_style_row(path: str, layer: str, qml: str, shown: Path) -> None:
    import datetime

    import numpy as np
    import pyogrio
    from pyogrio.raw import write

    geom = pyogrio.read_info(path, layer=layer).get("geometry_name") or "geom"
    now = np.array([datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)], dtype="datetime64[ms]")
    values: list[Any] = ["", "", layer, geom, layer, qml, "", True, "geoseg: classes in their colours", "", ""]
    data = [np.array([v], dtype=bool if isinstance(v, bool) else object) for v in values] + [now]
    try:
        write(path, None, data, _LAYER_STYLES_FIELDS, layer=STYLE_TABLE, driver="GPKG", geometry_type=None,
              append=True)
    except Exception as e:  # pyogrio raises its own and GDAL's error types
        raise RasterWriteError(f"{shown}: cannot store the layer style: {str(e)[:200]}") from None


def _write_ogr(tmp: Path, fmt: Format, schema: Any, batches: Iterable[Any], crs: Any, geometry_type: str,
               layer: str, dest: Path | None = None) -> int:
    transform = None
    layer_options: dict[str, str] = {}
    out_crs = crs.to_wkt() if crs is not None and hasattr(crs, "to_wkt") else crs
    if fmt.name == "geojson":
        if crs is None:
            raise VectorError(f"{dest or tmp.name}: GeoJSON holds longitude/latitude (RFC 7946), but the raster has "
                              "no CRS to convert from; write .gpkg, .fgb or .shp (pixel coordinates kept), or "
                              "assign the raster's CRS first")
        transform = _geojson_batch(crs)
        layer_options["RFC7946"] = "YES"
        out_crs = "EPSG:4326" if crs is not None else None
    elif fmt.name == "shp":
        layer_options["ENCODING"] = "UTF-8"  # also writes the .cpg
        renames = {k: v for k, v in SHAPEFILE_FIELDS.items() if k in schema.names}
        if renames:
            schema, transform = _renamed(schema, renames)
        for n in schema.names:
            if len(n.encode()) > 10:
                raise VectorError(f"field {n!r} is longer than 10 characters, which Shapefiles cannot store; "
                                  "write .gpkg instead")
    if fmt.name == "gpkg":
        # no R-tree while streaming: GDAL's GeoPackage writer would keep every feature's
        # bounding box in memory until the end (memory growing with the feature count);
        # the writer process builds the index once the layer is complete (_gpkg_rtree)
        layer_options["SPATIAL_INDEX"] = "NO"
    cap = _Capture(batches, transform)
    what = f"{dest or tmp.name}: writing {fmt.driver}"
    with gdal_safe_path(tmp) as path:  # a folder named with ';' or a newline, which pyogrio would mangle
        job = {"path": path, "layer": layer, "driver": fmt.driver, "geometry_type": geometry_type,
               "crs": out_crs, "layer_options": layer_options or None, "rtree": fmt.name == "gpkg"}
        if WRITER_PROCESS:
            _run_writer(job, schema, cap, what)
        else:
            import pyarrow as pa

            try:
                _write_job(job, pa.RecordBatchReader.from_batches(schema, iter(cap)))
            except BaseException as e:
                if cap.error is not None:
                    raise cap.error from None
                if isinstance(e, _WriteFailed):
                    raise RasterWriteError(f"{what} failed: {e}") from None
                raise
    if cap.error is not None:
        raise cap.error
    return cap.count


#: write OGR formats in a separate process (True) or in the calling thread (False)
WRITER_PROCESS = True

#: a writer process gets Arrow IPC batches through a pipe (so GDAL's writing, which holds
#: the GIL in pyogrio, runs beside the polygonizing and merging); what is in flight is
#: bounded by the pipe buffer plus the batch being written
_WRITER_CODE = "import sys; sys.path.insert(0, sys.argv[2]); from geoseg.export import _writer_main; _writer_main()"


def _run_writer(job: dict[str, Any], schema: Any, cap: "_Capture", what: str) -> None:
    """Stream ``cap``'s batches to a writer process running :func:`_writer_main`.

    Errors from the batches are kept in ``cap.error`` (re-raised by the caller); errors
    from the writer become one :class:`RasterWriteError`. The writer has exited when this
    returns, so the caller may remove the temporary file.
    """
    import subprocess
    import sys
    import tempfile

    import pyarrow as pa

    root = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryFile() as err:
        # -P: no working directory first on sys.path (a json.py where the user works would run here)
        proc = subprocess.Popen([sys.executable, "-P", "-c", _WRITER_CODE, json.dumps(job), root],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        assert proc.stdin is not None
        broken = False
        try:
            try:
                with pa.ipc.new_stream(proc.stdin, schema) as w:
                    for b in cap:
                        w.write_batch(b)
                proc.stdin.close()
            except (BrokenPipeError, OSError, pa.ArrowIOError):
                if cap.error is not None:
                    raise
                broken = True  # the writer died: its message is on stderr
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            # a killed writer cannot remove its spilled boxes itself
            Path(job["path"] + ".bbox").unlink(missing_ok=True)
        if rc != 0 or broken:
            err.seek(0)
            lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
            msg = lines[-1][:300] if lines else f"writer process exited with status {rc}"
            raise RasterWriteError(f"{what} failed: {msg}")


class _WriteFailed(Exception):
    """A write failed; the message says why (one line)."""


def _writer_main() -> None:
    """Writer process: Arrow IPC stream on stdin -> :func:`_write_job` (see :func:`_run_writer`)."""
    import sys

    import pyarrow as pa

    try:
        _write_job(json.loads(sys.argv[1]), pa.ipc.open_stream(sys.stdin.buffer))
    except _WriteFailed as e:
        sys.stderr.write(f"\n{e}\n")
        sys.exit(1)


def _write_job(job: dict[str, Any], reader: Any) -> None:
    """``pyogrio.write_arrow`` of ``reader`` per ``job``, then the GeoPackage R-tree if asked."""
    import pyarrow as pa
    import pyogrio

    path = Path(job["path"])
    boxes = _BoxSpill(path.with_name(path.name + ".bbox")) if job["rtree"] else None
    try:
        if boxes is not None:
            reader = pa.RecordBatchReader.from_batches(reader.schema, boxes.tap(reader))
        try:
            pyogrio.write_arrow(reader, str(path), layer=job["layer"], driver=job["driver"],
                                geometry_name="geometry", geometry_type=job["geometry_type"], crs=job["crs"],
                                layer_options=job["layer_options"])
        except BaseException as exc:  # noqa: BLE001
            # GDAL only says "Error while accessing batch from stream": the boxes' own error says why
            e = boxes.error if boxes is not None and boxes.error is not None else exc
            if not isinstance(e, Exception):
                raise
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise _WriteFailed(msg) from None
        if boxes is not None:
            boxes.flush()
            try:
                _gpkg_rtree(path, job["layer"], boxes)
            except Exception as e:  # noqa: BLE001
                raise _WriteFailed(f"building the spatial index: {e}") from None
    finally:
        if boxes is not None:
            boxes.close()


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


class _BoxSpill:
    """Bounding boxes (minx, maxx, miny, maxy; float64) of the written features, spilled to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, "wb")
        self.count = 0
        self.error: BaseException | None = None

    def tap(self, reader: Any) -> Any:
        import numpy as np
        import shapely

        try:
            for b in reader:
                col = b.column(b.schema.get_field_index("geometry"))
                bb = _polygon_wkb_bounds(col)
                if bb is None:  # not plain little-endian 2-D polygons: let shapely parse them
                    bb = shapely.bounds(shapely.from_wkb(col.to_numpy(zero_copy_only=False)))
                np.ascontiguousarray(bb[:, [0, 2, 1, 3]]).tofile(self.f)
                self.count += len(bb)
                yield b
        except GeneratorExit:  # closed by the consumer (a writer that died): not the batches' error
            raise
        except BaseException as e:  # noqa: BLE001
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()
        try:
            self.path.unlink()
        except OSError:
            pass


def _polygon_wkb_bounds(col: Any) -> Any:
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


def _gpkg_rtree(path: Path, layer: str, boxes: _BoxSpill, chunk: int = 1 << 16) -> None:
    """Add GDAL's R-tree spatial index to a GeoPackage layer written with ``SPATIAL_INDEX=NO``.

    The index's DDL (virtual table, maintenance triggers, ``gpkg_extensions`` rows) is
    copied from a one-feature layer GDAL writes with its index, so it is exactly what GDAL
    itself would have created; the boxes come from :class:`_BoxSpill`, in feature order
    (GDAL numbers features 1..N as written; checked). The tree is bulk-loaded
    (:func:`_rtree_bulk_load`), as GDAL's own threaded R-tree builder does.
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
                _rtree_bulk_load(con, rtree, _BoxFile(boxes.path, n), chunk)
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


def _rtree_bulk_load(con: Any, rtree: str, box: Any, chunk: int) -> None:
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

    def pack(ids: Any, b: Any, depth: int, next_no: int) -> tuple[Any, Any, int, list, list]:
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


def _renamed(schema: Any, renames: dict[str, str]) -> tuple[Any, Any]:
    new = schema.with_metadata(schema.metadata) if schema.metadata else schema
    for i, n in enumerate(schema.names):
        if n in renames:
            new = new.set(i, schema.field(i).with_name(renames[n]))

    def f(batch: Any) -> Any:
        return batch.rename_columns([renames.get(n, n) for n in batch.schema.names])

    return new, f


def geo_metadata(crs: Any, geometry_types: Sequence[str], bbox: Sequence[float] | None) -> dict[str, Any]:
    """GeoParquet ``geo`` file metadata for one WKB ``geometry`` column."""
    col: dict[str, Any] = {"encoding": "WKB", "geometry_types": list(geometry_types)}
    if crs is None:
        col["crs"] = None
    else:
        import pyproj

        col["crs"] = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs).to_json_dict()
    if bbox is not None:
        col["bbox"] = [float(v) for v in bbox]
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": col}}


def _write_parquet(tmp: Path, schema: Any, batches: Iterable[Any], crs: Any, geometry_type: str) -> int:
    import pyarrow.parquet as pq

    # the optional ``bbox`` is left out: it would need every geometry decoded, and the
    # metadata has to be in the schema before the first batch is written
    meta = dict(schema.metadata or {})
    meta[b"geo"] = json.dumps(geo_metadata(crs, [geometry_type], None)).encode()
    schema = schema.with_metadata(meta)
    count = 0
    with pq.ParquetWriter(str(tmp), schema, compression="zstd") as w:
        for b in batches:
            if b.num_rows:
                w.write_batch(b)
                count += b.num_rows
    return count


def write_geodataframe(gdf: Any, path: str | os.PathLike[str], *, overwrite: bool = False,
                       chunk_rows: int = 65536) -> int:
    """Write a GeoDataFrame of Polygons with the same conventions (atomic, format from extension)."""
    import pyarrow as pa
    import shapely

    geom_name = gdf.geometry.name
    attrs = gdf.drop(columns=[geom_name])
    table = pa.Table.from_pandas(attrs, preserve_index=False)
    wkb = pa.array(shapely.to_wkb(gdf.geometry.values), type=pa.large_binary())
    table = table.append_column("geometry", wkb)
    types = sorted(set(gdf.geometry.geom_type.dropna())) or ["Polygon"]
    gtype = types[0] if len(types) == 1 else "Unknown"
    return write_batches(path, table.schema, table.to_batches(max_chunksize=chunk_rows), crs=gdf.crs,
                         overwrite=overwrite, geometry_type=gtype)
