"""Areas (m²) and perimeters (m) of pixel-coordinate polygons, whatever the raster CRS. Torch-free.

True ground values on the CRS's ellipsoid, in any CRS:

* Geographic CRS: area in a Lambert azimuthal equal-area projection centred on the raster
  (on the CRS's own ellipsoid) — never square degrees; perimeter geodesic
  (``pyproj.Geod.line_lengths``) on that ellipsoid.
* Projected CRS whose scale stays within :data:`SCALE_TOLERANCE` of 1 over the raster (the
  projection's own factors, ``pyproj.Proj.get_factors``, at 5 x 5 points; UTM within its zone,
  any equal-area projection for areas): area = pixel-space area × |pixel area| × (metres per
  CRS unit)², exact for unsimplified polygons (pixel count × pixel area); perimeter from CRS
  coordinates.
* Any other projected CRS (Web Mercator: areas +60% at 50°N; the linear scale of an Albers
  projection away from its standard parallels): areas and perimeters as for a geographic CRS,
  through the CRS's geodetic coordinates.
* No CRS: CRS units are taken as metres (a warning says so).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from geoseg.errors import GeoreferenceWarning, VectorError
from geoseg.vector.ragged import Ragged


#: Largest departure from 1 of a projection's areal (or linear) scale over a raster for which
#: planar areas (or lengths) in its coordinates count as ground values: 0.2%, which keeps UTM
#: within its zone (scale 0.9996-1.001) planar and exact in pixel counts.
SCALE_TOLERANCE = 2e-3


def _scale_range(pcrs: Any, to_lonlat: Any, transform: Any, width: int, height: int) -> tuple[float, float]:
    """Largest |areal scale - 1| and |linear scale - 1| of ``pcrs`` at 5 x 5 points over the raster
    (``inf`` where the projection's factors cannot be computed)."""
    import pyproj

    u = np.linspace(0.0, 1.0, 5)
    cols, rows = np.meshgrid(u * width, u * height)
    x, y = transform @ (cols.ravel(), rows.ravel())
    lon, lat = to_lonlat.transform(np.asarray(x), np.asarray(y))
    try:
        f = pyproj.Proj(pcrs).get_factors(lon, lat)
        areal = np.abs(np.asarray(f.areal_scale) - 1.0).max()
        linear = max(np.abs(np.asarray(f.meridional_scale) - 1.0).max(),
                     np.abs(np.asarray(f.parallel_scale) - 1.0).max())
    except Exception:  # noqa: BLE001 - a CRS pyproj cannot give factors for: measure it the exact way
        return float("inf"), float("inf")
    areal, linear = float(areal), float(linear)
    return (areal if np.isfinite(areal) else float("inf")), (linear if np.isfinite(linear) else float("inf"))


class Measurer:
    """Measure :class:`Ragged` polygons given in pixel coordinates of a raster.

    Args:
        crs: the raster CRS (rasterio CRS, pyproj CRS, string or None).
        transform: the raster's affine transform (pixel -> CRS).
        width, height: raster size, to centre the equal-area projection.
    """

    def __init__(self, crs: Any, transform: Any, width: int, height: int) -> None:
        import pyproj

        self.transform = transform
        self.abs_det = abs(transform.a * transform.e - transform.b * transform.d)
        self.factor = 1.0
        self._to_ea: Any = None
        self._geod: Any = None
        self._to_lonlat: Any = None
        self.planar_area = self.planar_length = True
        if crs is None:
            warnings.warn("raster has no CRS; areas and perimeters assume its units are metres",
                          GeoreferenceWarning, stacklevel=3)
            return
        pcrs = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
        self.planar_area = self.planar_length = not pcrs.is_geographic
        if not pcrs.is_geographic:
            unit = pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else 1.0
            self.factor = float(unit or 1.0)
            self._to_lonlat = pyproj.Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
            areal, linear = _scale_range(pcrs, self._to_lonlat, transform, width, height)
            self.planar_area = areal <= SCALE_TOLERANCE
            self.planar_length = linear <= SCALE_TOLERANCE
        if not (self.planar_area and self.planar_length):  # always so for a geographic CRS
            ell = pcrs.ellipsoid
            assert ell is not None  # every CRS with a geodetic datum has one
            a, rf = ell.semi_major_metre, ell.inverse_flattening
            geod_args = f"+a={a} +rf={rf}" if rf else f"+R={a}"
            cx, cy = transform @ (width / 2.0, height / 2.0)
            if self._to_lonlat is not None:
                cx, cy = self._to_lonlat.transform(cx, cy)
            if not (np.isfinite(cx) and np.isfinite(cy) and abs(cy) <= 90):
                raise VectorError(f"the raster's coordinates (centre {transform @ (width / 2.0, height / 2.0)}) lie "
                                  f"outside where its CRS ({pcrs.name}) maps to the Earth, so areas cannot be "
                                  "measured; check its georeferencing (transform and CRS)")
            ea = pyproj.CRS.from_proj4(f"+proj=laea +lat_0={cy} +lon_0={cx} {geod_args} +units=m +no_defs")
            self._to_ea = pyproj.Transformer.from_crs(pcrs, ea, always_xy=True)
            self._geod = pcrs.get_geod()

    def to_crs(self, rag_px: Ragged) -> Ragged:
        t = self.transform
        return rag_px.transformed(t.a, t.b, t.c, t.d, t.e, t.f)

    def _equal_area(self, rag_crs: Ragged) -> Ragged:
        x, y = self._to_ea.transform(rag_crs.coords[:, 0], rag_crs.coords[:, 1])
        return Ragged(np.column_stack([x, y]), rag_crs.ring_off, rag_crs.poly_off)

    def ring_areas_m2(self, rag_px: Ragged) -> np.ndarray:
        """Unsigned area of every ring (exterior and holes), m²."""
        area2 = (self._equal_area(self.to_crs(rag_px)) if not self.planar_area else rag_px).ring_signed_area2()
        scale = 1.0 if not self.planar_area else self.abs_det * self.factor ** 2
        out: np.ndarray = np.abs(area2) / 2.0 * scale
        return out

    def area_perimeter(self, rag_px: Ragged, rag_crs: Ragged | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(area_m2, perimeter_m)`` per polygon; ``rag_crs`` is ``to_crs(rag_px)`` if already computed."""
        if len(rag_px) == 0:
            return np.empty(0), np.empty(0)
        rag_crs = self.to_crs(rag_px) if rag_crs is None else rag_crs
        area = (rag_px.areas() * self.abs_det * self.factor ** 2 if self.planar_area
                else self._equal_area(rag_crs).areas())
        if self.planar_length:
            return area, rag_crs.per_polygon_sum(rag_crs.segment_lengths()) * self.factor
        lon, lat = rag_crs.coords[:, 0], rag_crs.coords[:, 1]
        if self._to_lonlat is not None:
            lon, lat = self._to_lonlat.transform(lon, lat)
        seg = np.append(self._geod.line_lengths(lon, lat), 0.0) if len(lon) > 1 else np.zeros(len(lon))
        seg = np.where(np.append(rag_crs.segment_mask(), False), seg, 0.0)
        return area, rag_crs.per_polygon_sum(seg)
