"""A predictor that costs nothing: fixed probabilities on a device (benchmarks of the pipeline itself)."""

from __future__ import annotations

import numpy as np
import torch

from geoseg.models.meta import ModelMeta
from geoseg.predict.engine import resolve_device


class NullPredictor:
    """Returns the same class probabilities for every pixel, as a broadcast view: no compute, no memory.

    With it, ``predict_raster`` measures the pipeline's own cost (reading, normalization,
    blending, classes, writing) on any device (``benchmarks/bench_infer.py --null``).
    """

    precision = "none"
    fixed_batch = False

    def __init__(self, meta: ModelMeta, device: str = "cpu") -> None:
        self.meta = meta
        self.device = resolve_device(device)
        k = meta.num_classes
        p = torch.arange(1, k + 1, dtype=torch.float32, device=self.device)
        self._p = (p / p.sum()).view(1, k, 1, 1)

    def forward_tensor(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return self._p.expand(n, self.meta.num_classes, h, w)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.forward_tensor(torch.from_numpy(batch)).cpu().numpy().copy()
