"""Blend windows and the row-band accumulator."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.blend import BLEND_WINDOWS, EPS, RowBandAccumulator, tile_weights, window_1d


@pytest.mark.parametrize("kind", list(BLEND_WINDOWS))
@pytest.mark.parametrize("n", [1, 2, 7, 64, 257])
def test_window_shape(kind, n):
    w = window_1d(kind, n, overlap=n // 4)
    assert w.shape == (n,)
    assert w.max() == pytest.approx(1.0)
    assert w.min() >= EPS
    np.testing.assert_allclose(w, w[::-1], atol=1e-12)  # symmetric


@pytest.mark.parametrize("kind", list(BLEND_WINDOWS))
def test_border_sides_are_flat(kind):
    w = window_1d(kind, 64, 16, at_start=True)
    assert (w[:32] == 1.0).all()
    w = window_1d(kind, 64, 16, at_end=True)
    assert (w[32:] == 1.0).all()


def test_weights_positive_everywhere():
    w = tile_weights("hann", 32, 48, 8, top=False, bottom=False, left=False, right=False)
    assert w.shape == (32, 48) and w.dtype == np.float32 and w.min() > 0


@given(st.integers(1, 5), st.integers(4, 40), st.integers(1, 30))
@settings(max_examples=50, deadline=None)
def test_accumulator_reproduces_constant_field(k, h, w):
    """Overlapping tiles that predict the same values reproduce them exactly after normalisation."""
    rng = np.random.default_rng(0)
    truth = rng.random((k, h, w)).astype(np.float32)
    acc = RowBandAccumulator(k, h, w)
    for r0, c0 in [(0, 0), (0, w // 2), (h // 3, 0)]:
        hh, ww = h - r0, w - c0
        wt = (rng.random((hh, ww)) + 0.1).astype(np.float32)
        acc.add(truth[:, r0:, c0:], wt, r0, c0)
    classes, probs, valid = acc.pop_rows(h)
    assert valid.all()
    np.testing.assert_allclose(probs, truth, rtol=1e-6, atol=1e-6)
    # classes come from the unnormalised sums: the same as the argmax of the blended probabilities
    # wherever the top two differ by more than rounding
    if k > 1:
        top2 = np.sort(truth, axis=0)[-2:]
        clear = top2[1] - top2[0] > 1e-5
        assert (classes[clear] == truth.argmax(0)[clear]).all()
    else:
        assert (classes == 0).all()


def test_accumulator_slides_and_clips_columns():
    acc = RowBandAccumulator(1, 4, 5, col0=10)
    ones = np.ones((1, 4, 8), np.float32)
    acc.add(ones * 2, np.ones((4, 8), np.float32), 0, 8)  # cols 8..16, clipped to 10..15
    _, probs, valid = acc.pop_rows(2)
    assert probs.shape == (1, 2, 5) and valid.all() and (probs == 2).all()
    assert acc.base == 2
    acc.add(ones[:, :2, :5] * 4, np.ones((2, 5), np.float32), 2, 10)  # rows 2,3 overlap the first tile
    classes, probs, valid = acc.pop_rows(6)
    assert classes.shape == (4, 5) and (classes == 0).all()
    assert acc.pop_rows(6, probabilities=False)[1].size == 0
    assert (probs[0, :2] == 3).all() and valid[:2].all()  # rows 2,3: (2+4)/2
    assert not valid[2:].any()  # rows 4,5: never covered
    with pytest.raises(ValueError):
        acc.add(ones[:, :4, :5], np.ones((4, 5), np.float32), 0, 10)  # rows already finished
