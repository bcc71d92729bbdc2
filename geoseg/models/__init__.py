"""Models and checkpoints.

Importing this package is torch-free: :mod:`.meta` (:class:`ModelMeta`) and :mod:`.demo` (the demo
model shipped with geoseg) are plain Python, so the pipeline and the CLI use them without torch; the
torch parts (:func:`build_model`, the checkpoint functions) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from geoseg.architectures import ARCHITECTURES, arch_defaults
from geoseg.models.meta import ModelMeta

if TYPE_CHECKING:
    from geoseg.models.checkpoint import load_checkpoint, read_meta, save_checkpoint
    from geoseg.models.registry import build_model, size_multiple

__all__ = ["ARCHITECTURES", "ModelMeta", "arch_defaults", "build_model", "load_checkpoint", "read_meta",
           "save_checkpoint", "size_multiple"]

#: the names that need torch, and their modules
_LAZY = {"load_checkpoint": "checkpoint", "read_meta": "checkpoint", "save_checkpoint": "checkpoint",
         "build_model": "registry", "size_multiple": "registry"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"geoseg.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'geoseg.models' has no attribute {name!r}")
