"""A polygon layer's QGIS style inside a GeoPackage (its ``layer_styles`` table). Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoseg.errors import RasterWriteError
from geoseg.io.atomic import gdal_safe_path
from geoseg.styles import STYLE_TABLE


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
