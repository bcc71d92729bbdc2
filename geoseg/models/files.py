"""Where a model is read from: a local file, checked before anything opens it. Torch-free.

Checkpoints (``.pt``) and ONNX models are read from local files only: a URL is refused with
what to do instead, as are a missing path and a directory, in one line each.
"""

from __future__ import annotations

import os
from pathlib import Path

from geoseg.errors import CheckpointError, UsageError
from geoseg.io.paths import as_typed, is_remote_path


def model_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`~pathlib.Path` of an existing file, else :class:`CheckpointError`."""
    p = Path(path)
    if p.is_file():
        return p
    if is_remote_path(path):
        raise CheckpointError(f"{as_typed(path)}: models are read from local files; download it first (a published "
                              "checkpoint: then 'geoseg model import' it if it is not a geoseg one)")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, expected a model file (.pt checkpoint or .onnx)")
    if not p.exists():
        raise CheckpointError(f"{p}: model file not found; create one with 'geoseg model init' or 'geoseg train'")
    raise CheckpointError(f"{p}: not a regular file, expected a model file (.pt checkpoint or .onnx)")


def checkpoint_destination(path: str | os.PathLike[str]) -> Path:
    """``path`` for a geoseg checkpoint to be written: not named ``.onnx`` (``geoseg infer -m`` would run such a
    file with onnxruntime, and fail), else :class:`UsageError`."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        raise UsageError(f"{p}: a geoseg checkpoint is a torch file; name it .pt (an ONNX model is made from a "
                         "checkpoint with 'geoseg model export')")
    return p
