"""What one inference run does, in order: strips, tile rows, tile columns. Torch-free.

The raster is split into column strips (:func:`geoseg.tiling.column_strips`; only very
wide rasters have more than one) and each strip runs its tile rows top to bottom. On
``--resume`` the plan starts at the first tile row that still adds to unwritten rows.
The geometry is :class:`geoseg.tiling.TileGrid`'s, the one its tests check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from geoseg.tiling import TileGrid, tiles_touching


@dataclass(frozen=True)
class RowJob:
    """One tile row of one strip: read its band of rows once, run its tiles, blend them."""

    strip_index: int
    strip: tuple[int, int]  # output columns [a, b) of the strip
    row: int  # raster row of the tiles' top
    height: int  # rows of the tiles inside the raster
    cols: tuple[int, ...]  # tile column starts that touch the strip
    first: bool  # first tile row of the strip in this run: the accumulator starts here
    last: bool  # the raster's last tile row: the strip ends here
    skip_until: int  # rows of the strip already written by an earlier run (resume)

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
