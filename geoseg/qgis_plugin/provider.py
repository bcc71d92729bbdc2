"""The geoseg Processing provider: its algorithms and its one setting, the geoseg command."""

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS
from .options import VECTOR_EXTENSIONS

#: the provider setting: the geoseg executable (or a Python interpreter) of the environment to run
COMMAND_SETTING = "GEOSEG_COMMAND"


def _qgis_reads_parquet():
    """Whether QGIS's own GDAL has the (Geo)Parquet driver."""
    try:
        from osgeo import ogr
    except ImportError:
        return False
    return ogr.GetDriverByName("Parquet") is not None


def command_setting():
    """The configured geoseg command ('' when unset)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:  # Processing's Python plugin not loaded
        return ""
    return ProcessingConfig.getSetting(COMMAND_SETTING) or ""


class GeosegProvider(QgsProcessingProvider):
    def load(self):
        from processing.core.ProcessingConfig import ProcessingConfig, Setting

        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), COMMAND_SETTING,
            "geoseg executable of a Python environment with geoseg installed (or its python); "
            "empty: the GEOSEG_COMMAND environment variable, else geoseg on the PATH",
            "", valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.removeSetting(COMMAND_SETTING)

    def loadAlgorithms(self):  # noqa: N802 (QGIS's names below too)
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())

    def id(self):
        return "geoseg"

    def name(self):
        return "geoseg"

    def longName(self):
        return "geoseg: segmentation of large rasters"

    def icon(self):
        return QIcon(os.path.join(os.path.dirname(__file__), "icon.svg"))

    def supportedOutputRasterLayerExtensions(self):
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):
        # GeoParquet only where this QGIS can open it (GDAL >= 3.5 built with Arrow; Debian's QGIS 3.22 with
        # GDAL 3.6 is not): geoseg would write a file the layer could not be loaded from
        return [e for e in VECTOR_EXTENSIONS if e != "parquet" or _qgis_reads_parquet()]

    def defaultVectorFileExtension(self, hasGeometry=True):
        return VECTOR_EXTENSIONS[0]

    def defaultRasterFileExtension(self):
        return "tif"
