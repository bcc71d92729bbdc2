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
from typing import Any, Iterable, Sequence

from geoseg.errors import GeosegError, RasterWriteError, VectorError
from geoseg.io.atomic import atomic_output, check_destination


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


def check_output(path: str | os.PathLike[str], *, overwrite: bool,
                 inputs: Sequence[str | os.PathLike[str]] = ()) -> tuple[Path, str]:
    """Check format and destination before any work; returns ``(path, format name)``."""
    fmt = format_for(path)
    return check_destination(path, overwrite=overwrite, inputs=inputs), fmt.name


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
        g = shapely.orient_polygons(g, exterior_cw=False)
        return batch.set_column(i, "geometry", pa.array(shapely.to_wkb(g), type=pa.large_binary()))

    return f


def write_batches(path: str | os.PathLike[str], schema: Any, batches: Iterable[Any], *, crs: Any,
                  overwrite: bool = False, geometry_type: str = "Polygon", checked: bool = False,
                  layer: str | None = None) -> int:
    """Stream RecordBatches (WKB ``geometry`` column in ``crs``) to ``path``; returns rows written.

    An empty stream writes a valid empty layer with the schema and CRS.
    """
    dest = Path(path)
    fmt = format_for(dest)
    if not checked:
        check_destination(dest, overwrite=overwrite)
    with atomic_output(dest, overwrite=overwrite, checked=True) as tmp:
        if fmt.driver is None:
            return _write_parquet(tmp, schema, batches, crs, geometry_type)
        return _write_ogr(tmp, fmt, schema, batches, crs, geometry_type, layer or dest.stem)
    raise AssertionError("unreachable")  # pragma: no cover


def _write_ogr(tmp: Path, fmt: Format, schema: Any, batches: Iterable[Any], crs: Any, geometry_type: str,
               layer: str) -> int:
    import pyarrow as pa
    import pyogrio

    transform = None
    layer_options: dict[str, str] = {}
    out_crs = crs.to_wkt() if crs is not None and hasattr(crs, "to_wkt") else crs
    if fmt.name == "geojson":
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
    cap = _Capture(batches, transform)
    reader = pa.RecordBatchReader.from_batches(schema, iter(cap))
    try:
        pyogrio.write_arrow(reader, str(tmp), layer=layer, driver=fmt.driver, geometry_name="geometry",
                            geometry_type=geometry_type, crs=out_crs, layer_options=layer_options or None)
    except BaseException as e:
        if cap.error is not None:
            raise cap.error from None
        if isinstance(e, GeosegError):
            raise
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise RasterWriteError(f"{tmp.name}: writing {fmt.driver} failed: {msg}") from None
    if cap.error is not None:
        raise cap.error
    return cap.count


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
