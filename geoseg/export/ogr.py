"""OGR formats (GeoPackage, Shapefile, GeoJSON, FlatGeobuf) through one ``pyogrio.write_arrow`` call, in a
writer process fed Arrow IPC batches through a pipe. Torch-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from geoseg.errors import RasterWriteError, VectorError
from geoseg.export.formats import SHAPEFILE_FIELDS, Format, kept_errors
from geoseg.export.rtree import BoxSpill, gpkg_rtree
from geoseg.io.atomic import gdal_safe_path


class _Capture:
    """Wrap a batch iterator so its exceptions survive the trip through Arrow's C stream."""

    def __init__(self, batches: Iterable[Any], transform: Any = None) -> None:
        self.it = iter(batches)
        self.transform = transform
        self.error: BaseException | None = None
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        return kept_errors(self, self._batches())

    def _batches(self) -> Iterator[Any]:
        for b in self.it:
            if self.transform is not None:
                b = self.transform(b)
            self.count += b.num_rows
            yield b


def write_ogr(tmp: Path, fmt: Format, schema: Any, batches: Iterable[Any], crs: Any, geometry_type: str,
               layer: str, dest: Path | None = None, grid_step: float | None = None) -> int:
    transform = None
    layer_options: dict[str, str] = {}
    out_crs = crs.to_wkt() if crs is not None and hasattr(crs, "to_wkt") else crs
    if fmt.name == "geojson":
        if crs is None:
            raise VectorError(f"{dest or tmp.name}: GeoJSON holds longitude/latitude (RFC 7946), but the raster has "
                              "no CRS to convert from; write .gpkg, .fgb or .shp (pixel coordinates kept), or "
                              "assign the raster's CRS first")
        # GDAL's RFC 7946 mode reprojects to CRS84 (7 decimals), winds exteriors counter-clockwise and
        # splits at the antimeridian; the layer is declared in the raster's CRS for it to convert from
        layer_options["RFC7946"] = "YES"
        if grid_step:
            transform = _on_grid_vertices(grid_step)
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
        # the writer process builds the index once the layer is complete (rtree.gpkg_rtree)
        layer_options["SPATIAL_INDEX"] = "NO"
    cap = _Capture(batches, transform)
    what = f"{dest or tmp.name}: writing {fmt.driver}"
    with gdal_safe_path(tmp) as path:  # a folder named with ';' or a newline, which pyogrio would mangle
        job = {"path": path, "layer": layer, "driver": fmt.driver, "geometry_type": geometry_type,
               "crs": out_crs, "layer_options": layer_options or None, "rtree": fmt.name == "gpkg",
               # GeoPackage 1.2, not the 1.4 of a recent GDAL: older GDAL (QGIS 3.22's 3.6) warned at every
               # layer load that a 1.4 file "may only be partially supported"; nothing here needs 1.3/1.4
               "dataset_options": {"VERSION": "1.2"} if fmt.name == "gpkg" else None}
        try:
            _write(job, schema, cap, what)
        except RasterWriteError as e:
            if fmt.name == "geojson" and any(m in str(e) for m in _OFF_THE_EARTH):
                raise VectorError(_OFF_THE_EARTH_MESSAGE) from None
            raise
    if cap.error is not None:
        raise cap.error
    return cap.count


#: PROJ's words when a point has no longitude/latitude (a raster placed off the Earth)
_OFF_THE_EARTH = ("projection domain", "reproject", "Invalid coordinate")
_OFF_THE_EARTH_MESSAGE = ("polygons lie outside where the raster's CRS maps to the Earth, so they cannot be written "
                          "as GeoJSON longitude/latitude; check the raster's georeferencing, or write .gpkg/.fgb "
                          "(coordinates kept as they are)")


def _write(job: dict[str, Any], schema: Any, cap: _Capture, what: str) -> None:
    """Run ``job`` on ``cap``'s batches in the writer process, or in this thread (:data:`WRITER_PROCESS`)."""
    if WRITER_PROCESS:
        _run_writer(job, schema, cap, what)
        return
    import pyarrow as pa

    try:
        _write_job(job, pa.RecordBatchReader.from_batches(schema, iter(cap)))
    except BaseException as e:
        if cap.error is not None:
            raise cap.error from None
        if isinstance(e, _WriteFailed):
            raise RasterWriteError(f"{what} failed: {e}") from None
        raise


def _on_grid_vertices(step: float) -> Any:
    """A batch transform: every polygon edge gets a vertex at each ``step`` (the raster's pixel side) along it.

    Reprojection moves vertices only. Where one polygon's corner lies on a straight edge of its neighbour
    (a T-junction, everywhere in a polygonized raster), that edge, reprojected as a straight line between
    its own ends, no longer passes through the corner: neighbours overlapped by slivers (14 377 pairs of
    a 500 x 500 CDL subset in longitude/latitude). With a vertex at every pixel corner along its edges,
    each polygon has the points of its neighbours' corners, and the reprojected edges coincide. The step
    is a hair above the pixel side so that an edge of k pixels gets exactly k parts despite rounding.
    """
    import numpy as np
    import pyarrow as pa
    import shapely

    tolerance = step * (1 + 1e-9)

    def f(batch: Any) -> Any:
        i = batch.schema.get_field_index("geometry")
        geoms = shapely.from_wkb(np.asarray(batch.column(i).to_pylist(), dtype=object))
        wkb = shapely.to_wkb(shapely.segmentize(geoms, tolerance))
        return batch.set_column(i, batch.schema.field(i), pa.array(wkb, type=batch.schema.field(i).type))

    return f


def _renamed(schema: Any, renames: dict[str, str]) -> tuple[Any, Any]:
    new = schema.with_metadata(schema.metadata) if schema.metadata else schema
    for i, n in enumerate(schema.names):
        if n in renames:
            new = new.set(i, schema.field(i).with_name(renames[n]))

    def f(batch: Any) -> Any:
        return batch.rename_columns([renames.get(n, n) for n in batch.schema.names])

    return new, f


#: write OGR formats in a separate process (True) or in the calling thread (False)
WRITER_PROCESS = True

#: a writer process gets Arrow IPC batches through a pipe (so GDAL's writing, which holds
#: the GIL in pyogrio, runs beside the polygonizing and merging); what is in flight is
#: bounded by the pipe buffer plus the batch being written
_WRITER_CODE = "import sys; sys.path.insert(0, sys.argv[2]); from geoseg.export.ogr import writer_main; writer_main()"


def _run_writer(job: dict[str, Any], schema: Any, cap: "_Capture", what: str) -> None:
    """Stream ``cap``'s batches to a writer process running :func:`writer_main`.

    Errors from the batches are kept in ``cap.error`` (re-raised by the caller); errors
    from the writer become one :class:`RasterWriteError`. The writer has exited when this
    returns, so the caller may remove the temporary file.
    """
    import subprocess
    import sys
    import tempfile

    import pyarrow as pa

    root = str(Path(__file__).resolve().parents[2])
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


def _one_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def writer_main() -> None:
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
    boxes = BoxSpill(path.with_name(path.name + ".bbox")) if job["rtree"] else None
    try:
        if boxes is not None:
            reader = pa.RecordBatchReader.from_batches(reader.schema, boxes.tap(reader))
        try:
            pyogrio.write_arrow(reader, str(path), layer=job["layer"], driver=job["driver"],
                                geometry_name="geometry", geometry_type=job["geometry_type"], crs=job["crs"],
                                layer_options=job["layer_options"], dataset_options=job.get("dataset_options"))
        except BaseException as exc:  # noqa: BLE001
            # GDAL only says "Error while accessing batch from stream": the boxes' own error says why
            e = boxes.error if boxes is not None and boxes.error is not None else exc
            if not isinstance(e, Exception):
                raise
            raise _WriteFailed(_one_line(e)) from None
        if boxes is not None:
            boxes.flush()
            try:
                gpkg_rtree(path, job["layer"], boxes)
            except Exception as e:  # noqa: BLE001
                raise _WriteFailed(f"building the spatial index: {e}") from None
    finally:
        if boxes is not None:
            boxes.close()
