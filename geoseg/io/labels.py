"""Reading vector labels (training polygons, evaluation truth): any vector file as a GeoDataFrame, checked
polygons, class-field values as keys. Torch-free."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from geoseg.errors import LabelError, VectorError


def class_key(value: Any) -> str:
    """Canonical string of a class-field value: ``3.0`` -> ``"3"``, ``"forest"`` -> ``"forest"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_vector(path: str | os.PathLike[str], layer: str | int | None = None) -> Any:
    """A GeoDataFrame of any vector file GDAL reads; GeoParquet through pyarrow (no GDAL needed).
    Without ``layer``, the first layer that is not a GeoPackage's style table."""
    import geopandas as gpd

    from geoseg.io.atomic import gdal_safe_path
    from geoseg.styles import data_layer

    if Path(path).suffix.lower() in (".parquet", ".geoparquet"):
        return gpd.read_parquet(path)
    with gdal_safe_path(path) as p:
        return gpd.read_file(p, layer=layer if layer is not None else data_layer(p))


def read_polygons(path: str | os.PathLike[str], class_field: str) -> Any:
    """Read label polygons and points; refuse missing CRS, missing field, empty files, other geometries."""
    from geoseg.io.paths import gdal_path, is_virtual

    p: Any = gdal_path(path) if is_virtual(path) else Path(path)  # a URL stays a string
    if not is_virtual(path):
        if not p.exists():
            raise VectorError(f"{p}: vector label file not found")
        if p.is_file() and p.stat().st_size == 0:
            raise LabelError(f"{p}: vector label file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gdf = read_vector(p)
    except Exception as e:  # noqa: BLE001 - pyogrio/GDAL raise many types
        raise VectorError(f"{p}: cannot read as vector data: {str(e).splitlines()[0][:160]}") from None
    if len(gdf) == 0:
        raise LabelError(f"{p}: holds no features; draw some training polygons first")
    if gdf.crs is None:
        raise VectorError(f"{p}: has no CRS (a Shapefile without .prj?); assign the right one first, e.g. "
                          "ogr2ogr -a_srs EPSG:XXXX fixed.gpkg input.shp")
    if class_field not in gdf.columns:
        fields = [c for c in gdf.columns if c != gdf.geometry.name]
        raise VectorError(f"{p}: has no field {class_field!r}; available fields: {', '.join(fields) or 'none'}")
    gdf = gdf[~gdf.geometry.isna() & ~gdf.geometry.is_empty]
    import numpy as np
    import shapely

    # a NaN or infinite vertex cannot be repaired or drawn: such polygons are skipped, and said so
    coords = shapely.get_coordinates(gdf.geometry.values, include_z=False, return_index=True)
    bad_rows = np.unique(coords[1][~np.isfinite(coords[0]).all(axis=1)])
    if len(bad_rows):
        keep = np.ones(len(gdf), bool)
        keep[bad_rows] = False
        gdf = gdf[keep]
        warnings.warn(f"{p}: skipped {len(bad_rows)} polygon(s) with NaN or infinite coordinates; fix them in a GIS",
                      UserWarning, stacklevel=2)
        if len(gdf) == 0:
            raise LabelError(f"{p}: every polygon has NaN or infinite coordinates")
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        # self-intersections (bow-ties) and the like: repair, keep the polygonal parts, say so
        fixed = shapely.make_valid(gdf.geometry[invalid].values)
        polys = [shapely.union_all([g for g in shapely.get_parts(f) if g.geom_type in ("Polygon", "MultiPolygon")])
                 if f.geom_type == "GeometryCollection" else f for f in fixed]
        gdf = gdf.copy()
        gdf.loc[invalid, gdf.geometry.name] = polys
        gdf = gdf[~gdf.geometry.is_empty]
        warnings.warn(f"{p}: repaired {int(invalid.sum())} invalid polygon(s) (self-intersections); check them "
                      "in a GIS", UserWarning, stacklevel=2)
    kinds = set(gdf.geom_type.unique())
    if not kinds <= {"Polygon", "MultiPolygon", "Point", "MultiPoint"}:
        raise LabelError(f"{p}: labels must be polygons or points (a point labels the pixel it falls in), found "
                         f"{', '.join(sorted(kinds))}; buffer lines into polygons if that is what you mean")
    # NULL and empty (or blank) text alike: no class, so unlabelled (an empty text was a class named "")
    blank = gdf[class_field].isna() | gdf[class_field].map(lambda v: isinstance(v, str) and not v.strip())
    if blank.all():
        raise LabelError(f"{p}: every feature has an empty {class_field!r}")
    if blank.any():
        gdf = gdf[~blank]
        warnings.warn(f"{p}: {int(blank.sum())} feature(s) with an empty or NULL {class_field!r} are left out "
                      "(unlabelled)", UserWarning, stacklevel=2)
    return gdf




# ---------------------------------------------------------------------- labels against the raster they are for
def check_label_raster(src: Any, path: str | os.PathLike[str], what: str) -> None:
    """A raster of labels (``what``: "label raster", "truth raster") needs a CRS, to be aligned with the
    raster it labels, and integer class values."""
    import numpy as np

    if src.crs is None:
        raise LabelError(f"{path}: {what} has no CRS; assign one (gdal_edit.py -a_srs) so that it can be aligned")
    if np.dtype(src.dtypes[0]).kind not in "ui":
        raise LabelError(f"{path}: {what} must hold integer class values, not {src.dtypes[0]}")


def raster_overlaps(src: Any, crs: Any, bounds: Sequence[float]) -> bool:
    """Whether the raster ``src``'s footprint, in ``crs``, overlaps ``bounds`` (left, bottom, right, top)."""
    from rasterio.warp import transform_bounds

    lb = transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)
    return not (lb[0] >= bounds[2] or lb[2] <= bounds[0] or lb[1] >= bounds[3] or lb[3] <= bounds[1])


def polygons_inside(gdf: Any, crs: Any, bounds: Sequence[float]) -> tuple[Any, Any]:
    """``gdf`` reprojected to ``crs`` and the mask of its polygons that meet ``bounds``."""
    import shapely

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proj = gdf.to_crs(crs)
    return proj, proj.geometry.intersects(shapely.box(*bounds)).to_numpy()


def no_overlap(path: str | os.PathLike[str] | None, subject: str, target: str) -> LabelError:
    """The one error for labels or truth that miss the raster they are for: ``subject`` with its verb
    ("the labels do", "the truth does"), ``target`` the raster."""
    where = f"{path}: " if path is not None else ""
    return LabelError(f"{where}{subject} not overlap {target}; check that they cover the same area (and that "
                      "the CRS is right)")
