"""Streaming vectorization of class rasters (torch-free).

One job per module: :mod:`~geoseg.vector.source` reads row bands, :mod:`~geoseg.vector.seams`
polygonizes them and merges polygons across band seams, :mod:`~geoseg.vector.ragged` keeps
polygons as flat arrays, :mod:`~geoseg.vector.measure` measures them in metres,
:mod:`~geoseg.vector.post` fills holes and simplifies, :mod:`~geoseg.vector.core` ties it together.
"""

from __future__ import annotations

from geoseg.vector.core import COLUMNS, VectorizeReport, VectorProgress, vectorize

__all__ = ["COLUMNS", "VectorProgress", "VectorizeReport", "vectorize"]
