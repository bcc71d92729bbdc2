"""Streaming GeoTIFF output: windowed writes to a temporary file, then a Cloud Optimized GeoTIFF.

Rows are written as soon as they are final, so nothing holds the whole output.
On :meth:`GeoTiffSink.commit` the temporary tiled GeoTIFF is converted by GDAL's
COG driver (which builds overviews in its own streaming way) into a second
temporary file beside the destination, which is then renamed over it. On
:meth:`GeoTiffSink.abort` (or any exception inside ``with``) every temporary file
is removed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geoseg.classes import ClassSchema
from geoseg.errors import RasterWriteError, error_text
from geoseg.io.atomic import TMP_MARKER, commit, remove_quietly, temp_path_for

#: Creation options of the intermediate file: tiled and uncompressed, so blocks are
#: rewritten in place (a kill can never leave a half-written compressed block behind
#: a valid index: what a resumed run reads back is exactly what was flushed) and
#: writing costs no compression time on the hot path; the COG step compresses.
STAGING_PROFILE = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 512,
    "blockysize": 512,
    "compress": "none",
    "bigtiff": "if_safer",
    "interleave": "band",
    "sparse_ok": True,
}

#: Creation options of the final COG.
COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "BLOCKSIZE": "512",
    "NUM_THREADS": "ALL_CPUS",
    "BIGTIFF": "IF_SAFER",
}


class GeoTiffSink:
    """A georeferenced output written by windows and committed atomically as a COG.

    Args:
        dest: final path.
        width, height, count, dtype: raster shape and type.
        crs, transform: georeferencing (copied from the input).
        nodata: nodata value of every band.
        colormap: colour table for band 1 (class rasters).
        descriptions: band descriptions.
        tags: dataset tags (e.g. class names as JSON).
        band_tags: per-band tags.
        classes: class schema of band 1 (class rasters): written as GDAL category names and a
            raster attribute table (value, name, red, green, blue), which GDAL keeps in the
            ``.aux.xml`` beside the GeoTIFF; the colour table comes from ``colormap``.
        scale, offset: GDAL band scale and offset of every band (physical value = raw * scale + offset).
        resampling: overview resampling (``nearest`` for classes, ``average`` for probabilities).
        staging: path of the intermediate file (default: a unique temporary name beside ``dest``).
    """

    def __init__(self, dest: str | os.PathLike[str], *, width: int, height: int, count: int, dtype: str,
                 crs: Any, transform: Any, nodata: float | None = None,
                 colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
                 descriptions: list[str] | None = None, tags: Mapping[str, str] | None = None,
                 band_tags: list[Mapping[str, str]] | None = None, resampling: str = "nearest",
                 staging: Path | None = None, resume: bool = False, mask: bool = False,
                 classes: ClassSchema | None = None, scale: float | None = None, offset: float = 0.0,
                 row_offset: int = 0, cog: bool = True) -> None:
        self.dest = Path(dest)
        self.classes = classes
        #: rows passed to :meth:`write` count from the raster's top; this file starts at this row
        #: (a block of rows, :func:`geoseg.pipeline.assemble.assemble_blocks`)
        self.row_offset = row_offset
        #: False: the staging file itself is published (a block part), no COG
        self.cog = cog
        self.resampling = resampling
        self.staging = staging or temp_path_for(self.dest)
        self.count = count
        profile = dict(STAGING_PROFILE, width=width, height=height, count=count, dtype=dtype,
                       crs=crs, transform=transform, nodata=nodata)
        if width < 512 or height < 512:
            # GDAL needs tile sizes that are multiples of 16; small rasters stay striped
            profile.update(tiled=False)
            profile.pop("blockxsize")
            profile.pop("blockysize")
        if count > 1:
            # never RGB(A): with 3 or 4 Byte bands GDAL would call the bands red, green, blue
            # and alpha, and viewers would draw probabilities as a colour image with the
            # confidence as transparency
            profile.update(photometric="MINISBLACK")
        self.has_mask = mask
        self._bands = list(range(1, count + 1))
        if mask:
            # the validity mask is one more ordinary band of the staging file; the COG step
            # turns it into the output's internal mask (see finalize). GDAL internal masks in
            # a file that is closed and reopened for update at every checkpoint were seen to
            # lose blocks or corrupt the mask's directory (about 1 run in 50).
            profile.update(count=count + 1)
        try:
            if resume and self.staging.exists():
                self._ds = rasterio.open(self.staging, "r+")
            else:
                self._ds = rasterio.open(self.staging, "w", **profile)
                if colormap:
                    self._ds.write_colormap(1, dict(colormap))
                if descriptions:
                    for i, d in enumerate(descriptions[:count], start=1):
                        self._ds.set_band_description(i, d)
                if tags:
                    self._ds.update_tags(**tags)
                if band_tags:
                    for i, bt in enumerate(band_tags[:count], start=1):
                        self._ds.update_tags(i, **bt)
                if scale is not None:
                    self._ds.scales = [scale] * count + [1.0] * (mask and 1)
                    self._ds.offsets = [offset] * count + [0.0] * (mask and 1)
        except (RasterioIOError, OSError) as e:
            remove_quietly(self.staging)
            raise RasterWriteError(f"{self.dest}: cannot create output: {error_text(e, 200)}") from None

    def write(self, data: np.ndarray, row: int, col: int) -> None:
        """Write ``data`` (count, h, w) with its top-left at (row, col)."""
        _, h, w = data.shape
        try:
            self._ds.write(data, indexes=self._bands, window=Window(col, row - self.row_offset, w, h))
        except (RasterioIOError, OSError) as e:
            raise RasterWriteError(f"{self.dest}: write failed (disk full?): {error_text(e, 200)}") from None

    def write_mask(self, mask: np.ndarray, row: int, col: int) -> None:
        """Write the dataset mask (h, w) uint8, 255 valid / 0 nodata, with its top-left at (row, col)."""
        h, w = mask.shape
        try:
            self._ds.write(mask, self.count + 1, window=Window(col, row - self.row_offset, w, h))
        except (RasterioIOError, OSError) as e:
            raise RasterWriteError(f"{self.dest}: write failed (disk full?): {error_text(e, 200)}") from None

    def flush(self) -> None:
        """Push written blocks and the file index to disk (resume checkpoints)."""
        # rasterio exposes no FlushCache; closing and reopening writes everything out
        self._ds.close()
        _fsync(self.staging)
        self._ds = rasterio.open(self.staging, "r+")

    def finalize(self) -> Path:
        """Close and convert the staging file to a COG in a temporary file beside ``dest`` (or, with
        ``cog=False``, flush the staging file, which is then published itself)."""
        self._ds.close()
        if not self.cog:  # publish() flushes it to disk before the rename
            self._final_tmp = self.staging
            return self.staging
        self._final_tmp = temp_path_for(self.dest)
        vrt = temp_path_for(self.dest, ".vrt") if self.has_mask or self.classes is not None else None
        try:
            source = self.staging
            if vrt is not None:
                _cog_source_vrt(self.staging, vrt, mask=self.has_mask, classes=self.classes)
                source = vrt
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                rasterio.shutil.copy(source, self._final_tmp, driver="COG",
                                     OVERVIEW_RESAMPLING=self.resampling.upper(), **COG_OPTIONS)
        except (RasterioIOError, OSError) as e:
            remove_quietly(self._final_tmp)
            raise RasterWriteError(f"{self.dest}: cannot finish output: {error_text(e, 200)}") from None
        finally:
            if vrt is not None:
                remove_quietly(vrt)
        return self._final_tmp

    def publish(self) -> Path:
        """Rename the finished COG over ``dest`` and delete the staging file."""
        commit(self._final_tmp, self.dest)
        remove_quietly(self.staging)
        return self.dest

    def commit(self) -> Path:
        """:meth:`finalize` then :meth:`publish` (one output)."""
        self.finalize()
        return self.publish()

    def abort(self, keep_staging: bool = False) -> None:
        """Close and remove temporary files (keep the staging file for resuming if asked)."""
        with contextlib.suppress(Exception):
            self._ds.close()
        if getattr(self, "_final_tmp", None) is not None and self._final_tmp != self.staging:
            remove_quietly(self._final_tmp)
        if not keep_staging:
            remove_quietly(self.staging)

    def __enter__(self) -> "GeoTiffSink":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cog_source_vrt(staging: Path, vrt: Path, *, mask: bool, classes: ClassSchema | None) -> None:
    """Write ``vrt``: ``staging`` as the COG driver should copy it.

    GDAL's own VRT copy carries the georeferencing, band descriptions and metadata. With
    ``mask`` the last ``VRTRasterBand`` is moved into a ``<MaskBand>`` element (GDAL's VRT
    format), so the COG driver writes it as the output's internal per-dataset mask. With
    ``classes`` band 1 gets ``<CategoryNames>`` and a ``<GDALRasterAttributeTable>``, which
    the COG driver copies (GeoTIFF keeps them in the ``.aux.xml`` beside the file).
    """
    import xml.etree.ElementTree as ET

    rasterio.shutil.copy(staging, vrt, driver="VRT")
    tree = ET.parse(vrt)
    root = tree.getroot()
    if mask:
        last = root.findall("VRTRasterBand")[-1]
        root.remove(last)
        last.attrib.pop("band", None)
        for tag in ("Description", "ColorInterp", "NoDataValue", "Metadata", "Scale", "Offset"):
            for e in last.findall(tag):
                last.remove(e)
        ET.SubElement(root, "MaskBand").append(last)
    if classes is not None:
        band = root.findall("VRTRasterBand")[0]
        for e in _class_band_xml(classes):
            band.append(e)
    tree.write(vrt)


#: raster attribute table columns: (name, GDAL field type 0=int 2=string, GDAL usage)
#: usages: 5 MinMax (the pixel value), 2 Name, 6/7/8/9 Red/Green/Blue/Alpha
RAT_COLUMNS = [("Value", 0, 5), ("Class_Name", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]


def _class_band_xml(classes: ClassSchema) -> list[Any]:
    """``<CategoryNames>`` and a thematic ``<GDALRasterAttributeTable>`` (GDAL's PAM/VRT format)."""
    import xml.etree.ElementTree as ET

    cats = ET.Element("CategoryNames")
    for name in classes.category_names():
        ET.SubElement(cats, "Category").text = name
    rat = ET.Element("GDALRasterAttributeTable", tableType="thematic")
    for i, (name, ftype, usage) in enumerate(RAT_COLUMNS):
        f = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(f, "Name").text = name
        ET.SubElement(f, "Type").text = str(ftype)
        ET.SubElement(f, "Usage").text = str(usage)
    for row, c in enumerate(sorted(classes.classes, key=lambda c: c.id)):
        r = ET.SubElement(rat, "Row", index=str(row))
        for v in (c.id, c.name, *c.colour):
            ET.SubElement(r, "F").text = str(v)
    return [cats, rat]


def is_temporary(path: str | os.PathLike[str]) -> bool:
    return TMP_MARKER in Path(path).name
