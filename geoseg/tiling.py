"""Pure tiling maths: where the overlapping tiles of a raster go. No I/O, no torch.

Edge policy
-----------
Along each axis of length ``n`` with tile side ``size``, ``overlap`` pixels and an
alignment ``align`` (the model's pooling factor ``2**depth``; 1 means none):

* ``stride = size - overlap`` rounded down to a multiple of ``align``; tiles start at
  ``0, stride, 2*stride, ...``.
* The last tile moves inward so that it ends at the raster's end: it starts at
  ``n - size`` rounded *up* to a multiple of ``align``. With ``align == 1`` it is
  exactly ``n - size``, so every tile is full-size and inside the raster whenever
  ``n >= size``. With ``align > 1`` the last tile may overhang the end by fewer than
  ``align`` pixels, which the reader fills by reflection (as a whole-image pass pads
  to a multiple of ``align``): keeping every tile on the pooling grid of a
  whole-image pass makes tiled predictions match it. The number of tiles is
  ``1 + ceil((n - size) / stride)``.
* When ``n <= size`` there is one tile at 0 that is ``size`` long: the reader pads the
  ``size - n`` missing pixels by reflection and the prediction is cropped back.

So every pixel is covered, tiles start inside the raster, and consecutive tiles
overlap by at least ``overlap``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from geoseg.errors import TilingError


def axis_starts(n: int, size: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of the tiles along one axis of ``n`` pixels (see module docstring)."""
    if n < 1:
        raise TilingError(f"raster side must be >= 1 pixel, got {n}")
    check_tile_params(size, overlap, align)
    if n <= size:
        return [0]
    stride = (size - overlap) // align * align
    if stride < 1:
        raise TilingError(f"overlap {overlap} leaves no stride that is a multiple of {align} for tile size "
                          f"{size}; use `overlap` <= {size - align}")
    count = 1 + math.ceil((n - size) / stride)
    starts = [i * stride for i in range(count - 1)]
    starts.append(-(-(n - size) // align) * align)  # > starts[-1] since (count-2)*stride < n-size
    return starts


def check_tile_params(size: int, overlap: int, multiple: int = 1) -> None:
    """Validate tile size and overlap; raise :class:`TilingError` with what to change."""
    if size < 1:
        raise TilingError(f"tile size must be >= 1 pixel, got {size}")
    if overlap < 0:
        raise TilingError(f"overlap must be >= 0 pixels, got {overlap}")
    if overlap >= size:
        raise TilingError(f"overlap {overlap} must be smaller than the tile size {size}; use `overlap` < {size}")
    if multiple > 1 and size % multiple:
        lo = max(multiple, size // multiple * multiple)
        raise TilingError(f"tile size {size} must be a multiple of {multiple} for this model; use `tile_size` {lo}")


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile, in pixel coordinates of the raster.

    ``row``/``col`` are the top-left offsets, ``height``/``width`` the part inside the raster
    (smaller than the tile side only for a raster smaller than a tile, or an aligned last
    tile that overhangs the end), and ``i``/``j`` the tile's index in the grid.
    """

    i: int
    j: int
    row: int
    col: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)


@dataclass(frozen=True)
class TileGrid:
    """All tiles of a ``height`` x ``width`` raster; see the module docstring for the policy."""

    height: int
    width: int
    size: int
    overlap: int
    align: int = 1

    def __post_init__(self) -> None:
        check_tile_params(self.size, self.overlap, self.align)
        if self.height < 1 or self.width < 1:
            raise TilingError(f"raster must be at least 1x1 pixels, got {self.height}x{self.width}")

    @property
    def row_starts(self) -> list[int]:
        return axis_starts(self.height, self.size, self.overlap, self.align)

    @property
    def col_starts(self) -> list[int]:
        return axis_starts(self.width, self.size, self.overlap, self.align)

    @property
    def band_height(self) -> int:
        """Rows one tile row spans inside the raster (the accumulator's height)."""
        return min(self.size, self.height)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def row_of_tiles(self, i: int, cols: list[int] | None = None) -> list[Tile]:
        r = self.row_starts[i]
        col_starts = self.col_starts if cols is None else cols
        h = min(self.size, self.height - r)
        return [Tile(i, j, r, c, h, min(self.size, self.width - c)) for j, c in enumerate(col_starts)]

    def __iter__(self) -> Iterator[Tile]:
        for i in range(len(self.row_starts)):
            yield from self.row_of_tiles(i)


def fit_tile(size: int, overlap: int, height: int, width: int, align: int = 1) -> tuple[int, int]:
    """``(size, overlap)`` no larger than the raster needs: when one tile covers the raster, its side
    is the raster's longer side rounded up to ``align`` (``--tile-size 16384`` on a 17 x 13 raster
    allocated 8 GB of reflection padding). Larger rasters keep the tile asked for; invalid values
    are left for :func:`check_tile_params` to report."""
    if size < 1:
        return size, overlap
    m = max(1, align)
    extent = max(m, -(-max(height, width) // m) * m)
    if size <= extent:
        return size, overlap
    return extent, min(overlap, extent - 1)


def column_strips(width: int, size: int, overlap: int, max_width: int, align: int = 1) -> list[tuple[int, int]]:
    """Split ``[0, width)`` into output column strips of at most about ``max_width`` pixels.

    Strip boundaries fall on tile column starts, so a strip owns whole stretches of
    the grid; the tiles a strip must run are those that intersect it (tiles across a
    boundary are run by both neighbours). Bounds memory for very wide rasters.
    """
    starts = axis_starts(width, size, overlap, align)
    if width <= max_width or len(starts) == 1:
        return [(0, width)]
    strips: list[tuple[int, int]] = []
    a = 0
    for c in starts[1:]:
        if c - a >= max_width:
            strips.append((a, c))
            a = c
    strips.append((a, width))
    return strips


def tiles_touching(starts: list[int], size: int, lo: int, hi: int) -> list[int]:
    """Starts of the tiles ``[s, s+size)`` that intersect ``[lo, hi)``."""
    return [s for s in starts if s < hi and s + size > lo]
