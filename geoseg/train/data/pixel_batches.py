"""An epoch's batches drawn from a :class:`~geoseg.train.data.pixels.PixelTable` (imports torch).

Training: ``n_batches`` batches of ``batch`` pixels; each pixel's class is drawn with probability
proportional to ``counts ** balance`` (0.5: the square root of the class's pixels, which corrects
imbalance without letting a class of a few pixels dominate), then a pixel of that class uniformly.
Validation (``balance`` None): every pixel once, in order. Pixels go through the
:class:`~geoseg.train.data.batches.BatchMaker` as 1 x 1 chips, so normalization, jitter and band
dropout are the chips' own. Draws depend on (seed, epoch) only: a resumed run repeats them.

With a neighbourhood ``context`` k (the table holds each pixel's mean of its k x k pixels) a pixel goes
as a k x k chip labelled at its centre: the centre holds the pixel's values and the other k² - 1 pixels
the value that makes the chip's mean the stored neighbourhood mean. The model's box filter then gives the
centre exactly its neighbourhood mean, and the chips' normalization, jitter and band dropout (affine per
band and chip) keep that so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from geoseg.train.data.batches import BatchMaker
from geoseg.train.data.pixels import PixelTable, read_pixel_table

if TYPE_CHECKING:
    from geoseg.train.config import TrainConfig
    from geoseg.train.data.grid import ImageGrid
    from geoseg.train.data.plan import LabelPlan


class PixelBatches:
    """Iterable of ``{"image": (B, bands, 1, 1), "mask": (B, 1, 1)}`` batches; ``len`` is batches per epoch."""

    def __init__(self, table: PixelTable, maker: BatchMaker, batch: int, n_batches: int | None = None, *,
                 balance: float | None = 0.5, seed: int = 0, rank: int = 0) -> None:
        self.table, self.maker, self.batch, self.seed, self.rank = table, maker, batch, seed, rank
        self.balance = balance
        self.n_batches = n_batches if n_batches is not None else math.ceil(len(table) / batch)
        self._by_class = [np.flatnonzero(table.y == c) for c in range(len(table.counts))]
        if balance is not None:
            present = np.array([len(i) > 0 for i in self._by_class])
            w = np.where(present, np.maximum(table.counts, 1).astype(np.float64) ** balance, 0.0)
            self.p = w / w.sum()

    def __len__(self) -> int:
        return self.n_batches if len(self.table) else 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if not len(self.table):
            return
        if self.balance is None:
            for i in range(0, len(self.table), self.batch):
                yield self._make(np.arange(i, min(i + self.batch, len(self.table))))
            return
        # each DDP process draws its own batches
        rng = np.random.default_rng([self.seed, self.maker.epoch, 13, self.rank])
        for _ in range(self.n_batches):
            cls = rng.choice(len(self.p), self.batch, p=self.p)
            idx = np.empty(self.batch, dtype=np.int64)
            for c in np.unique(cls):
                at = cls == c
                idx[at] = self._by_class[c][rng.integers(len(self._by_class[c]), size=int(at.sum()))]
            yield self._make(idx)

    def _make(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        k = self.table.context
        if k == 1:
            x = torch.from_numpy(self.table.x[idx])[:, :, None, None]
            y = torch.from_numpy(self.table.y[idx])[:, None, None]
            return self.maker.process(x, y)
        return self.maker.process(*context_chips(self.table.x[idx], self.table.y[idx], k))


def context_chips(rows: np.ndarray, labels: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, bands, k, k)`` chips and ``(B, k, k)`` labels for table rows of (values, neighbourhood mean):
    the values at the centre, elsewhere ``(k² mean - values) / (k² - 1)``, so that the chip's mean is the
    neighbourhood mean; the label at the centre only."""
    from geoseg.train.config import IGNORE_INDEX

    bands = rows.shape[1] // 2
    x = rows[:, :bands].astype(np.float64)
    m = rows[:, bands:].astype(np.float64)
    n = k * k
    chips = np.repeat(((n * m - x) / (n - 1)).astype(np.float32)[:, :, None, None], k, axis=2).repeat(k, axis=3)
    chips[:, :, k // 2, k // 2] = rows[:, :bands]
    y = np.full((len(rows), k, k), IGNORE_INDEX, dtype=np.int64)
    y[:, k // 2, k // 2] = labels
    return torch.from_numpy(chips), torch.from_numpy(y)


@dataclass
class PixelLoaders:
    """The training and validation batches of ``sampling`` pixels, their batch makers, and the tables' sizes."""

    train_bm: BatchMaker
    train: PixelBatches
    val_bm: BatchMaker | None
    val: PixelBatches | None
    sizes: dict[str, int]


def pixel_loaders(cfg: "TrainConfig", grid: "ImageGrid", plan: "LabelPlan", mean: Sequence[float],
                  std: Sequence[float], rank: int = 0) -> PixelLoaders:
    """Read both sides' tables and make their batches: ``samples_per_epoch`` pixels an epoch in batches of
    ``batch_size``, drawn by ``class_balance``, with ``jitter`` and ``band_dropout``; validation unaugmented."""
    from geoseg.errors import LabelError
    from geoseg.train.auto import PIXELS_PER_EPOCH

    # resolved by geoseg.train.auto, the one place these defaults are decided
    assert cfg.batch_size is not None and cfg.jitter is not None and cfg.class_balance is not None
    ident = np.arange(len(plan.schema))  # the tables hold class indexes already
    context = int(cfg.arch_args.get("context", 1))
    tables = {part: read_pixel_table(grid, plan, part, class_field=cfg.class_field, seed=cfg.seed,
                                     ignore_values=tuple(cfg.ignore_values), context=context,
                                     fill=np.asarray(mean, np.float64)) for part in ("train", "val")}
    if not len(tables["train"]):
        raise LabelError("no labelled pixel of the training split has valid values in every band (all nodata or "
                         "not finite there); check that the labels lie on valid image pixels")
    train_bm = BatchMaker(grid, ident, mean, std, augment="none", jitter=cfg.jitter, band_dropout=cfg.band_dropout,
                          seed=cfg.seed)
    steps = math.ceil((cfg.samples_per_epoch or PIXELS_PER_EPOCH) / cfg.batch_size)
    train = PixelBatches(tables["train"], train_bm, cfg.batch_size, steps, seed=cfg.seed, balance=cfg.class_balance,
                         rank=rank)
    val_bm: Any = None
    val = None
    if len(tables["val"]):
        val_bm = BatchMaker(grid, ident, mean, std)
        val = PixelBatches(tables["val"], val_bm, 4096, balance=None)
    return PixelLoaders(train_bm, train, val_bm, val, {k: len(t) for k, t in tables.items()})
