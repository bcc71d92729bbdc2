"""The output formats: the extension table, layer names, destination checks. Torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from geoseg.errors import VectorError
from geoseg.io.atomic import check_destination
from geoseg.styles import qml_path


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

def kept_errors(owner: Any, batches: Iterator[Any]) -> Iterator[Any]:
    """Yield ``batches``; an exception they raise is kept in ``owner.error`` (it would not survive the trip
    through Arrow's C stream, which reports only that reading failed) and raised again. A consumer that
    closes the stream early (a writer that died) is not the batches' error."""
    try:
        yield from batches
    except GeneratorExit:
        raise
    except BaseException as e:  # noqa: BLE001
        owner.error = e
        raise


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


def quote_identifier(name: str) -> str:
    """An SQL identifier, quoted (a layer named ``q"uote`` broke the index SQL)."""
    return '"' + name.replace('"', '""') + '"'


def layer_name(stem: str) -> str:
    """A layer name GDAL and SQL tools take for a file named ``stem``: control characters and double
    quotes become ``_``, and a name that starts with punctuation GeoPackage refuses (``-x``, ``.x``)
    gets a leading ``_``."""
    import re

    name = re.sub(r'[\x00-\x1f\x7f"]', "_", stem) or "polygons"
    return name if (name[0].isalnum() or name[0] in "_ ") else "_" + name
