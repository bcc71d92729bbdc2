"""Pick the predictor for model files: geoseg checkpoints run with torch, ``.onnx`` files with onnxruntime."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

from geoseg.errors import UsageError
from geoseg.models.files import model_file
from geoseg.predict.onnx import OnnxPredictor, is_onnx


def load_predictor(paths: Sequence[str | os.PathLike[str]], *, device: str = "auto", tta: str = "none",
                   precision: str = "auto", compile: bool = False, threads: int | None = None) -> Any:
    """A predictor for one checkpoint, several (an ensemble), or one ONNX model.

    ``threads``: CPU threads for the model, torch's or onnxruntime's (default: every core; a Dask worker gives
    its own).

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
            raise UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to .pt checkpoints; an ONNX "
                             "model runs on the CPU as exported")
        return OnnxPredictor(onnx[0], threads=threads)
    from geoseg.predict.engine import TorchPredictor

    return TorchPredictor.from_checkpoint(list(paths), device=device, tta=tta, precision=precision, compile=compile,
                                          threads=threads)


_MODELS: dict[tuple[Any, ...], Any] = {}
_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}
_HASHES: dict[tuple[str, int, int], str] = {}
_GUARD = threading.Lock()
#: how many times this process loaded a model (the tests check that a Dask worker loads it once)
LOADS = 0


def content_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a checkpoint's content (:func:`geoseg.resume.file_fingerprint`), cached by size and mtime."""
    from geoseg.resume import file_fingerprint

    st = os.stat(model_file(path))
    k = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    h = _HASHES.get(k)
    if h is None:
        fp = file_fingerprint(path)
        h = _HASHES[k] = fp.get("sha256") or fp["sha256_sampled"]
    return h


def shared_predictor(paths: Sequence[str | os.PathLike[str]], **kwargs: Any) -> tuple[Any, threading.Lock]:
    """This process's predictor for ``paths`` and options (:func:`load_predictor`'s), loaded on first use
    and kept, keyed by the checkpoints' content hashes; with its lock (one run at a time uses a model).

    A Dask worker's tasks (:func:`geoseg.distributed.tasks.cached_model`) and ``geoseg infer``'s inputs in
    one process pay the load, and the CPU predictor's preparation (:func:`geoseg.predict.engine.for_cpu`),
    once.
    """
    global LOADS
    key = (tuple(content_hash(p) for p in paths), tuple(sorted(kwargs.items())))
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = load_predictor(list(paths), **kwargs)
            LOADS += 1
    return model, lock
