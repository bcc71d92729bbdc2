"""Blending of overlapping tile predictions. Pure numpy, no I/O, no torch.

Each tile's class probabilities are multiplied by a weight window and summed into
an accumulator together with the weights; the blended probability of a pixel is
``sum(w * p) / sum(w)``. Windows never reach zero (floor :data:`EPS`), so every
covered pixel has a positive weight sum, raster corners included. On a side where
a tile touches the raster border its window stays at its peak up to the border:
no other tile covers those pixels, and a flat weight keeps precision there.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: Smallest weight a window takes, so the weight sum is never zero.
EPS = 1e-3


def _hann(n: int, overlap: int) -> np.ndarray:
    k = (np.arange(n) + 0.5) / n
    return 0.5 - 0.5 * np.cos(2 * np.pi * k)


def _triangular(n: int, overlap: int) -> np.ndarray:
    k = (np.arange(n) + 0.5) / n
    return 1.0 - np.abs(2.0 * k - 1.0)


def _uniform(n: int, overlap: int) -> np.ndarray:
    return np.ones(n)


def _crop(n: int, overlap: int) -> np.ndarray:
    w = np.zeros(n)
    m = min(overlap // 2, (n - 1) // 2)
    w[m:n - m] = 1.0
    return w


#: Registry of 1-D window functions ``f(n, overlap) -> weights``; the CLI takes its choices from here.
BLEND_WINDOWS: dict[str, Callable[[int, int], np.ndarray]] = {
    "hann": _hann,
    "triangular": _triangular,
    "uniform": _uniform,
    "crop": _crop,
}

DEFAULT_BLEND = "hann"


def window_1d(kind: str, n: int, overlap: int, at_start: bool = False, at_end: bool = False) -> np.ndarray:
    """1-D weights of length ``n``, max 1, floor :data:`EPS`, flat up to a raster border side.

    Args:
        kind: a key of :data:`BLEND_WINDOWS`.
        n: tile side in pixels.
        overlap: nominal overlap in pixels (used by ``crop``).
        at_start: the tile's first pixel is on the raster border.
        at_end: the tile's last pixel is on the raster border.
    """
    if kind not in BLEND_WINDOWS:
        raise ValueError(f"unknown blend window {kind!r}; choose one of {', '.join(BLEND_WINDOWS)}")
    w = np.asarray(BLEND_WINDOWS[kind](n, overlap), dtype=np.float64)
    w = w / w.max()
    if at_start:
        w[: int(np.argmax(w))] = 1.0
    if at_end:
        w[n - 1 - int(np.argmax(w[::-1])):] = 1.0
    out: np.ndarray = np.maximum(w, EPS)
    return out


def tile_weights(kind: str, height: int, width: int, overlap: int, *, top: bool, bottom: bool,
                 left: bool, right: bool) -> np.ndarray:
    """2-D float32 weights: outer product of the row and column windows."""
    wr = window_1d(kind, height, overlap, top, bottom)
    wc = window_1d(kind, width, overlap, left, right)
    return np.outer(wr, wc).astype(np.float32)


class WeightCache:
    """Memoises :func:`tile_weights` for the few border combinations a grid has."""

    def __init__(self, kind: str, overlap: int) -> None:
        self.kind = kind
        self.overlap = overlap
        self._cache: dict[tuple[int, int, bool, bool, bool, bool], np.ndarray] = {}

    def get(self, height: int, width: int, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
        key = (height, width, top, bottom, left, right)
        w = self._cache.get(key)
        if w is None:
            w = tile_weights(self.kind, height, width, self.overlap, top=top, bottom=bottom, left=left, right=right)
            self._cache[key] = w
        return w


class RowBandAccumulator:
    """Weighted sums of probabilities for a band of rows that tiles still touch.

    Holds ``(classes, height, width)`` sums and ``(height, width)`` weights for
    raster rows ``[base, base + height)`` and columns ``[col0, col0 + width)``, in float64
    so that even heavily overlapping tiles blend to within 1e-6 of the exact value.
    Memory: ``(8 * (classes + 1) + 1) * height * width`` bytes, independent of raster height.
    """

    def __init__(self, num_classes: int, height: int, width: int, col0: int = 0) -> None:
        self.num_classes = num_classes
        self.height = height
        self.width = width
        self.col0 = col0
        self.base = 0
        self.sums = np.zeros((num_classes, height, width), dtype=np.float64)
        self.weights = np.zeros((height, width), dtype=np.float64)
        self.valid = np.zeros((height, width), dtype=bool)

    def add(self, probs: np.ndarray, weights: np.ndarray, row: int, col: int,
            valid: np.ndarray | None = None) -> None:
        """Add ``probs`` (classes, h, w) with ``weights`` (h, w) whose top-left is at raster (row, col).

        ``valid`` (h, w) marks input pixels that hold data (default: all). Parts outside
        this accumulator's columns are ignored; rows must lie in the band.
        """
        h, w = weights.shape
        r0 = row - self.base
        if r0 < 0 or r0 + h > self.height:
            raise ValueError(f"rows {row}..{row + h} outside the band {self.base}..{self.base + self.height}")
        c0 = col - self.col0
        lo = max(0, -c0)
        hi = min(w, self.width - c0)
        if hi <= lo:
            return
        dst = (slice(r0, r0 + h), slice(c0 + lo, c0 + hi))
        wt = weights[:, lo:hi]
        self.sums[(slice(None), *dst)] += probs[:, :, lo:hi] * wt
        self.weights[dst] += wt
        self.valid[dst] |= True if valid is None else valid[:, lo:hi]

    def pop_rows(self, upto: int, probabilities: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Finish rows ``[base, upto)``: return ``(classes, probs, valid)`` and slide the band down.

        ``classes`` (n, width) is the index of the largest blended probability (taken on the
        weighted sums: dividing by a pixel's positive weight sum keeps the order, so no
        division is needed for it); ``probs`` is (classes, n, width) float32 normalised by
        the weight sums (0 where uncovered), or an empty array unless ``probabilities``;
        ``valid`` is a bool (n, width) array of pixels covered by a tile (weight > 0) and
        holding input data.
        """
        n = upto - self.base
        if n < 0 or n > self.height:
            raise ValueError(f"cannot pop to row {upto} from band at {self.base}")
        wsum = self.weights[:n]
        covered = wsum > 0
        classes = np.argmax(self.sums[:, :n], axis=0)
        probs = ((self.sums[:, :n] / np.where(covered, wsum, 1.0)).astype(np.float32) if probabilities
                 else np.empty((self.num_classes, 0, 0), dtype=np.float32))
        valid = covered & self.valid[:n]
        # slide
        if n:
            self.sums[:, : self.height - n] = self.sums[:, n:].copy()
            self.sums[:, self.height - n:] = 0
            self.weights[: self.height - n] = self.weights[n:].copy()
            self.weights[self.height - n:] = 0
            self.valid[: self.height - n] = self.valid[n:].copy()
            self.valid[self.height - n:] = False
        self.base = upto
        return classes, probs, valid
