"""Reading input rasters by windows, with nodata masks, and clear errors. Torch-free."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geoseg.errors import (BandMismatchError, BandOrderWarning, GeoreferenceWarning, RasterReadError, UsageError,
                           error_text)
from geoseg.io.paths import gdal_path, is_virtual

_SUPPORTED_KINDS = "uifb"  # unsigned, signed, float, bool


def open_raster(path: str | os.PathLike[str], **open_options: str) -> rasterio.io.DatasetReader:
    """Open a raster for reading; any failure becomes one clear :class:`RasterReadError`.

    ``path`` is a local file, a URL (``https://``, ``s3://``...) or a GDAL ``/vsi`` path
    (:func:`geoseg.io.paths.gdal_path`); ``open_options`` are the driver's (e.g. GTiff's ``NUM_THREADS``).
    """
    text = gdal_path(path)
    p: Any = text
    if not is_virtual(text):
        p = Path(text)
        if not p.exists():
            raise RasterReadError(f"{p}: file not found")
        if p.is_dir():
            raise RasterReadError(f"{p}: is a directory, expected a raster file")
        if p.stat().st_size == 0:
            raise RasterReadError(f"{p}: file is empty")
    # a remote file: no listing of its folder on open (a request per sidecar GDAL looks for, and a slow
    # or refused listing on HTTP and S3), unless the user's environment says otherwise
    opts = ({"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
            if is_virtual(text) and "GDAL_DISABLE_READDIR_ON_OPEN" not in os.environ else {})
    try:
        with warnings.catch_warnings(), rasterio.Env(**opts):
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(p, **open_options)
    except RasterioIOError as e:
        msg = error_text(e, 400) if str(e) else "unreadable"
        if "not recognized as being in a supported file format" in msg or "not recognised" in msg:
            msg = "not a raster GDAL can read (wrong or damaged file)"
        if is_virtual(text) and ("No such file" in msg or "HTTP" in msg or "does not exist" in msg):
            msg = f"cannot reach it ({msg[:160]}); check the URL and your network or credentials"
        raise RasterReadError(f"{path}: cannot open as a raster: {msg[:240]}") from None
    return ds


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about an input raster."""

    path: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs: Any
    transform: Any
    nodata: float | None
    descriptions: tuple[str | None, ...]


def inspect(ds: rasterio.io.DatasetReader) -> RasterInfo:
    """Check that ``ds`` is usable as model input and summarise it."""
    name = ds.name
    if ds.count < 1:
        raise RasterReadError(f"{name}: raster has no bands")
    for dt in ds.dtypes:
        if np.dtype(dt).kind not in _SUPPORTED_KINDS:
            raise RasterReadError(f"{name}: band data type {dt} is not supported; convert to a real-valued type "
                                  "(e.g. gdal_translate -ot Float32)")
    if ds.crs is None:
        warnings.warn(f"{name}: no CRS; outputs will not be georeferenced", GeoreferenceWarning, stacklevel=2)
    t = ds.transform
    if t.b != 0 or t.d != 0:
        warnings.warn(f"{name}: rotated or sheared geotransform; outputs keep it, polygon areas follow it",
                      GeoreferenceWarning, stacklevel=2)
    return RasterInfo(name, ds.width, ds.height, ds.count, tuple(ds.dtypes), ds.crs, ds.transform,
                      ds.nodata, tuple(ds.descriptions))


def resolve_bands(ds: rasterio.io.DatasetReader, bands: Sequence[int] | None, expected: int,
                  band_names: Sequence[str] = ()) -> list[int]:
    """1-based band indexes to feed the model; check their count against the model.

    Args:
        ds: the input raster.
        bands: user selection (1-based, in model order), or None for all bands.
        expected: the number of bands the model takes.
        band_names: the model's band names, for the error message.
    """
    alpha = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == rasterio.enums.ColorInterp.alpha]
    by_name = bands_by_name(ds, band_names)
    if bands is None:
        idx = [b for b in range(1, ds.count + 1) if b not in alpha]
        if len(idx) != expected:
            names = f" ({', '.join(band_names)})" if band_names else ""
            extra = f" plus {len(alpha)} alpha" if alpha else ""
            if len(idx) > expected:
                todo = (f"select {expected} bands in model order with `bands`, e.g. `bands` "
                        f"{','.join(str(i) for i in by_name or range(1, expected + 1))}"
                        f"{' (the bands of those names here)' if by_name else ''}")
            else:
                todo = "use a raster with those bands (stack them first) or a model trained for this one"
            raise BandMismatchError(
                f"{ds.name}: raster has {len(idx)} bands{extra} but the model expects {expected}{names}; {todo}")
        if by_name is not None and by_name != idx:
            raise BandMismatchError(
                f"{ds.name}: its band names put the model's bands ({', '.join(band_names)}) at bands "
                f"{','.join(map(str, by_name))}, not in the raster's order; pass `bands` "
                f"{','.join(map(str, by_name))} (or `bands` {','.join(map(str, idx))} if the names are wrong)")
        return idx
    idx = list(bands)
    for b in idx:
        if not 1 <= b <= ds.count:
            raise UsageError(f"{ds.name}: band {b} does not exist; the raster has bands 1..{ds.count}")
    if len(idx) != expected:
        raise BandMismatchError(f"`bands` selects {len(idx)} bands but the model expects {expected}")
    if by_name is not None and by_name != idx:
        warnings.warn(f"{ds.name}: `bands` {','.join(map(str, idx))} differ from the bands its names give for the "
                      f"model's ({', '.join(band_names)}): {','.join(map(str, by_name))}; used as given",
                      BandOrderWarning, stacklevel=3)
    return idx


def bands_by_name(ds: rasterio.io.DatasetReader, band_names: Sequence[str]) -> list[int] | None:
    """The 1-based bands whose descriptions are the model's ``band_names`` (case and spaces aside), in
    model order; None unless each name is the description of exactly one band (generic or missing
    descriptions say nothing about the order, and then nothing is checked)."""
    if not band_names:
        return None

    def key(text: str | None) -> str:
        return " ".join((text or "").split()).casefold()

    descriptions = [key(d) for d in ds.descriptions]
    found = []
    for name in band_names:
        hits = [i + 1 for i, d in enumerate(descriptions) if d and d == key(name)]
        if len(hits) != 1:
            return None
        found.append(hits[0])
    return found if len(set(found)) == len(found) else None


def read_window(ds: rasterio.io.DatasetReader, bands: Sequence[int], window: Window, *,
                native: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` in ``window`` with a per-band validity mask.

    Args:
        native: keep the raster's own data type (e.g. uint16: half the memory of float32)
            instead of converting to float32.

    Returns:
        ``(data, valid)``: data (bands, h, w) float32 (or native); valid (bands, h, w) bool,
        False where the band is nodata (declared nodata, internal mask, alpha) or not finite.
    """
    dtype = np.result_type(*(ds.dtypes[b - 1] for b in bands)) if native else np.dtype(np.float32)
    shape = (len(bands), int(window.height), int(window.width))
    data = np.empty(shape, dtype=dtype)
    valid = np.empty(shape, dtype=np.uint8)
    read_into(ds, bands, window, data, valid)
    return data, valid.astype(bool)


def validity_kind(ds: rasterio.io.DatasetReader, bands: Sequence[int]) -> tuple[bool, bool]:
    """``(masked, floating)``: whether any of ``bands`` may hold masked values (declared nodata,
    internal mask, alpha) and whether their values may be non-finite (floating types).

    With ``(False, False)`` every value is valid, and nothing per pixel needs checking.
    """
    masked = any(ds.mask_flag_enums[b - 1] != [rasterio.enums.MaskFlags.all_valid] for b in bands)
    floating = any(np.dtype(ds.dtypes[b - 1]).kind == "f" for b in bands)
    return masked, floating


@contextmanager
def read_errors(name: str, window: Window | None = None) -> Iterator[None]:
    """Turn a failed read of raster ``name`` (a damaged tile, a truncated file, a dead remote source)
    into one :class:`RasterReadError` line that names the file, the rows and GDAL's reason."""
    try:
        yield
    except RasterioIOError as e:
        what = (f"read failed at rows {window.row_off}..{window.row_off + window.height}" if window is not None
                else "read failed")
        raise RasterReadError(f"{name}: {what} (file truncated or damaged?): {error_text(e, 160)}") from None


def read_bands(ds: rasterio.io.DatasetReader, bands: Sequence[int], **kwargs: Any) -> np.ndarray:
    """``ds.read(bands, **kwargs)`` for bands of any mix of types (rasterio refuses several types in one
    read): mixed bands are read one by one and stacked in their common type (masked arrays too)."""
    if len({ds.dtypes[b - 1] for b in bands}) == 1:
        same: np.ndarray = ds.read(list(bands), **kwargs)
        return same
    parts = [ds.read(b, **kwargs) for b in bands]
    common = np.result_type(*(p.dtype for p in parts))
    if kwargs.get("masked"):
        return np.ma.stack([p.astype(common) for p in parts])
    return np.stack([p.astype(common) for p in parts])


def read_into(ds: rasterio.io.DatasetReader, bands: Sequence[int], window: Window, out: np.ndarray,
              valid: np.ndarray | None = None, masked: bool = True, nodata: float | None = None) -> None:
    """Read ``bands`` in ``window`` into ``out`` (bands, h, w) in the raster's own type (views welcome).

    ``valid`` (bands, h, w) uint8, if given, receives the validity: nonzero where the value is not
    masked (declared nodata, internal mask, alpha; when ``masked``), finite (floating types) and not
    ``nodata`` (a value the user names as nodata, e.g. an undeclared zero collar).
    """
    with read_errors(ds.name, window):
        if len({ds.dtypes[b - 1] for b in bands}) == 1:
            ds.read(list(bands), window=window, out=out)
        else:  # bands of several types (a VRT stacking Byte and Float32): rasterio reads them one by one
            for i, b in enumerate(bands):
                ds.read(b, window=window, out=out[i], out_dtype=out.dtype)
        if valid is not None:
            if masked:
                ds.read_masks(list(bands), window=window, out=valid)
            else:
                valid[...] = 1
    if valid is not None and out.dtype.kind == "f":
        valid &= np.isfinite(out)
    if valid is not None and nodata is not None:
        valid &= out != nodata


def parse_bands(text: str | None, option: str = "bands") -> list[int] | None:
    """``"4,3,2"`` -> ``[4, 3, 2]`` (1-based); errors name ``option``, the parameter the text is for."""
    if text is None or not str(text).strip():
        return None
    try:
        out = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"`{option}` {text!r}: expected comma-separated 1-based band numbers like 4,3,2") from None
    if not out:
        return None
    return out
