"""Join block parts into the whole raster's COGs, the same bytes as one run. Torch-free.

A raster split into blocks of rows (:func:`geoseg.pipeline.plan.block_bounds`) is computed
block by block, possibly on different machines, by ``predict_raster(rows=...)``: each
writes plain GeoTIFF *parts* holding exactly the output rows a whole run writes there.
:func:`assemble_blocks` copies the parts, in row order and a window at a time, into a
staging file created with the whole run's own :class:`~geoseg.io.writer.GeoTiffSink`
arguments (the report's ``sink_specs``), then converts it to a COG as a whole run does.
Same pixels, same staging profile, same conversion: the same file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geoseg.errors import RasterReadError, error_text
from geoseg.io.writer import GeoTiffSink

#: pixels copied per window (rows x columns), bounding the memory of the assembly
WINDOW_PIXELS = 8 << 20


def assemble_blocks(dests: Sequence[str | os.PathLike[str]], specs: Sequence[dict[str, Any]],
                    parts: Sequence[Sequence[str | os.PathLike[str]]], bounds: Sequence[tuple[int, int]],
                    overwrite: bool = False) -> list[Path]:
    """Write each ``dests[i]`` (a COG) from ``parts[i]``, the blocks ``bounds`` of rows in order, and
    a class raster's QGIS style beside it, as a whole run does.

    Every output is built before any is renamed into place (as a whole run does). The caller
    checked the destinations; on any error nothing is left at them.
    """
    sinks: list[GeoTiffSink] = []
    ok = False
    try:
        for dest, spec in zip(dests, specs):
            sinks.append(GeoTiffSink(dest, **spec))
        for sink, files in zip(sinks, parts):
            for path, (r0, r1) in zip(files, bounds):
                _copy_part(sink, Path(path), r0, r1)
        for s in sinks:
            s.finalize()
        out = [s.publish() for s in sinks]
        ok = True
    finally:
        if not ok:
            for s in sinks:
                s.abort()
    from geoseg.styles import raster_qml, write_qml

    for dest, spec in zip(out, specs):
        if spec.get("classes") is not None:
            write_qml(dest, raster_qml(spec["classes"]), overwrite=overwrite)
    return out


def _copy_part(sink: GeoTiffSink, path: Path, r0: int, r1: int) -> None:
    try:
        with rasterio.open(path) as part:
            if part.height != r1 - r0:
                raise RasterReadError(f"{path}: block part has {part.height} rows, expected {r1 - r0}; rerun the job")
            step = max(1, WINDOW_PIXELS // max(1, part.width))
            for r in range(0, part.height, step):
                win = Window(0, r, part.width, min(step, part.height - r))
                data = part.read(window=win)
                sink.write(data[: sink.count], r0 + r, 0)
                if sink.has_mask:
                    sink.write_mask(data[sink.count], r0 + r, 0)
    except (RasterioIOError, OSError) as e:
        raise RasterReadError(f"{path}: cannot read a block part: {error_text(e, 200)}; rerun the job") from None
