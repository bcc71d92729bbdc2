"""Model execution on tiles (imports torch)."""

from geoseg.predict.engine import TorchPredictor, resolve_device
from geoseg.predict.load import load_predictor
from geoseg.predict.onnx import OnnxPredictor

__all__ = ["OnnxPredictor", "TorchPredictor", "load_predictor", "resolve_device"]
