"""QGIS layer styles (QML) for class rasters and class polygons, from the class schema. Torch-free.

QGIS loads a style on its own when it finds one: a ``.qml`` with the layer file's name beside a
raster, Shapefile, GeoJSON, FlatGeobuf or GeoParquet file, and the default row of the
``layer_styles`` table inside a GeoPackage (written by :mod:`geoseg.export`). The styles use only
elements that QGIS 3.22 writes and every later 3.x reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable
from xml.sax.saxutils import quoteattr

from geoseg.classes import ClassInfo, ClassSchema

#: the QGIS version written in the styles (the oldest one they are made for)
QGIS_VERSION = "3.22.0"

#: the polygon attribute the vector style is categorized on
CLASS_FIELD = "class_id"

#: the GeoPackage table where QGIS keeps layer styles
STYLE_TABLE = "layer_styles"

#: polygon outline colour and width (mm)
OUTLINE = ("35,35,35,255", "0.26")


def qml_path(path: str | os.PathLike[str]) -> Path:
    """Where QGIS looks for the default style of the layer file ``path``: same name, ``.qml``."""
    return Path(path).with_suffix(".qml")


def data_layer(path: str | os.PathLike[str]) -> str | None:
    """The layer to read from the vector file ``path``: the first one that is not the
    :data:`STYLE_TABLE` (None: the file has no style table, so its default layer is right)."""
    import pyogrio

    try:
        names = [str(n) for n, _ in pyogrio.list_layers(path)]
    except Exception:  # noqa: BLE001 - unreadable files are reported by the read that follows
        return None
    if STYLE_TABLE not in names:
        return None
    return next((n for n in names if n != STYLE_TABLE), None)


def _rgba(c: ClassInfo) -> str:
    return ",".join(str(v) for v in (*c.colour, 255))


def _hex(c: ClassInfo) -> str:
    return "#" + "".join(f"{v:02x}" for v in c.colour)


def raster_qml(schema: ClassSchema) -> str:
    """A paletted renderer of band 1: one entry per class (its colour, its name as the label); the
    nodata value is not in the palette and is listed as fully transparent."""
    entries = "\n".join(
        f'        <paletteEntry value="{c.id}" color="{_hex(c)}" alpha="255" label={quoteattr(c.name)}/>'
        for c in sorted(schema.classes, key=lambda c: c.id))
    n = schema.nodata
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="{QGIS_VERSION}" styleCategories="AllStyleCategories" hasScaleBasedVisibilityFlag="0">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency>
        <singleValuePixelList>
          <pixelListEntry min="{n}" max="{n}" percentTransparent="100"/>
        </singleValuePixelList>
      </rasterTransparency>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
      <colorramp type="randomcolors" name="[source]"/>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" colorizeStrength="100"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def vector_qml(classes: Iterable[ClassInfo], field: str = CLASS_FIELD) -> str:
    """A categorized renderer on ``field`` (the class id): one solid fill per class in its colour,
    labelled with its name; polygons of other ids are drawn by no category (not at all)."""
    classes = sorted(classes, key=lambda c: c.id)
    cats = "\n".join(
        f'      <category render="true" symbol="{i}" value="{c.id}" label={quoteattr(c.name)}/>'
        for i, c in enumerate(classes))
    symbols = "\n".join(f"""      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="border_width_map_unit_scale" v="3x:0,0,0,0,0,0"/>
          <prop k="color" v="{_rgba(c)}"/>
          <prop k="joinstyle" v="bevel"/>
          <prop k="offset" v="0,0"/>
          <prop k="offset_map_unit_scale" v="3x:0,0,0,0,0,0"/>
          <prop k="offset_unit" v="MM"/>
          <prop k="outline_color" v="{OUTLINE[0]}"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="{OUTLINE[1]}"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
        </layer>
      </symbol>""" for i, c in enumerate(classes))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="{QGIS_VERSION}" styleCategories="Symbology">
  <renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} forceraster="0" symbollevels="0" enableorderby="0" referencescale="-1">
    <categories>
{cats}
    </categories>
    <symbols>
{symbols}
    </symbols>
    <rotation/>
    <sizescale/>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def write_qml(layer_path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> Path | None:
    """Write ``text`` atomically as the ``.qml`` beside ``layer_path``; returns its path.

    A ``.qml`` already there with the same text is left as it is (several formats of one layer
    share it); a different one is kept unless ``overwrite``, with a :class:`StyleWarning`, and
    None is returned: a style never fails the run whose output it describes.
    """
    import warnings

    from geoseg.errors import StyleWarning
    from geoseg.io.atomic import atomic_output

    dest = qml_path(layer_path)
    if dest.exists() and not overwrite:
        try:
            same = dest.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            warnings.warn(f"{dest}: a different style file exists; kept it (pass `overwrite=True` to replace it)",
                          StyleWarning, stacklevel=2)
            return None
        return dest
    with atomic_output(dest, checked=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return dest
