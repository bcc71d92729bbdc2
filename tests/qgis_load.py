"""Run a geoseg algorithm as Processing's dialog does and load its outputs into a project (run by
/usr/bin/python3 with GEOSEG_COMMAND set).

    python3 tests/qgis_load.py PLUGINS_DIR IMAGE

Prints one JSON line: each loaded layer's name, renderer type and class labels.
"""

import json
import os
import sys

from qgis.core import (QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProcessingOutputLayerDefinition,
                       QgsProject)

plugins_dir, image = sys.argv[1:]
app = QgsApplication([], False)
app.initQgis()
sys.path.insert(0, "/usr/share/qgis/python/plugins")
import qgis.utils  # noqa: E402
from processing.core.Processing import Processing  # noqa: E402
from processing.gui.Postprocessing import handleAlgorithmResults  # noqa: E402

Processing.initialize()
sys.path.insert(0, plugins_dir)
assert qgis.utils.loadPlugin("geoseg_qgis")
assert qgis.utils.startPlugin("geoseg_qgis")


class Feedback(QgsProcessingFeedback):
    def reportError(self, error, fatalError=False):  # noqa: N802,N803
        print("error:", error, file=sys.stderr)


context = QgsProcessingContext()
context.setProject(QgsProject.instance())
feedback = Feedback()
alg = QgsApplication.processingRegistry().createAlgorithmById("geoseg:segment")
params = {"INPUT": image,
          "OUTPUT": QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", QgsProject.instance()),
          "POLYGONS": QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", QgsProject.instance())}
results, ok = alg.run(params, context, feedback)
assert ok, "the algorithm failed"
handleAlgorithmResults(alg, context, feedback, False, params)
out = []
for lyr in QgsProject.instance().mapLayers().values():
    r = lyr.renderer()
    labels = ([c.label for c in r.classes()] if r.type() == "paletted" else
              [c.label() for c in r.categories()] if r.type() == "categorizedSymbol" else [])
    out.append([lyr.name(), r.type(), labels])
print(json.dumps(sorted(out)))
sys.stdout.flush()
os._exit(0)  # QGIS 3.22 can crash tearing down PyQGIS objects at exit
