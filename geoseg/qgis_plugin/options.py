"""Choices the plugin offers, spelled as geoseg's command line spells them (QGIS-free).

The plugin cannot import geoseg (QGIS's Python lacks torch), so these lists are copies;
``tests/test_qgis_plugin_static.py`` checks them against geoseg's own registries.
"""

BLEND = ["hann", "triangular", "uniform", "crop"]
TTA = ["none", "flips", "d4"]
PROBABILITY_DTYPE = ["uint8", "float32"]
ARCH = ["unet", "smp-unet", "smp-unetplusplus", "smp-manet", "smp-linknet", "smp-fpn", "smp-pspnet", "smp-deeplabv3",
        "smp-deeplabv3plus", "smp-upernet", "smp-segformer", "tempcnn"]
#: the Train algorithm's choices: auto (geoseg picks from the labels and bands, the default) first
TRAIN_ARCH = ["auto", *ARCH]

#: polygon formats geoseg writes, by extension (the first is the default)
VECTOR_EXTENSIONS = ["gpkg", "shp", "geojson", "parquet", "fgb"]
