"""read -> tile -> predict -> blend -> write, streaming in bounded memory. Torch-free.

The raster is split into column strips (only very wide rasters have more than one)
and each strip is processed top to bottom, one row of tiles at a time:

* a reader thread reads the row band of each tile row once, normalises it, and
  cuts it into tiles (tiles with no valid pixel are marked to skip);
* the main thread batches tiles across rows, runs the predictor, and adds each
  tile's probabilities times its blend window to a :class:`RowBandAccumulator`
  that covers only the rows the current tile row touches;
* when a tile row is complete, the rows that no later tile touches are final:
  they are normalised, turned into classes, and handed to a writer thread that
  writes them into the output GeoTIFFs.

Peak memory is about ``4 * (classes + 2) * tile * strip_width`` bytes for the
accumulator plus ``prefetch`` row bands of input (``4 * bands * tile * strip_width``
each) plus one batch, independent of raster height; ``max_strip_width`` bounds it
for very wide rasters. See docs/memory.md.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
from rasterio.windows import Window

from geoseg.blend import DEFAULT_BLEND, BLEND_WINDOWS, RowBandAccumulator, WeightCache
from geoseg.errors import GeosegError, TilingError, UsageError
from geoseg.io.atomic import check_destination
from geoseg.io.raster import inspect, open_raster, read_window, resolve_bands
from geoseg.io.writer import GeoTiffSink
from geoseg.modelmeta import ModelMeta
from geoseg.tiling import TileGrid, column_strips, tiles_touching


class Predictor(Protocol):
    """What the pipeline needs from a model: its metadata and batched probabilities."""

    meta: ModelMeta

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, bands, H, W) float32 normalised -> (N, classes, H, W) float32 probabilities."""
        ...


@dataclass(frozen=True)
class Progress:
    """Passed to ``on_progress`` after each batch."""

    tiles_done: int
    tiles_total: int
    pixels_done: int
    pixels_total: int
    seconds: float


@dataclass(frozen=True)
class PredictionReport:
    """What :func:`predict_raster` produced and how fast."""

    classes_path: Path
    probabilities_path: Path | None
    width: int
    height: int
    tiles_total: int
    tiles_run: int
    tiles_skipped: int
    seconds: float
    device: str
    precision: str
    tile_size: int
    overlap: int
    blend: str
    strips: int
    accumulator_bytes: int
    class_pixel_counts: dict[int, int] = field(default_factory=dict)

    @property
    def megapixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / max(self.seconds, 1e-9)


@dataclass
class _TileItem:
    row: int
    col: int
    data: np.ndarray | None  # (bands, size, size) normalised, None when skipped
    valid: np.ndarray  # (h, w) bool, the part inside the raster
    height: int
    width: int
    last_in_row: bool
    row_index: int
    next_row_start: int  # raster row where the next tile row starts (height at the end)
    strip: tuple[int, int]
    strip_first: bool


_END = object()


def _pad_to(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad the last two axes of ``a`` at their ends to ``height`` x ``width``."""
    ph, pw = height - a.shape[-2], width - a.shape[-1]
    if ph <= 0 and pw <= 0:
        return a
    pads = [(0, 0)] * (a.ndim - 2) + [(0, max(ph, 0)), (0, max(pw, 0))]
    return np.pad(a, pads, mode="reflect")


def _iter_tiles(ds: Any, band_idx: list[int], grid: TileGrid, strips: list[tuple[int, int]],
                mean: np.ndarray, std: np.ndarray) -> Iterator[list[_TileItem]]:
    """Yield the tiles of each tile row (strip by strip, top to bottom), reading each row band once.

    Parts of a tile beyond the raster (small rasters, aligned last tiles) are filled by reflection.
    """
    size = grid.size
    rows = grid.row_starts
    cols_all = grid.col_starts
    for a, b in strips:
        cols = tiles_touching(cols_all, size, a, b)
        c_lo, c_hi = cols[0], cols[-1] + size
        c_end = min(c_hi, grid.width)
        for i, r in enumerate(rows):
            h = min(size, grid.height - r)
            data, valid = read_window(ds, band_idx, Window(c_lo, r, c_end - c_lo, h))
            anyvalid = valid.any(axis=0)
            norm = (data - mean[:, None, None]) / std[:, None, None]
            norm[~valid] = 0.0  # masked values become the band mean
            norm = _pad_to(norm, size, c_hi - c_lo)
            nxt = rows[i + 1] if i + 1 < len(rows) else grid.height
            row_items = []
            for j, c in enumerate(cols):
                w = min(size, grid.width - c)
                v = anyvalid[:, c - c_lo: c - c_lo + w]
                tile = np.ascontiguousarray(norm[:, :, c - c_lo: c - c_lo + size]) if v.any() else None
                row_items.append(_TileItem(r, c, tile, v, h, w, j == len(cols) - 1, i, nxt, (a, b),
                                           i == 0 and j == 0))
            yield row_items


def _threaded(gen: Iterator[Any], maxsize: int) -> Iterator[Any]:
    """Run ``gen`` in a background thread with a bounded queue; re-raise its exceptions here."""
    q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            q.put(e)

    t = threading.Thread(target=run, name="geoseg-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class _Writer:
    """Background writer of finished row bands (keeps the main thread on the model)."""

    def __init__(self, sinks: list[GeoTiffSink], maxsize: int = 4) -> None:
        self.sinks = sinks
        self.q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, name="geoseg-writer", daemon=True)
        self.t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is _END:
                return
            if self.error is not None:
                continue
            try:
                for sink, (arr, mask) in zip(self.sinks, item[2]):
                    sink.write(arr, item[0], item[1])
                    if mask is not None:
                        sink.write_mask(mask, item[0], item[1])
            except BaseException as e:  # noqa: BLE001
                self.error = e

    def put(self, row: int, col: int, arrays: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((row, col, arrays))

    def close(self) -> None:
        self.q.put(_END)
        self.t.join()
        if self.error is not None:
            raise self.error


def default_output_paths(source: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None
                         ) -> dict[str, Path]:
    """``<out_dir>/<stem>_classes.tif``, ``_probabilities.tif``, ``_polygons.gpkg``, ``_preview.png``."""
    src = Path(source)
    d = Path(out_dir) if out_dir is not None else src.parent
    return {
        "classes": d / f"{src.stem}_classes.tif",
        "probabilities": d / f"{src.stem}_probabilities.tif",
        "vector": d / f"{src.stem}_polygons.gpkg",
        "preview": d / f"{src.stem}_preview.png",
    }


def predict_raster(
    source: str | os.PathLike[str],
    model: str | os.PathLike[str] | Predictor,
    output: str | os.PathLike[str] | None = None,
    *,
    probabilities: str | os.PathLike[str] | None = None,
    probability_dtype: str = "uint8",
    bands: Sequence[int] | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    blend: str = DEFAULT_BLEND,
    batch_size: int = 8,
    device: str = "auto",
    tta: str = "none",
    precision: str = "auto",
    overwrite: bool = False,
    max_strip_width: int = 8192,
    prefetch: int = 2,
    on_progress: Callable[[Progress], None] | None = None,
) -> PredictionReport:
    """Segment ``source`` with ``model`` and write a class raster (and optionally probabilities).

    Args:
        source: input GeoTIFF (any size; read by windows).
        model: a checkpoint path, or an object with ``meta`` and ``predict`` (see :class:`Predictor`).
        output: class raster path (default ``<source stem>_classes.tif`` beside the source).
        probabilities: also write per-class probabilities plus a confidence band here.
        probability_dtype: ``uint8`` (0-255 scaled, nodata in the mask band) or ``float32`` (NaN nodata).
        bands: 1-based input bands in model order (default: all non-alpha bands).
        tile_size: tile side in pixels (default: the checkpoint's).
        overlap: overlap in pixels (default: the checkpoint's).
        blend: blend window, one of :data:`geoseg.blend.BLEND_WINDOWS`.
        batch_size: tiles per model call.
        device: ``auto``, ``cpu``, ``cuda[:N]`` (checkpoint paths only).
        tta: test-time augmentation ``none``, ``flips``, ``d4`` (checkpoint paths only).
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` (checkpoint paths only).
        overwrite: replace existing outputs.
        max_strip_width: widest column strip held in memory (pixels).
        prefetch: row bands read ahead.
        on_progress: called after each batch with a :class:`Progress`.

    Returns:
        A :class:`PredictionReport`.

    Raises:
        GeosegError: bad input, model or output; nothing is left at the destinations.
    """
    t0 = time.perf_counter()
    if blend not in BLEND_WINDOWS:
        raise UsageError(f"--blend {blend!r}: choose one of {', '.join(BLEND_WINDOWS)}")
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if probability_dtype not in ("uint8", "float32"):
        raise UsageError("probability dtype must be uint8 or float32")
    outputs = default_output_paths(source, None)
    out_path = Path(output) if output is not None else outputs["classes"]
    check_destination(out_path, overwrite=overwrite, inputs=[source])
    if probabilities is not None:
        check_destination(probabilities, overwrite=overwrite, inputs=[source])
        if Path(probabilities).resolve() == out_path.resolve():
            raise UsageError("class and probability outputs must be different files")

    ds = open_raster(source)
    with ds:
        info = inspect(ds)
        if isinstance(model, (str, os.PathLike)):
            from geoseg.predict import TorchPredictor

            predictor: Any = TorchPredictor.from_checkpoint(model, device=device, tta=tta, precision=precision)
        else:
            predictor = model
        meta: ModelMeta = predictor.meta
        size = tile_size or meta.tile_size
        ov = meta.overlap if overlap is None else overlap
        band_idx = resolve_bands(ds, bands, meta.num_bands, meta.bands)
        grid = TileGrid(info.height, info.width, size, ov, meta.size_multiple)
        strips = column_strips(info.width, size, ov, max_strip_width, meta.size_multiple)
        schema = meta.schema
        lut = schema.lookup_table()
        k = meta.num_classes

        tags = {"geoseg_classes": schema.to_json(), "geoseg_model_arch": meta.arch,
                "geoseg_tile_size": str(size), "geoseg_overlap": str(ov), "geoseg_blend": blend}
        common = dict(width=info.width, height=info.height, crs=info.crs, transform=info.transform)
        sinks: list[GeoTiffSink] = []
        try:
            sinks.append(GeoTiffSink(out_path, count=1, dtype="uint8", nodata=schema.nodata,
                                     colormap=schema.colormap(), descriptions=["class"], tags=tags,
                                     resampling="nearest", **common))
            if probabilities is not None:
                fdt = probability_dtype == "float32"
                sinks.append(GeoTiffSink(probabilities, count=k + 1, dtype=probability_dtype,
                                         nodata=float("nan") if fdt else None,
                                         descriptions=[f"p_{c.name}" for c in schema.classes] + ["confidence"],
                                         tags={**tags, "scale": "1" if fdt else "1/255"},
                                         resampling="average", mask=not fdt, **common))
            writer = _Writer(sinks)
            stats = _run(ds, band_idx, grid, strips, meta, predictor, blend, batch_size, lut, schema.nodata,
                         writer, probabilities is not None, probability_dtype, prefetch, on_progress, t0)
            writer.close()
            for s in sinks:
                s.commit()
        except BaseException:
            for s in sinks:
                s.abort()
            raise

    widest = max(b - a for a, b in strips)
    return PredictionReport(
        classes_path=out_path, probabilities_path=Path(probabilities) if probabilities else None,
        width=info.width, height=info.height, tiles_total=stats["total"], tiles_run=stats["run"],
        tiles_skipped=stats["skipped"], seconds=time.perf_counter() - t0,
        device=str(getattr(predictor, "device", "custom")), precision=getattr(predictor, "precision", "custom"),
        tile_size=size, overlap=ov, blend=blend, strips=len(strips),
        accumulator_bytes=4 * (k + 2) * grid.band_height * widest,
        class_pixel_counts=stats["counts"])


def _run(ds: Any, band_idx: list[int], grid: TileGrid, strips: list[tuple[int, int]], meta: ModelMeta,
         predictor: Any, blend: str, batch_size: int, lut: np.ndarray, nodata: int, writer: _Writer,
         want_probs: bool, prob_dtype: str, prefetch: int, on_progress: Callable[[Progress], None] | None,
         t0: float) -> dict[str, Any]:
    mean = np.asarray(meta.mean, dtype=np.float32)
    std = np.asarray(meta.std, dtype=np.float32)
    k = meta.num_classes
    weights = WeightCache(blend, grid.overlap)
    cols_all = grid.col_starts
    n_rows = len(grid.row_starts)
    total = sum(n_rows * len(tiles_touching(cols_all, grid.size, a, b)) for a, b in strips)
    counts = np.zeros(256, dtype=np.int64)
    done = run = skipped = 0
    pixels_done = 0
    acc: RowBandAccumulator | None = None
    submit = getattr(predictor, "submit", None)

    def flush(item: _TileItem, upto: int) -> None:
        nonlocal pixels_done
        assert acc is not None
        r0 = acc.base
        probs, valid = acc.pop_rows(upto)
        cls = lut[np.argmax(probs, axis=0)]
        cls[~valid] = nodata
        counts[:] += np.bincount(cls.ravel(), minlength=256)
        arrays: list[tuple[np.ndarray, np.ndarray | None]] = [(cls[None], None)]
        if want_probs:
            conf = probs.max(axis=0, keepdims=True)
            stack = np.concatenate([probs, conf], axis=0)
            if prob_dtype == "uint8":
                arrays.append((np.rint(stack * 255).astype(np.uint8), (valid * 255).astype(np.uint8)))
            else:
                stack = stack.astype(np.float32)
                stack[:, ~valid] = np.nan
                arrays.append((stack, None))
        writer.put(r0, acc.col0, arrays)
        pixels_done += cls.size

    def add(item: _TileItem, probs: np.ndarray | None) -> None:
        nonlocal acc, done
        a, b = item.strip
        if item.strip_first:
            acc = RowBandAccumulator(k, grid.band_height, b - a, col0=a)
        assert acc is not None
        if acc.base != item.row:
            flush(item, item.row)
        if probs is not None:
            w = weights.get(grid.size, grid.size, item.row == 0, item.row + grid.size >= grid.height,
                            item.col == 0, item.col + grid.size >= grid.width)
            acc.add(probs[:, : item.height, : item.width], w[: item.height, : item.width], item.row, item.col,
                    item.valid)
        done += 1
        if item.last_in_row and item.row_index == n_rows - 1:
            flush(item, grid.height)

    def emit(pending: list[tuple[_TileItem, Any]]) -> None:
        nonlocal run, skipped
        for item, res in pending:
            if res is None:
                skipped += 1
                add(item, None)
            else:
                batch_probs, idx = res
                add(item, batch_probs[idx])
        if on_progress is not None:
            on_progress(Progress(done, total, pixels_done, grid.height * grid.width, time.perf_counter() - t0))

    def run_batch(items: list[tuple[_TileItem, Any]]) -> Any:
        nonlocal run
        tiles = [it for it, _ in items if it.data is not None]
        if not tiles:
            return None
        x = np.stack([t.data for t in tiles])  # type: ignore[misc]
        run += len(tiles)
        return submit(x) if submit is not None else _Done(predictor.predict(x))

    # Pipelined: batch n+1 is submitted before batch n is blended (overlaps GPU work with blending).
    in_flight: tuple[list[tuple[_TileItem, Any]], Any] | None = None
    current: list[tuple[_TileItem, Any]] = []
    n_data = 0

    def finish(batch: list[tuple[_TileItem, Any]], handle: Any) -> None:
        probs = handle.result() if handle is not None else None
        j = 0
        resolved = []
        for it, _ in batch:
            if it.data is None:
                resolved.append((it, None))
            else:
                resolved.append((it, (probs, j)))
                j += 1
        emit(resolved)

    for row_items in _threaded(_iter_tiles(ds, band_idx, grid, strips, mean, std), maxsize=max(prefetch, 1)):
        for item in row_items:
            current.append((item, None))
            if item.data is not None:
                n_data += 1
            if n_data >= batch_size:
                handle = run_batch(current)
                if in_flight is not None:
                    finish(*in_flight)
                in_flight = (current, handle)
                current, n_data = [], 0
    handle = run_batch(current) if current else None
    if in_flight is not None:
        finish(*in_flight)
    if current:
        finish(current, handle)
    class_counts = {int(i): int(c) for i, c in enumerate(counts) if c}
    return {"total": total, "run": run, "skipped": skipped, "counts": class_counts}


class _Done:
    def __init__(self, value: np.ndarray) -> None:
        self.value = value

    def result(self) -> np.ndarray:
        return self.value
