"""Render layers with the styles QGIS finds on its own, headless, to a PNG (run by /usr/bin/python3).

    python3 tests/qgis_render.py OUT.png WIDTH HEIGHT LAYER [LAYER...]

The map extent and CRS are the first layer's. Prints one JSON line: each layer's renderer type
and its classes' (value, label, colour).
"""

import json
import os
import sys

from qgis.core import (QgsApplication, QgsMapRendererCustomPainterJob, QgsMapSettings, QgsRasterLayer,
                       QgsVectorLayer)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QImage, QPainter

out, width, height, *paths = sys.argv[1:]
app = QgsApplication([], False)
app.initQgis()
layers, info = [], []
for p in paths:
    lyr = QgsRasterLayer(p, p) if p.endswith(".tif") else QgsVectorLayer(p, p, "ogr")
    assert lyr.isValid(), p
    r = lyr.renderer()
    if r.type() == "paletted":
        classes = [(int(c.value), c.label, c.color.name()) for c in r.classes()]
    elif r.type() == "categorizedSymbol":
        classes = [(int(c.value()), c.label(), c.symbol().color().name()) for c in r.categories()]
    else:
        classes = []
    transparent = []
    if isinstance(lyr, QgsRasterLayer) and r.rasterTransparency() is not None:
        transparent = [[e.min, e.max, e.percentTransparent]
                       for e in r.rasterTransparency().transparentSingleValuePixelList()]
    e = lyr.extent()
    info.append({"path": p, "renderer": r.type(), "classes": classes, "transparent": transparent,
                 "extent": [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()]})
    layers.append(lyr)
settings = QgsMapSettings()
settings.setLayers(layers[::-1])  # the last layer is drawn on top
settings.setDestinationCrs(layers[0].crs())
settings.setExtent(layers[0].extent())
settings.setOutputSize(QSize(int(width), int(height)))
settings.setBackgroundColor(QColor(255, 255, 255))
image = QImage(QSize(int(width), int(height)), QImage.Format_ARGB32_Premultiplied)
image.fill(QColor(255, 255, 255))
painter = QPainter(image)
job = QgsMapRendererCustomPainterJob(settings, painter)
job.start()
job.waitForFinished()
painter.end()
assert image.save(out, "PNG"), out
print(json.dumps(info))
sys.stdout.flush()
os._exit(0)  # QGIS 3.22 can crash tearing down PyQGIS objects at exit; the PNG is written
