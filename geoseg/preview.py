"""PNG quicklooks: the image as RGB, classes as a translucent overlay with a legend, outlines.

Torch-free. Rasters of any size are read decimated (``out_shape``; GDAL uses overviews
when present, as in geoseg's COG outputs), so a preview costs memory for its own
pixels only (at most ``max_side`` x ``max_side``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling

from geoseg.classes import category_names, default_colour, schema_from_tags
from geoseg.errors import RasterReadError, UsageError, error_text
from geoseg.io.atomic import atomic_output, check_destination
from geoseg.io.raster import open_raster, read_bands, read_errors

_S2_LIKE = {"B8A", "B08", "B8", "B10", "B11", "B12", "B09", "B9"}


def default_rgb(ds: rasterio.io.DatasetReader) -> list[int]:
    """Pick 1-based red, green, blue bands: band names, then colour interpretation, then 1,2,3.

    Band names ``red/green/blue`` are used directly. ``B<n>`` names are read as
    Sentinel-2 / Landsat 8-9 numbering (red B4, green B3, blue B2) when bands beyond B7
    exist, else as Landsat 4-7 TM/ETM+ numbering (red B3, green B2, blue B1).
    """
    names = [(d or "").strip().lower() for d in ds.descriptions]
    if all(any(w in n for n in names) for w in ("red", "green", "blue")):
        return [next(i for i, n in enumerate(names) if w in n) + 1 for w in ("red", "green", "blue")]
    nums: dict[str, int] = {}
    for i, n in enumerate(names):
        m = re.match(r"^b0?(\d+a?)(?:_.*)?$", n)
        if m:
            nums[m.group(1).upper()] = i + 1
    if nums:
        s2 = any(k in _S2_LIKE or (k.isdigit() and int(k) > 7) for k in nums)
        want = ["4", "3", "2"] if s2 else ["3", "2", "1"]
        if all(w in nums for w in want):
            return [nums[w] for w in want]
    ci = list(ds.colorinterp)
    if all(c in ci for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return [ci.index(ColorInterp.red) + 1, ci.index(ColorInterp.green) + 1, ci.index(ColorInterp.blue) + 1]
    if ds.count >= 3:
        return [1, 2, 3]
    return [1, 1, 1]


def _stretch(band: np.ndarray, valid: np.ndarray, lo: float = 2, hi: float = 98) -> np.ndarray:
    v = band[valid]
    if v.size == 0:
        return np.zeros_like(band, dtype=np.float32)
    a, b = np.percentile(v, [lo, hi])
    if b <= a:
        b = a + 1
    return np.clip((band - a) / (b - a), 0, 1).astype(np.float32)


def _shape_for(ds: rasterio.io.DatasetReader, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(ds.width, ds.height))
    return max(1, round(ds.height * scale)), max(1, round(ds.width * scale))


def write_preview(classes: str | os.PathLike[str], output: str | os.PathLike[str], *,
                  image: str | os.PathLike[str] | None = None, rgb: Sequence[int] | None = None,
                  polygons: str | os.PathLike[str] | None = None, alpha: float = 0.45, max_side: int = 1200,
                  outlines: bool = True, overwrite: bool = False, title: str | None = None,
                  image_nodata: float | None = None) -> Path:
    """Write a PNG quicklook of a class raster, over its image when given.

    Args:
        classes: class raster (geoseg's, or any single-band integer raster with a colour table).
        output: PNG path (written atomically).
        image: the input image to show underneath (same georeferencing).
        rgb: 1-based image bands for red, green, blue (default: :func:`default_rgb`).
        polygons: a polygon file to outline (at most 20000 features; otherwise outlines come
            from class boundaries of the raster itself).
        alpha: opacity of the class overlay.
        max_side: longest side of the picture in pixels.
        outlines: draw class boundaries / polygon outlines.
        overwrite: replace an existing PNG.
        image_nodata: an image value to show as nodata (an undeclared collar, e.g. 0), beside its own.
        title: figure title (default: the class raster's name).
    """
    # an output that is one of the inputs is refused, even with overwrite (as every command does)
    check_destination(output, overwrite=overwrite, inputs=[p for p in (classes, image, polygons) if p is not None])
    if Path(output).suffix.lower() != ".png":
        raise UsageError(f"{output}: the preview is a PNG picture; name it .png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    with open_raster(classes) as cds:
        h, w = _shape_for(cds, max_side)
        with read_errors(str(classes)):
            cls = cds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        nodata = cds.nodata
        try:
            cmap = cds.colormap(1)
        except ValueError:
            cmap = {}
        schema = schema_from_tags(cds.tags())
        named = category_names(cds) if schema is None else {}  # a class raster of another tool
        bounds, crs = cds.bounds, cds.crs
    valid_cls = cls != nodata if nodata is not None else np.ones_like(cls, dtype=bool)
    present = [int(v) for v in np.unique(cls[valid_cls])]
    colours: dict[int, tuple[float, float, float]] = {}
    names: dict[int, str] = {}
    for k, v in enumerate(present):
        if schema is not None:
            names[v] = schema.name_of(v)
            info = next((c for c in schema.classes if c.id == v), None)
            col = info.colour if info else default_colour(k)
        elif v in cmap:
            col = cmap[v][:3]
            names[v] = named.get(v, f"class_{v}")  # spelled as the polygons' class names are
        else:
            col = default_colour(k)
            names[v] = named.get(v, f"class_{v}")
        colours[v] = (col[0] / 255, col[1] / 255, col[2] / 255)

    rgb_img = np.full((h, w, 3), 0.92, dtype=np.float32)
    if image is not None:
        with open_raster(image) as ids:
            if (ids.width, ids.height) != _size(classes):
                raise UsageError(f"{image}: its size differs from {classes}; pass the image the classes came from")
            bands = list(rgb) if rgb else default_rgb(ids)
            for b in bands:
                if not 1 <= b <= ids.count:
                    raise UsageError(f"`rgb` band {b} does not exist; {image} has bands 1..{ids.count}")
            with read_errors(str(image)):
                data = read_bands(ids, bands, out_shape=(h, w), resampling=Resampling.nearest, masked=True)
            valid = np.asarray(~np.ma.getmaskarray(data).all(axis=0))
            arr = np.ma.filled(data.astype(np.float64), np.nan)
            valid &= np.isfinite(arr).all(axis=0)
            if image_nodata is not None:  # an undeclared collar: left out of the stretch, shown as nodata
                valid &= ~(arr == image_nodata).all(axis=0)
            rgb_img = np.stack([_stretch(np.nan_to_num(arr[i]), valid) for i in range(3)], axis=-1)
            rgb_img[~valid] = 0.92

    overlay = rgb_img.copy()
    for v, shade in colours.items():
        m = cls == v
        overlay[m] = (1 - alpha) * rgb_img[m] + alpha * np.asarray(shade, dtype=np.float32)
    if outlines:
        edge = np.zeros((h, w), dtype=bool)
        edge[:, 1:] |= cls[:, 1:] != cls[:, :-1]
        edge[1:, :] |= cls[1:, :] != cls[:-1, :]
        edge &= valid_cls
        if polygons is None:
            overlay[edge] = (0.1, 0.1, 0.1)

    aspect = w / h
    fig_w = 10.0
    # the figure's height follows the image's shape within 3-12 inches: a 1 x N raster asked for a figure
    # of 960 000 pixels (several GB); the image keeps its aspect inside the axes. The same layout at every
    # size: the resolution makes the longest side max_side pixels (12 inches at 100 dpi for 1200).
    fig_h = min(12.0, max(3.0, fig_w / aspect * 0.8))
    dpi = max_side / max(fig_w, fig_h)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
    ax.imshow(overlay, extent=extent, interpolation="nearest")
    if polygons is not None and outlines:
        _draw_polygons(ax, polygons, crs)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    handles = [Patch(facecolor=colours[v], edgecolor="black", label=f"{v}: {names[v]}") for v in present]
    if nodata is not None and (~valid_cls).any():
        handles.append(Patch(facecolor=(0.92, 0.92, 0.92), edgecolor="black", label="nodata"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title(title or os.fspath(classes).split("?", 1)[0].rsplit("/", 1)[-1], fontsize=10)
    ax.tick_params(labelsize=7)
    unit = crs.linear_units if crs is not None and crs.is_projected else ("degrees" if crs else "pixels")
    ax.set_xlabel(f"{crs.to_string() if crs else 'no CRS'} ({unit})", fontsize=8)
    fig.tight_layout()
    with atomic_output(output, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(output)


def _size(path: str | os.PathLike[str]) -> tuple[int, int]:
    with open_raster(path) as ds:
        return ds.width, ds.height


def _draw_polygons(ax: object, path: str | os.PathLike[str], crs: object, limit: int = 20000) -> None:
    import pyogrio

    from geoseg.io.atomic import gdal_safe_path
    from geoseg.styles import data_layer

    with gdal_safe_path(path) as safe:
        layer = data_layer(safe)  # not the GeoPackage's style table
        try:
            info = pyogrio.read_info(safe, layer=layer)
        except Exception as e:  # noqa: BLE001 - any unreadable vector is a user error here
            raise RasterReadError(f"{path}: cannot read polygons ({error_text(e, 160)})") from None
        if info.get("features", 0) > limit:
            return  # too many to draw legibly; the raster outlines already show the boundaries
        import geopandas as gpd

        gdf = gpd.read_file(safe, layer=layer)
    if gdf.empty:
        return
    if crs is not None and gdf.crs is not None and gdf.crs != crs:
        gdf = gdf.to_crs(crs)
    gdf.boundary.plot(ax=ax, color="black", linewidth=0.5)


__all__ = ["default_rgb", "write_preview"]
