"""Grid maths: every pixel covered, tiles in bounds and full-size, counts as documented."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import TilingError
from geoseg.tiling import TileGrid, axis_starts, check_tile_params, column_strips, tiles_touching


@st.composite
def axis_case(draw, aligned=False):
    align = draw(st.sampled_from([1, 2, 4, 8])) if aligned else 1
    size = align * draw(st.integers(1, 64 // align))
    overlap = draw(st.integers(0, size - align))
    n = draw(st.integers(1, 400))
    return n, size, overlap, align


@given(axis_case(aligned=True))
@settings(max_examples=400, deadline=None)
def test_axis_starts_properties(case):
    n, size, overlap, align = case
    starts = axis_starts(n, size, overlap, align)
    stride = (size - overlap) // align * align
    # count formula from the docstring
    expected = 1 if n <= size else 1 + math.ceil((n - size) / stride)
    assert len(starts) == expected
    assert starts == sorted(set(starts))
    covered = np.zeros(n, dtype=int)
    for s in starts:
        assert 0 <= s < n and s % align == 0  # starts on the pooling grid
        if n >= size:
            assert s + size <= n + align - 1  # in bounds up to an overhang < align
            if align == 1:
                assert s + size <= n  # full-size and in bounds
        covered[s:s + size] += 1
    assert covered.min() >= 1  # every pixel covered
    # consecutive tiles overlap by at least `overlap`
    for a, b in zip(starts, starts[1:]):
        assert a + size - b >= overlap


@given(st.integers(1, 300), st.integers(1, 300), axis_case())
@settings(max_examples=100, deadline=None)
def test_grid_covers_raster(h, w, case):
    _, size, overlap, _ = case
    g = TileGrid(h, w, size, overlap)
    cov = np.zeros((h, w), dtype=int)
    tiles = list(g)
    assert len(tiles) == len(g)
    for t in tiles:
        assert 0 <= t.row and t.row + t.height <= h
        assert 0 <= t.col and t.col + t.width <= w
        assert t.height == min(size, h) and t.width == min(size, w)
        cov[t.slices()] += 1
    assert cov.min() >= 1


@given(st.integers(1, 5000), st.integers(8, 512), st.integers(0, 7), st.integers(256, 3000))
@settings(max_examples=200, deadline=None)
def test_column_strips_partition(width, size, overlap, max_width):
    overlap = min(overlap, size - 1)
    strips = column_strips(width, size, overlap, max_width)
    assert strips[0][0] == 0 and strips[-1][1] == width
    for (a, b), (c, d) in zip(strips, strips[1:]):
        assert b == c and a < b
    starts = axis_starts(width, size, overlap)
    for a, b in strips:
        touching = tiles_touching(starts, min(size, width), a, b)
        cov = np.zeros(width, dtype=bool)
        for s in touching:
            cov[s:s + min(size, width)] = True
        assert cov[a:b].all()


@pytest.mark.parametrize("size,overlap,multiple,match", [
    (0, 0, 1, "tile size"), (64, -1, 1, "overlap"), (64, 64, 1, "smaller than"), (100, 10, 8, "multiple of 8"),
])
def test_bad_tile_params(size, overlap, multiple, match):
    with pytest.raises(TilingError, match=match):
        check_tile_params(size, overlap, multiple)


def test_examples():
    assert axis_starts(10, 4, 1) == [0, 3, 6]
    assert axis_starts(11, 4, 1) == [0, 3, 6, 7]
    assert axis_starts(3, 4, 1) == [0]
    assert axis_starts(1, 256, 64) == [0]
    assert axis_starts(379, 256, 64, align=8) == [0, 128]  # 123 rounded up to 128
    assert axis_starts(578, 256, 64, align=8) == [0, 192, 328]  # 578-256=322 rounded up to 328
