"""Streaming inference: :func:`predict_raster` and its stages (see :mod:`geoseg.pipeline.run`). Torch-free."""

from geoseg.pipeline.budget import buffer_bytes, strip_width_for_budget
from geoseg.pipeline.run import PredictionReport, Predictor, Progress, default_output_paths, predict_raster

__all__ = ["PredictionReport", "Predictor", "Progress", "buffer_bytes", "default_output_paths", "predict_raster",
           "strip_width_for_budget"]
