"""GeoParquet through a pyarrow ``ParquetWriter``, with the ``geo`` metadata. Torch-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

#: GeoParquet metadata version written
GEOPARQUET_VERSION = "1.1.0"


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


def write_parquet(tmp: Path, schema: Any, batches: Iterable[Any], crs: Any, geometry_type: str) -> int:
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
