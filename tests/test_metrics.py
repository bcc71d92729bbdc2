"""Metric functions against hand-computed confusion matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoseg.metrics import confusion_matrix, connected_objects, match_objects, metrics_from_confusion


def test_confusion_matrix_counts_and_ignores() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 2], [255, 2, 0]])
    pred = np.array([[0, 1, 1], [1, 2, 0], [0, 2, 0]])
    valid = np.ones_like(truth, dtype=bool)
    valid[0, 0] = False  # a nodata pixel
    cm = confusion_matrix(truth, pred, 3, valid)
    # pairs counted: (0,1) (1,1) (1,1) (2,2) (2,0) (2,2) (0,0); (255, 0) is out of range, (0,0) at [0,0] masked
    expected = np.array([[1, 1, 0],
                         [0, 2, 0],
                         [1, 0, 2]])
    np.testing.assert_array_equal(cm, expected)


def test_metrics_hand_computed() -> None:
    cm = np.array([[50, 10, 0],
                   [5, 30, 5],
                   [0, 0, 0]])
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    # class a: TP 50, FP 5, FN 10 -> IoU 50/65, P 50/55, R 50/60, F1 100/115
    assert m.iou[0] == pytest.approx(50 / 65)
    assert m.precision[0] == pytest.approx(50 / 55)
    assert m.recall[0] == pytest.approx(50 / 60)
    assert m.f1[0] == pytest.approx(100 / 115)
    # class b: TP 30, FP 10, FN 10 -> IoU 30/50
    assert m.iou[1] == pytest.approx(30 / 50)
    assert m.f1[1] == pytest.approx(60 / 80)
    # class c: never in truth, predicted 5 times -> IoU 0, precision 0, recall undefined
    assert m.iou[2] == 0.0
    assert m.precision[2] == 0.0
    assert math.isnan(m.recall[2])
    assert m.miou == pytest.approx((50 / 65 + 30 / 50 + 0) / 3)
    assert m.overall_accuracy == pytest.approx(80 / 100)
    assert m.macro_recall == pytest.approx((50 / 60 + 30 / 40) / 2)
    np.testing.assert_array_equal(m.support, [60, 40, 0])


def test_macro_excludes_absent_classes_and_does_not_hide_small_ones() -> None:
    # class z is neither in truth nor predicted: excluded from the macro mean
    cm = np.array([[1000, 0, 0], [10, 0, 0], [0, 0, 0]])
    m = metrics_from_confusion(cm, ["big", "small", "z"])
    assert math.isnan(m.iou[2])
    assert m.miou == pytest.approx((1000 / 1010 + 0.0) / 2)  # small class failing pulls the mean to ~0.5
    assert m.overall_accuracy == pytest.approx(1000 / 1010)


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError):
        metrics_from_confusion(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)


def test_object_matching_one_to_one() -> None:
    truth = np.zeros((10, 10), dtype=int)
    truth[0:4, 0:4] = 1      # 16 px
    truth[0:4, 6:10] = 2     # 16 px
    truth[6:10, 0:10] = 3    # 40 px
    pred = np.zeros((10, 10), dtype=int)
    pred[0:4, 0:3] = 7       # IoU with 1: 12/16 = 0.75 -> match
    pred[0:2, 6:10] = 8      # IoU with 2: 8/16 = 0.5 -> not > 0.5
    pred[6:10, 0:5] = 9      # IoU with 3: 20/40 = 0.5 -> no
    pred[6:10, 5:10] = 10    # IoU with 3: 0.5 -> no
    r = match_objects(truth, pred)
    assert (r.truth_objects, r.predicted_objects, r.matched) == (3, 4, 1)
    assert r.matches[0][:2] == (1, 7)
    assert r.precision == pytest.approx(1 / 4)
    assert r.recall == pytest.approx(1 / 3)
    assert r.f1 == pytest.approx(2 / 7)


def test_object_counted_mask_and_components() -> None:
    mask = np.array([[1, 1, 0, 1],
                     [0, 0, 0, 1],
                     [1, 0, 0, 0]], dtype=bool)
    comp = connected_objects(mask)
    assert comp.max() == 3  # 4-connectivity: three separate objects
    truth = np.zeros_like(comp)
    truth[0, 0:2] = 1
    counted = np.zeros_like(mask)
    counted[0, 0:2] = True  # only the first object's area is labelled
    r = match_objects(truth, comp, counted=counted)
    assert (r.truth_objects, r.predicted_objects, r.matched) == (1, 1, 1)
