"""What ``geoseg train`` picks when left to choose: the architecture and the sampling, from the labels
and the bands it is given (torch-free). Every training default that depends on the data is decided here.

The rule, measured on the accuracy suite (``benchmarks/bench_accuracy.py``, docs/training.md):

* **Polygons or points** (``--vector-labels``): a per-pixel model (``tempcnn``, reading the pixel alone)
  trained on a table of the labelled pixels, each class drawn with weight ``sqrt(its pixels)``, with
  photometric jitter, on all the labels (no validation split: nothing is chosen on it). A U-Net trained
  on chips of a few dozen polygons learns the polygons' shapes, not the classes (issue 17: it fell below
  a random forest on new scenes); pixel sampling treats a point like a polygon's pixel, and on the suite
  it is far above the forest on the point scenes and within 0.002 OA of it on the polygon scenes.
* **A label raster on a stack of many bands** (at least :data:`TIME_SERIES_BANDS`: a time series):
  the same per-pixel model, as TempCNN (Pelletier et al. 2019) is trained, that also reads the mean
  profile of the :data:`CONTEXT_TIME_SERIES` x :data:`CONTEXT_TIME_SERIES` pixels around each pixel: a
  dense land-use map comes in patches of many pixels, and the mean damps the pixel noise of the dates.
* **A label raster on a few bands** (imagery with dense labels): the U-Net on chips, whose context
  a dense map rewards.

``bands_per_date`` of the picked ``tempcnn``: all bands (one date) below :data:`TIME_SERIES_BANDS`,
else 1 (one band a date, e.g. an NDVI series); pass ``--bands-per-date`` for a multi-band series.
With pixel sampling the per-pixel model is an ensemble of :data:`MEMBERS_PIXELS` networks trained side by
side (``--members``): it costs that many times the compute and cancels much of the seed-to-seed spread.
What was picked is said in one line and recorded in the checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from geoseg.train.config import TrainConfig

#: a stack of at least this many bands is taken for a time series
TIME_SERIES_BANDS = 20
#: neighbourhood (side in pixels) of the per-pixel model on a time series with a label raster: on Slovenia's
#: 68 NDVI dates (the suite's one labelled time series) the pooled OA of its four spatial folds went from
#: about 0.87 (the pixel alone) to 0.918, the random forest's, and macro F1 from ~0.50 to 0.524 against its
#: 0.446 (docs/performance.md); 7 x 7 on 16 px chips had reached 0.916 there
CONTEXT_TIME_SERIES = 7
#: pixels per epoch of pixel sampling (50 steps of 256): 256k pixel draws over the default 20 epochs
PIXELS_PER_EPOCH = 12_800
#: batch sizes (chips, pixels) and jitter (chips, pixels) when not given
BATCH_CHIPS, BATCH_PIXELS = 8, 256
JITTER_CHIPS, JITTER_PIXELS = 0.0, 0.05
#: class_balance of pixel sampling: polygons and points (drawn by a user), a label raster (the landscape's)
BALANCE_VECTOR, BALANCE_RASTER = 0.5, 1.0
#: the validation split on chips (it picks the best epoch and stops early) and with pixel sampling (it picks
#: nothing there, and holding out a fifth of a few polygons cost accuracy on the suite: docs/training.md)
VAL_SPLIT_CHIPS, VAL_SPLIT_PIXELS = 0.2, 0.0
#: folds of the spatial cross-validation that ends a training on polygons or points with pixel sampling: no
#: validation split is held out there, and each fold costs one training on a few thousand pixels
CV_VECTOR_PIXELS = 3
#: networks of the per-pixel ensemble with pixel sampling (one checkpoint, probabilities averaged): on the
#: suite the Brazil Sentinel-2 fold whose score moved with the seed went from 0.992-0.997 OA to 0.995-0.999
#: (docs/performance.md); no scene gained from one network alone beyond the spread of its repeats
MEMBERS_PIXELS = 3


def val_split_of(cfg: TrainConfig) -> float:
    """``cfg``'s validation split: its own, else the default of its sampling."""
    if cfg.val_split is not None:
        return cfg.val_split
    return VAL_SPLIT_PIXELS if cfg.pixels else VAL_SPLIT_CHIPS


def resolve(cfg: TrainConfig, bands: int) -> tuple[TrainConfig, str]:
    """``cfg`` with ``arch``, ``sampling``, ``bands_per_date``, ``members``, ``batch_size`` and ``jitter``
    decided, and a line saying what ``auto`` picked (empty when nothing was left to pick). Validated again."""
    picks: dict[str, Any] = {}
    why = ""
    if cfg.arch == "auto":
        if cfg.vector_labels is not None:
            picks["arch"], why = "tempcnn", "per-pixel model on the labelled pixels: labels are polygons or points"
        elif bands >= TIME_SERIES_BANDS:
            k = cfg.context or CONTEXT_TIME_SERIES
            around = f" and their {k} x {k} neighbourhood" if k > 1 else ""
            picks["arch"] = "tempcnn"
            why = f"per-pixel model on the labelled pixels{around}: {bands} bands, a time series"
            if cfg.context is None:
                picks["context"] = CONTEXT_TIME_SERIES
            if cfg.sampling == "auto":
                picks["sampling"] = "pixels"
        else:
            picks["arch"], why = "unet", f"U-Net on chips: a label raster on {bands} bands"
        if picks["arch"] == "tempcnn" and cfg.bands_per_date is None:
            picks["bands_per_date"] = bands if bands < TIME_SERIES_BANDS else 1
    out = dataclasses.replace(cfg, **picks)
    if out.sampling == "auto":
        out = dataclasses.replace(out, sampling="pixels" if out.pixels else "chips")
    fill: dict[str, Any] = {}
    if out.batch_size is None:
        fill["batch_size"] = BATCH_PIXELS if out.pixels else BATCH_CHIPS
    if out.jitter is None:
        fill["jitter"] = JITTER_PIXELS if out.pixels else JITTER_CHIPS
    if out.val_split is None:
        fill["val_split"] = val_split_of(out)
    if out.members is None and out.pixels and "members" in out.arch_args:
        fill["members"] = MEMBERS_PIXELS
    if out.cv is None:
        fill["cv"] = CV_VECTOR_PIXELS if out.pixels and out.vector_labels is not None else 0
    if out.class_balance is None and out.pixels:
        fill["class_balance"] = BALANCE_VECTOR if out.vector_labels is not None else BALANCE_RASTER
    out = dataclasses.replace(out, **fill).validate()
    line = ""
    if picks:
        args = ", ".join(f"{k} {v}" for k, v in out.arch_args.items()
                         if k in ("bands_per_date", "depth", "members") or (k == "context" and v > 1))
        line = (f"--arch auto: {out.arch}" + (f" ({args})" if args else "") + f", {why}; batches of "
                f"{out.batch_size} {'pixels' if out.pixels else 'chips'}, jitter {out.jitter}"
                + (f", class balance {out.class_balance}" if out.pixels else "")
                + ("; no validation split" if out.pixels and not out.val_split else "")
                + (f"; then a spatial {out.cv}-fold cross-validation estimates its accuracy" if out.cv else ""))
    return out, line
