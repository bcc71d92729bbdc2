"""Class rasters read by row bands: nodata mask, safe dtype, optional sieve with a halo. Torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from rasterio.windows import Window

from geoseg.classes import (ClassInfo, ClassSchema, category_names, default_colour, parse_class_names,
                            schema_from_tags)
from geoseg.errors import RasterReadError, UsageError
from geoseg.io.raster import open_raster, read_errors

#: pixels per band when ``band_rows`` is not given: memory per band stays constant
#: whatever the raster width (rows = max(16, DEFAULT_BAND_PIXELS // width)). ``shapes``
#: returns Python objects (~100 bytes per vertex), so a 2 M pixel band of a dense crop map
#: costs ~200 MB while it is collected; fewer, bigger bands mean fewer polygons to merge
#: across seams (1 M pixel bands cost 10 % more time on the 8192² benchmark).
DEFAULT_BAND_PIXELS = 2 << 20


@dataclass
class Band:
    """Rows ``r0:r1`` of the class raster, ready for ``rasterio.features.shapes``."""

    r0: int
    r1: int
    data: np.ndarray  #: (r1 - r0, width), uint8/int16/uint16/int32
    emit: np.ndarray  #: bool, True where a polygon pixel is (valid, selected class, not boundary)


def safe_dtype(dtype: Any, name: str) -> np.dtype:
    """The dtype ``shapes`` handles exactly for class ids of ``dtype`` (it truncates 64-bit types)."""
    dt: np.dtype = np.dtype(dtype)
    if dt in (np.uint8, np.int16, np.uint16, np.int32):
        return dt
    if dt == np.int8:
        return np.dtype(np.int16)
    if dt.kind in "uif" or dt == np.bool_:
        return np.dtype(np.int32)
    raise RasterReadError(f"{name}: band type {dt} cannot hold class ids; convert to an integer type "
                          "(e.g. gdal_translate -ot Byte)")


def _cast(data: np.ndarray, valid: np.ndarray, dt: np.dtype, name: str) -> np.ndarray:
    if data.dtype == dt:
        return data
    v = data[valid]
    if v.size:
        if data.dtype.kind == "f" and not np.all(np.isfinite(v) & (v == np.round(v))):
            raise RasterReadError(f"{name}: raster holds non-integer values; vectorize a class raster "
                                  "(integer class ids), not probabilities or reflectance")
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        if v.min() < lo or v.max() > hi:
            raise RasterReadError(f"{name}: class ids outside {lo}..{hi}; recode the raster to smaller ids")
    out = np.zeros(data.shape, dt)
    out[valid] = data[valid].astype(dt)
    return out


class ClassSource:
    """An open class raster: geometry, class names, and a row-band iterator.

    Args:
        path: class raster (band 1 is read).
        class_names: ``{id: name}`` overriding the raster's own ``geoseg_classes`` tag.
        nodata: a value to treat as nodata beside the raster's own (an undeclared collar, e.g. 0).
    """

    def __init__(self, path: str | os.PathLike[str], class_names: dict[int, str] | None = None,
                 nodata: float | None = None) -> None:
        self.nodata = nodata
        self.ds = open_raster(path)
        ds = self.ds
        self.name = str(path)
        self.width, self.height = ds.width, ds.height
        self.crs = ds.crs
        self.transform = ds.transform
        self.dtype = safe_dtype(ds.dtypes[0], self.name)
        self.schema: ClassSchema | None = schema_from_tags(ds.tags())
        # geoseg's class tag, else GDAL's category names or attribute table (a class raster of another tool)
        names = {c.id: c.name for c in self.schema.classes} if self.schema else category_names(ds)
        names.update(class_names or {})
        self.names = names

    def close(self) -> None:
        self.ds.close()

    def __enter__(self) -> "ClassSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def name_of(self, class_id: int) -> str:
        return self.names.get(int(class_id), f"class_{int(class_id)}")

    def style_classes(self, present: Iterable[int] = ()) -> list[ClassInfo]:
        """The classes a polygon style lists: the schema's, the named ones and those ``present``,
        in the schema's colours, else the raster's colour table, else :func:`default_colour`."""
        ids = sorted({*(self.schema.ids if self.schema else ()), *self.names, *(int(i) for i in present)})
        colours = {c.id: c.colour for c in self.schema.classes} if self.schema else {}
        if not colours:
            try:
                colours = {k: tuple(v[:3]) for k, v in self.ds.colormap(1).items()}
            except ValueError:  # no colour table
                colours = {}
        return [ClassInfo(i, self.name_of(i), colours.get(i) or default_colour(k, self.name_of(i)))
                for k, i in enumerate(ids)]

    def resolve_class(self, value: int | str, option: str) -> int:
        """A class given as an id or a name -> id (UsageError when unknown)."""
        if isinstance(value, (int, np.integer)):
            return int(value)
        s = str(value).strip()
        if s.lstrip("-").isdigit():
            return int(s)
        for k, v in self.names.items():
            if v == s:
                return k
        known = ", ".join(f"{k}={v}" for k, v in sorted(self.names.items())) or "none (pass `class_names`)"
        raise UsageError(f"`{option}` {s!r}: no class of that name; known classes: {known}")

    def _read(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        w = Window(0, r0, self.width, r1 - r0)
        with read_errors(self.name, w):
            data = self.ds.read(1, window=w)
            valid = self.ds.read_masks(1, window=w) > 0
        if self.nodata is not None:
            valid &= data != self.nodata
        if data.dtype.kind == "f":
            valid &= np.isfinite(data)
        return _cast(data, valid, self.dtype, self.name), valid

    def bands(self, band_rows: int, *, sieve: int | None = None, keep: Sequence[int] | None = None,
              boundary: int | None = None) -> Iterator[Band]:
        """Yield row bands top to bottom.

        ``sieve`` (pixels) runs ``rasterio.features.sieve`` (4-connected) on each band read with
        a halo of ``sieve`` rows above and below, so every region smaller than ``sieve`` pixels
        is seen whole; only the band's own rows are kept.
        """
        for r0 in range(0, self.height, band_rows):
            yield self.band(r0, min(self.height, r0 + band_rows), sieve=sieve, keep=keep, boundary=boundary)

    def band(self, r0: int, r1: int, *, sieve: int | None = None, keep: Sequence[int] | None = None,
             boundary: int | None = None) -> Band:
        """Rows ``r0:r1`` as a :class:`Band` (see :meth:`bands`)."""
        from rasterio.features import sieve as _sieve

        halo = int(sieve) if sieve and sieve > 1 else 0
        if halo:
            a0, a1 = max(0, r0 - halo), min(self.height, r1 + halo)
            data, valid = self._read(a0, a1)
            sieve_dt = data.dtype if data.dtype != np.uint16 else np.dtype(np.int32)
            data = _sieve(data.astype(sieve_dt, copy=False), halo, mask=valid, connectivity=4)
            data = data.astype(self.dtype, copy=False)[r0 - a0:r1 - a0]
            valid = valid[r0 - a0:r1 - a0]
        else:
            data, valid = self._read(r0, r1)
        emit = valid
        if keep is not None:
            emit = emit & np.isin(data, np.asarray(sorted(set(keep)), dtype=np.int64))
        if boundary is not None:
            emit = emit & (data != boundary)
        return Band(r0, r1, np.ascontiguousarray(data), np.ascontiguousarray(emit))


class ConfidenceSource:
    """The ``confidence`` band of a probability raster written by ``geoseg infer`` (a raster without a band
    of that name is refused).

    uint8 rasters are scaled by 1/255 (their ``scale`` tag), float32 ones are used as is;
    masked and non-finite pixels are ignored.
    """

    def __init__(self, path: str | os.PathLike[str], like: ClassSource) -> None:
        self.ds = open_raster(path)
        ds = self.ds
        if (ds.width, ds.height) != (like.width, like.height) or ds.transform != like.transform:
            self.ds.close()
            raise UsageError(f"{path}: probability raster is {ds.width}x{ds.height} but the class raster is "
                             f"{like.width}x{like.height} (or the georeference differs); pass the matching "
                             "probabilities file")
        descs = [d or "" for d in ds.descriptions]
        if "confidence" not in descs:  # an image passed by mistake: its last band was read as confidence
            self.ds.close()
            raise UsageError(f"{path}: not a probability raster of geoseg's (no band named 'confidence'); pass the "
                             "file 'geoseg infer --probabilities' wrote")
        self.band = descs.index("confidence") + 1
        dt = np.dtype(ds.dtypes[self.band - 1])
        scale_tag = ds.tags().get("scale", "")
        self.scale = 1 / 255 if (scale_tag == "1/255" or (dt == np.uint8 and scale_tag != "1")) else 1.0

    def read(self, r0: int, r1: int) -> np.ndarray:
        w = Window(0, r0, self.ds.width, r1 - r0)
        with read_errors(self.ds.name, w):
            v: np.ndarray = self.ds.read(self.band, window=w).astype(np.float64)
            m = self.ds.read_masks(self.band, window=w) > 0
        v *= self.scale
        v[~m] = np.nan
        return v

    def close(self) -> None:
        self.ds.close()


def parse_names(class_names: Any) -> dict[int, str] | None:
    """``{1: "corn"}``, ``["1=corn", "5=soy"]`` or ``"1=corn,5=soy"`` -> ``{id: name}``."""
    if class_names is None:
        return None
    if isinstance(class_names, dict):
        return {int(k): str(v) for k, v in class_names.items()}
    if isinstance(class_names, str):
        class_names = [class_names]
    return parse_class_names(list(class_names))


__all__ = ["Band", "ClassSource", "ConfidenceSource", "DEFAULT_BAND_PIXELS", "parse_names"]
