"""Model execution on tiles. :class:`TorchPredictor` imports torch; :class:`OnnxPredictor` runs
onnxruntime. The names load on first use, so ``geoseg.predict.onnx`` stays torch-free."""

from __future__ import annotations

from typing import Any

__all__ = ["OnnxPredictor", "TorchPredictor", "load_predictor", "resolve_device"]

_WHERE = {"TorchPredictor": "engine", "resolve_device": "engine", "load_predictor": "load", "OnnxPredictor": "onnx"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"geoseg.predict.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'geoseg.predict' has no attribute {name!r}")
