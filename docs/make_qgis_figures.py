"""Draw docs/qgis.md's figures in a headless QGIS (run with the system Python that has PyQGIS).

    geoseg infer sample_data/field.tif -o /tmp/qgisfig --probabilities
    geoseg qgis install --profiles-path /tmp/qgisprof/profiles
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 docs/make_qgis_figures.py /tmp/qgisfig \\
        /tmp/qgisprof/profiles/default/python/plugins

Writes docs/figures/qgis_dialog.png (the Segment raster dialog), qgis_classes.png (the class raster
with the style QGIS found beside it, and its legend) and qgis_polygons.png (the polygons, styled
from their GeoPackage, over the image).
"""

import os
import sys
from pathlib import Path

from qgis.core import (QgsApplication, QgsLayoutExporter, QgsLayoutItemLegend, QgsLayoutItemMap,
                       QgsLayoutItemLabel, QgsLayoutPoint, QgsLayoutSize, QgsPrintLayout, QgsProject,
                       QgsRasterLayer, QgsUnitTypes, QgsVectorLayer)
from qgis.PyQt.QtGui import QFont

ROOT = Path(__file__).resolve().parents[1]
FIG = ROOT / "docs" / "figures"
out_dir, plugins = Path(sys.argv[1]), sys.argv[2]

app = QgsApplication([], True)
app.initQgis()
project = QgsProject.instance()
image = QgsRasterLayer(str(ROOT / "sample_data" / "field.tif"), "field")
classes = QgsRasterLayer(str(out_dir / "field_classes.tif"), "field_classes")
polygons = QgsVectorLayer(str(out_dir / "field_polygons.gpkg"), "field_polygons", "ogr")
for lyr in (image, classes, polygons):
    assert lyr.isValid(), lyr.source()
    project.addMapLayer(lyr)


def layout(name, layers, legend_layers, title):
    lay = QgsPrintLayout(project)
    lay.initializeDefaults()
    page = lay.pageCollection().page(0)
    page.setPageSize(QgsLayoutSize(190, 120, QgsUnitTypes.LayoutMillimeters))
    m = QgsLayoutItemMap(lay)
    m.attemptMove(QgsLayoutPoint(5, 12, QgsUnitTypes.LayoutMillimeters))
    m.attemptResize(QgsLayoutSize(110, 103, QgsUnitTypes.LayoutMillimeters))
    m.setLayers(layers)
    m.setExtent(classes.extent())
    lay.addLayoutItem(m)
    t = QgsLayoutItemLabel(lay)
    t.setText(title)
    t.setFont(QFont("DejaVu Sans", 12))
    t.attemptMove(QgsLayoutPoint(5, 3, QgsUnitTypes.LayoutMillimeters))
    t.attemptResize(QgsLayoutSize(180, 8, QgsUnitTypes.LayoutMillimeters))
    lay.addLayoutItem(t)
    leg = QgsLayoutItemLegend(lay)
    leg.setTitle("Legend")
    leg.setAutoUpdateModel(False)
    root = leg.model().rootGroup()
    root.removeAllChildren()
    for lyr in legend_layers:
        root.addLayer(lyr)
    leg.attemptMove(QgsLayoutPoint(120, 12, QgsUnitTypes.LayoutMillimeters))
    lay.addLayoutItem(leg)
    settings = QgsLayoutExporter.ImageExportSettings()
    settings.dpi = 110
    assert QgsLayoutExporter(lay).exportToImage(str(FIG / name), settings) == QgsLayoutExporter.Success
    print(FIG / name)


layout("qgis_classes.png", [classes], [classes], "field_classes.tif: style from field_classes.qml")
polygons.setOpacity(0.75)
layout("qgis_polygons.png", [polygons, image], [polygons],
       "field_polygons.gpkg (style from its layer_styles) over field.tif")

# the Processing dialog of geoseg:segment
sys.path.insert(0, "/usr/share/qgis/python/plugins")
import qgis.utils  # noqa: E402
from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()
sys.path.insert(0, plugins)
assert qgis.utils.loadPlugin("geoseg_qgis") and qgis.utils.startPlugin("geoseg_qgis")
from processing.gui.AlgorithmDialog import AlgorithmDialog  # noqa: E402

dialog = AlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("geoseg:segment"), False, None)
dialog.resize(900, 980)
dialog.show()
for _ in range(20):
    app.processEvents()
dialog.grab().save(str(FIG / "qgis_dialog.png"))
print(FIG / "qgis_dialog.png")
sys.stdout.flush()
os._exit(0)  # QGIS 3.22 can crash tearing down PyQGIS objects at exit
