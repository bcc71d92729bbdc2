"""``geoseg.vectorize``: the streaming vectorizer (implementation in :mod:`geoseg.vector`).

``geoseg.vectorize(...)`` and ``from geoseg.vectorize import vectorize`` both work: importing
this submodule makes ``geoseg.vectorize`` the module, so the module itself is callable and
forwards to :func:`geoseg.vector.vectorize`. Torch-free.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from geoseg.vector import COLUMNS, VectorizeReport, VectorProgress, vectorize

__all__ = ["COLUMNS", "VectorProgress", "VectorizeReport", "vectorize"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return vectorize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
