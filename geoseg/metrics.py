"""Segmentation metrics from confusion matrices, and object-level matching. Torch-free (numpy, scipy).

Conventions (rows = truth, columns = prediction):

* ``IoU_c = TP / (TP + FP + FN)``; NaN when the class is neither in the truth nor predicted.
* ``precision_c = TP / (TP + FP)``; NaN when the class is never predicted.
* ``recall_c = TP / (TP + FN)``; NaN when the class is absent from the truth.
* ``F1_c = 2 TP / (2 TP + FP + FN)``; NaN when the class is neither in the truth nor predicted.
* Macro scores (``miou``, ``macro_f1``...) are the mean over classes whose score is not NaN.
  Macro, not micro: a failing small class pulls the mean down instead of hiding.
* ``overall_accuracy = trace / total`` over counted pixels.

Pixels marked ignored (unlabelled truth, nodata) never enter the matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """Count (truth, prediction) pairs of class indexes ``0..num_classes-1``.

    Args:
        truth: class indexes, any shape.
        pred: class indexes, same shape.
        num_classes: matrix side.
        valid: optional boolean mask; False pixels are ignored. Pixels whose truth or
            prediction is outside ``0..num_classes-1`` are ignored too.

    Returns:
        ``(num_classes, num_classes)`` int64 matrix, rows = truth, columns = prediction.
    """
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"truth has {t.size} pixels but prediction has {p.size}")
    ok = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).ravel()
    idx = t[ok] * num_classes + p[ok]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _nanmean(a: np.ndarray) -> float:
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


@dataclass(frozen=True)
class SegmentationMetrics:
    """Per-class and summary scores of one confusion matrix.

    Attributes:
        names: class names, in matrix order.
        matrix: the confusion matrix (rows truth, columns prediction).
        iou, precision, recall, f1: per-class arrays (NaN where undefined, see module doc).
        support: truth pixels per class.
    """

    names: tuple[str, ...]
    matrix: np.ndarray
    iou: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    @property
    def miou(self) -> float:
        """Macro mean IoU over classes where IoU is defined."""
        return _nanmean(self.iou)

    @property
    def macro_f1(self) -> float:
        return _nanmean(self.f1)

    @property
    def macro_precision(self) -> float:
        return _nanmean(self.precision)

    @property
    def macro_recall(self) -> float:
        return _nanmean(self.recall)

    @property
    def overall_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else math.nan

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def summary(self) -> dict[str, float]:
        return {"miou": self.miou, "macro_f1": self.macro_f1, "macro_precision": self.macro_precision,
                "macro_recall": self.macro_recall, "overall_accuracy": self.overall_accuracy,
                "pixels": float(self.total)}

    def per_class(self) -> list[dict[str, float | str | int]]:
        return [{"class": n, "iou": float(self.iou[i]), "precision": float(self.precision[i]),
                 "recall": float(self.recall[i]), "f1": float(self.f1[i]), "support": int(self.support[i])}
                for i, n in enumerate(self.names)]


def metrics_from_confusion(matrix: np.ndarray, names: Sequence[str] | None = None) -> SegmentationMetrics:
    """Per-class IoU, precision, recall, F1 and support from a confusion matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {m.shape}")
    n = m.shape[0]
    tp = np.diag(m)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    nm = tuple(names) if names is not None else tuple(f"class_{i}" for i in range(n))
    if len(nm) != n:
        raise ValueError(f"{len(nm)} names for a {n}x{n} matrix")
    return SegmentationMetrics(
        names=nm, matrix=np.asarray(matrix, dtype=np.int64),
        iou=_div(tp, tp + fp + fn), precision=_div(tp, tp + fp), recall=_div(tp, tp + fn),
        f1=_div(2 * tp, 2 * tp + fp + fn), support=(tp + fn).astype(np.int64))


# ---------------------------------------------------------------------- objects
@dataclass(frozen=True)
class ObjectMetrics:
    """Object-level scores of one class: one-to-one matches at IoU > threshold."""

    name: str
    truth_objects: int
    predicted_objects: int
    matched: int
    threshold: float = 0.5
    matches: list[tuple[int, int, float]] = field(default_factory=list, compare=False, repr=False)

    @property
    def precision(self) -> float:
        return self.matched / self.predicted_objects if self.predicted_objects else math.nan

    @property
    def recall(self) -> float:
        return self.matched / self.truth_objects if self.truth_objects else math.nan

    @property
    def f1(self) -> float:
        d = self.truth_objects + self.predicted_objects
        return 2 * self.matched / d if d else math.nan


def match_objects(truth_ids: np.ndarray, pred_ids: np.ndarray, *, threshold: float = 0.5,
                  name: str = "", counted: np.ndarray | None = None) -> ObjectMetrics:
    """Match truth objects to predicted objects one-to-one at IoU > ``threshold``.

    Args:
        truth_ids: object id per pixel (0 = no object), e.g. rasterized polygons with
            one id each, or connected components of a truth class.
        pred_ids: object id per pixel (0 = no object), e.g. connected components of a
            predicted class.
        threshold: minimum IoU (exclusive). With ``threshold >= 0.5`` every object has
            at most one partner above it, so the matching is unique without a solver;
            below 0.5 matches are chosen greedily by decreasing IoU.
        name: class name for the report.
        counted: optional boolean mask of pixels that carry truth (labelled area).
            Predicted objects that do not touch it are not counted, so sparse truth
            (a few polygons) does not turn every unlabelled prediction into a false positive.

    Returns:
        :class:`ObjectMetrics`.
    """
    t = np.asarray(truth_ids).ravel().astype(np.int64)
    p = np.asarray(pred_ids).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError("truth and prediction object rasters differ in size")
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    t_area = np.bincount(t_inv, minlength=len(t_ids))
    p_area = np.bincount(p_inv, minlength=len(p_ids))
    both = (t > 0) & (p > 0)
    pair = t_inv[both] * len(p_ids) + p_inv[both]
    pairs, inter = np.unique(pair, return_counts=True)
    ti, pi = pairs // len(p_ids), pairs % len(p_ids)
    iou = inter / (t_area[ti] + p_area[pi] - inter)
    order = np.argsort(-iou, kind="stable")
    used_t: set[int] = set()
    used_p: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for k in order:
        if iou[k] <= threshold:
            break
        a, b = int(ti[k]), int(pi[k])
        if a in used_t or b in used_p:
            continue
        used_t.add(a)
        used_p.add(b)
        matches.append((int(t_ids[a]), int(p_ids[b]), float(iou[k])))
    n_truth = int((t_ids > 0).sum())
    if counted is not None:
        c = np.asarray(counted, dtype=bool).ravel()
        n_pred = int(len(np.unique(p[(p > 0) & c])))
    else:
        n_pred = int((p_ids > 0).sum())
    return ObjectMetrics(name=name, truth_objects=n_truth, predicted_objects=n_pred, matched=len(matches),
                         threshold=threshold, matches=matches)


def connected_objects(mask: np.ndarray) -> np.ndarray:
    """Label 4-connected regions of a boolean mask 1..n (0 = background).

    4-connectivity keeps fields that touch only at a corner apart.
    """
    from scipy import ndimage

    labels: np.ndarray = ndimage.label(np.asarray(mask, dtype=bool))[0]
    return labels
