"""Pick the predictor for model files: geoseg checkpoints run with torch, ``.onnx`` files with onnxruntime."""

from __future__ import annotations

import os
from typing import Any, Sequence

from geoseg.errors import UsageError
from geoseg.predict.onnx import OnnxPredictor, is_onnx


def load_predictor(paths: Sequence[str | os.PathLike[str]], *, device: str = "auto", tta: str = "none",
                   precision: str = "auto", compile: bool = False, threads: int | None = None) -> Any:
    """A predictor for one checkpoint, several (an ensemble), or one ONNX model.

    ``threads``: torch's CPU threads for checkpoints (default: every core; a Dask worker gives its own).

    ONNX models run on the CPU as exported: ``tta``, ``precision``, ``compile`` and a GPU
    ``device`` apply to checkpoints only and are refused for them.
    """
    onnx = [p for p in paths if is_onnx(p)]
    if onnx:
        if len(paths) > 1:
            raise UsageError("an ONNX model cannot be part of an ensemble; pass it alone, or the .pt checkpoints")
        given = [name for name, used in (("`tta`", tta != "none"), ("`precision`", precision != "auto"),
                                         ("`compile`", compile), ("`device`", device not in ("auto", "cpu")))
                 if used]
        if given:
            raise UsageError(f"{', '.join(given)} apply to .pt checkpoints; an ONNX model runs on the CPU as "
                             "exported")
        return OnnxPredictor(onnx[0])
    from geoseg.predict.engine import TorchPredictor

    return TorchPredictor.from_checkpoint(list(paths), device=device, tta=tta, precision=precision, compile=compile,
                                          threads=threads)
