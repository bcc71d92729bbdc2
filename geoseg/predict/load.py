"""Pick the predictor for model files: geoseg checkpoints run with torch, ``.onnx`` files with onnxruntime."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

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


def cached_loader() -> Callable[..., Any]:
    """A ``load_model`` for :func:`geoseg.pipeline.predict_raster` that loads each model (paths, their size
    and modification time, and the options) once and hands the same predictor to every later run: ``geoseg
    infer`` on many inputs in one process pays the load (and the CPU predictor's preparation,
    :func:`geoseg.predict.engine.for_cpu`) once, as each Dask worker does."""
    models: dict[tuple[Any, ...], Any] = {}

    def load(paths: Sequence[str | os.PathLike[str]], **kwargs: Any) -> Any:
        files: list[tuple[str, int | None, int | None]] = []
        for p in paths:
            try:
                st = os.stat(p)
                files.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
            except OSError:
                files.append((str(p), None, None))  # the loader says what is wrong with it
        key = (tuple(files), tuple(sorted(kwargs.items())))
        if key not in models:
            models[key] = load_predictor(paths, **kwargs)
        return models[key]

    return load
