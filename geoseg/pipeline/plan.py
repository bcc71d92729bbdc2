"""What one inference run does, in order: strips, tile rows, tile columns. Torch-free.

The raster is split into column strips (:func:`geoseg.tiling.column_strips`; only very
wide rasters have more than one) and each strip runs its tile rows top to bottom. On
``--resume`` the plan starts at the first tile row that still adds to unwritten rows.
The geometry is :class:`geoseg.tiling.TileGrid`'s, the one its tests check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from geoseg.tiling import TileGrid, fit_tile, tiles_touching


def tile_grid(height: int, width: int, meta: Any, tile_size: int | None = None, overlap: int | None = None
              ) -> TileGrid:
    """The tile grid a run uses: the model's tile size and overlap unless given, fitted to the raster."""
    size = tile_size or meta.tile_size
    ov = meta.overlap if overlap is None else overlap
    size, ov = fit_tile(size, ov, height, width, meta.size_multiple)
    return TileGrid(height, width, size, ov, meta.size_multiple)


@dataclass(frozen=True)
class RowJob:
    """One tile row of one strip: read its band of rows once, run its tiles, blend them."""

    strip_index: int
    strip: tuple[int, int]  # output columns [a, b) of the strip
    row: int  # raster row of the tiles' top
    height: int  # rows of the tiles inside the raster
    cols: tuple[int, ...]  # tile column starts that touch the strip
    first: bool  # first tile row of the strip in this run: the accumulator starts here
    last: bool  # the last tile row of the strip in this run: its rows finish here, up to ``end``
    skip_until: int  # rows of the strip already written by an earlier run (resume) or by another block
    end: int | None = None  # with ``last``: the row the strip's output ends at (None: the raster's height)

    @property
    def col_lo(self) -> int:
        return self.cols[0]


@dataclass(frozen=True)
class RunPlan:
    """The tile rows still to run, strip by strip, from a resume point."""

    grid: TileGrid
    strips: tuple[tuple[int, int], ...]
    jobs: tuple[RowJob, ...]

    @property
    def tiles(self) -> int:
        return sum(len(j.cols) for j in self.jobs)

    def __iter__(self) -> Iterator[RowJob]:
        return iter(self.jobs)

    def band_width(self, job: RowJob) -> int:
        """Columns the job's tiles span, padding beyond the raster included."""
        return job.cols[-1] + self.grid.size - job.cols[0]


def plan_run(grid: TileGrid, strips: list[tuple[int, int]], start: tuple[int, int] = (0, 0)) -> RunPlan:
    """The tile rows to run from ``start`` = (strip, rows of it already written).

    Within the resumed strip, rows ``[0, rows_done)`` are already written; the first tile row
    to run is the first that reaches past ``rows_done`` (it still adds to unwritten rows).
    """
    s0, rows_done = start
    if rows_done >= grid.height:
        s0, rows_done = s0 + 1, 0
    rows = grid.row_starts
    jobs: list[RowJob] = []
    for s_i, (a, b) in enumerate(strips):
        if s_i < s0:
            continue
        cols = tuple(tiles_touching(grid.col_starts, grid.size, a, b))
        skip = rows_done if s_i == s0 else 0
        todo = [r for r in rows if skip == 0 or r + grid.size > skip]
        for n, r in enumerate(todo):
            jobs.append(RowJob(s_i, (a, b), r, min(grid.size, grid.height - r), cols, n == 0,
                               r == rows[-1], skip))
    return RunPlan(grid, tuple(strips), tuple(jobs))


def block_bounds(grid: TileGrid, rows: int) -> list[tuple[int, int]]:
    """Split the raster's rows into blocks ``[r0, r1)`` of about ``rows`` rows whose bounds are tile row
    starts (the last block ends at the raster's height): each is run by :func:`plan_block`."""
    bounds = [0]
    for r in grid.row_starts[1:]:
        if r - bounds[-1] >= rows:
            bounds.append(r)
    bounds.append(grid.height)
    return list(zip(bounds[:-1], bounds[1:]))


def plan_block(grid: TileGrid, strips: list[tuple[int, int]], r0: int, r1: int) -> RunPlan:
    """The tile rows that write output rows ``[r0, r1)``, strip by strip, exactly as a whole run does.

    ``r0`` and ``r1`` are tile row starts (or ``r1`` the height; :func:`block_bounds`). The plan
    runs every tile row that touches the block, from the one above ``r0`` that reaches into it,
    like a resumed run (rows above ``r0`` are not written), and stops after the last one above
    ``r1``: rows ``[r0, r1)`` then hold the same sums, added in the same order, as in a run of the
    whole raster, so they are the same bytes. Rows at and below ``r1`` are the next block's.
    """
    if r0 not in grid.row_starts or not (r1 == grid.height or r1 in grid.row_starts) or r1 <= r0:
        raise ValueError(f"block rows [{r0}, {r1}) do not fall on the tile grid")
    todo = [r for r in grid.row_starts if r < r1 and r + grid.size > r0]
    end = None if r1 == grid.height else r1
    jobs = [RowJob(s_i, (a, b), r, min(grid.size, grid.height - r), tuple(tiles_touching(grid.col_starts, grid.size,
                                                                                          a, b)),
                   n == 0, n == len(todo) - 1, r0, end)
            for s_i, (a, b) in enumerate(strips) for n, r in enumerate(todo)]
    return RunPlan(grid, tuple(strips), tuple(jobs))
