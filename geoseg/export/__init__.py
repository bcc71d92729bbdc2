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

import os
from pathlib import Path
from typing import Any, Callable, Iterable

from geoseg.export.formats import (EXTENSIONS, FORMATS, SHAPEFILE_FIELDS, Format, check_output, format_for, layer_name,
                                   style_path)
from geoseg.export.ogr import write_ogr
from geoseg.export.parquet import GEOPARQUET_VERSION, geo_metadata, write_parquet
from geoseg.export.style import gpkg_layer_style
from geoseg.io.atomic import atomic_output, check_destination
from geoseg.styles import write_qml

__all__ = ["EXTENSIONS", "FORMATS", "GEOPARQUET_VERSION", "SHAPEFILE_FIELDS", "Format", "check_output", "format_for",
           "geo_metadata", "gpkg_layer_style", "layer_name", "style_path", "write_batches", "write_geodataframe"]


def write_batches(path: str | os.PathLike[str], schema: Any, batches: Iterable[Any], *, crs: Any,
                  overwrite: bool = False, geometry_type: str = "Polygon", checked: bool = False,
                  layer: str | None = None, style: Callable[[], str] | None = None,
                  grid_step: float | None = None) -> int:
    """Stream RecordBatches (WKB ``geometry`` column in ``crs``) to ``path``; returns rows written.

    ``grid_step``: the side of the raster pixels the polygons were traced on; GeoJSON, reprojected to
    longitude/latitude, then gets a vertex at each pixel corner along every edge, so that neighbours
    stay edge to edge (:func:`geoseg.export.ogr.write_ogr`).

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
            count = write_parquet(tmp, schema, batches, crs, geometry_type)
        else:
            count = write_ogr(tmp, fmt, schema, batches, crs, geometry_type, lname, dest, grid_step)
        if style is not None and fmt.name == "gpkg":
            gpkg_layer_style(tmp, lname, style())
    if style is not None and style_path(dest) is not None:
        write_qml(dest, style(), overwrite=overwrite)
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
