"""geoseg's QGIS plugin: a Processing provider that runs the geoseg command line.

Nothing here imports geoseg; the QGIS imports happen in :func:`classFactory`, so building the
plugin zip needs no QGIS.
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import GeosegPlugin

    return GeosegPlugin(iface)
