"""Model execution on tiles (imports torch)."""

from geoseg.predict.engine import TorchPredictor, resolve_device

__all__ = ["TorchPredictor", "resolve_device"]
