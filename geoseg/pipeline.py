"""read -> tile -> predict -> blend -> write, streaming in bounded memory. Torch-free.

The raster is split into column strips (only very wide rasters have more than one)
and each strip is processed top to bottom, one row of tiles at a time:

* a reader thread reads the row band of each tile row once, in the raster's own data
  type, with per-band validity, and cuts it into tiles (views; tiles with no valid
  pixel are marked to skip);
* the main thread stacks a batch of tiles across rows, normalises it (masked band
  values become the band mean), runs the predictor, and adds each
  tile's probabilities times its blend window to a :class:`RowBandAccumulator`
  that covers only the rows the current tile row touches;
* when a tile row is complete, the rows that no later tile touches are final:
  they are normalised, turned into classes, and handed to a writer thread that
  writes them into the output GeoTIFFs.

Peak memory is about ``(8 * (classes + 1) + 1) * tile * strip_width`` bytes for the
accumulator plus ``prefetch + 2`` row bands of input (``(itemsize + 1) * bands * tile *
strip_width`` each) plus two batches, independent of raster height; ``max_strip_width``
bounds it for very wide rasters (:func:`buffer_bytes`). See docs/memory.md.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.blend import DEFAULT_BLEND, BLEND_WINDOWS, RowBandAccumulator, WeightCache
from geoseg.errors import Interrupted, NodataWarning, RasterWriteError, UsageError
from geoseg.io.atomic import check_destination
from geoseg.io.threads import prefetch_in_thread
from geoseg.io.raster import inspect, open_raster, read_window, resolve_bands
from geoseg.io.writer import GeoTiffSink
from geoseg.modelmeta import ModelMeta
from geoseg.resume import (RunState, clear_state, file_fingerprint, find_resume_state, remove_leftovers,
                           staging_path, state_path)
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
    resumed_from: tuple[int, int] | None = None

    @property
    def megapixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / max(self.seconds, 1e-9)


@dataclass
class _TileItem:
    row: int
    col: int
    data: np.ndarray | None  # (bands, size, size) a view: raw values, or normalized float32; None when skipped
    band_valid: np.ndarray | None  # (bands, size, size) bool per-band validity of raw data (a view), else None
    valid: np.ndarray  # (h, w) bool: any band valid, the part inside the raster
    height: int
    width: int
    last_in_row: bool
    row_index: int
    strip: tuple[int, int]
    strip_index: int
    strip_first: bool
    skip_until: int  # (first tile of a strip) rows of the strip already written by an earlier run


_END = object()


def _pad_to(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad the last two axes of ``a`` at their ends to ``height`` x ``width``."""
    ph, pw = height - a.shape[-2], width - a.shape[-1]
    if ph <= 0 and pw <= 0:
        return a
    pads = [(0, 0)] * (a.ndim - 2) + [(0, max(ph, 0)), (0, max(pw, 0))]
    return np.pad(a, pads, mode="reflect")


def _row_specs(grid: TileGrid, plan: list[tuple[int, tuple[int, int], list[int], list[int], int]]
               ) -> Iterator[tuple[int, tuple[int, int], int, int, list[int], int]]:
    """(strip index, strip, n-th row of the strip's plan, tile row index, tile columns, rows written)."""
    for s_i, strip, row_idx, cols, skip in plan:
        for n, i in enumerate(row_idx):
            yield s_i, strip, n, i, cols, skip


def _normalized(raw: np.ndarray, valid: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(raw - mean) / std`` as float32 over the band axis (-3); masked values become 0, the band mean."""
    x = raw.astype(np.float32, copy=False)
    x -= mean[:, None, None]
    x /= std[:, None, None]
    x[~valid] = 0.0
    return x


def _read_row(ds: Any, band_idx: list[int], grid: TileGrid,
              spec: tuple[int, tuple[int, int], int, int, list[int], int],
              mean: np.ndarray | None = None, std: np.ndarray | None = None) -> list[_TileItem]:
    """Read one tile row's band of rows once and cut it into tiles (views).

    With ``mean``/``std`` the band is normalized here to float32 (masked values become 0,
    the band mean): with several reader threads (the GPU default) that takes the work off
    the main thread, which feeds the GPU. Without, it stays in the raster's own type with
    a validity mask (3 bytes a uint16 value instead of 4; the CPU default, one reader),
    and the main thread normalizes per batch. Parts of a tile beyond the raster (small
    rasters, aligned last tiles) are filled by reflection.
    """
    s_i, (a, b), n, i, cols, skip = spec
    size = grid.size
    r = grid.row_starts[i]
    c_lo, c_hi = cols[0], cols[-1] + size
    c_end = min(c_hi, grid.width)
    h = min(size, grid.height - r)
    # raw values in the raster's own type: the row bands in flight are the reader's main memory
    data, valid = read_window(ds, band_idx, Window(c_lo, r, c_end - c_lo, h), native=True)
    anyvalid = valid.any(axis=0)
    band_valid: np.ndarray | None = None
    if mean is not None and std is not None:
        data = _pad_to(_normalized(data, valid, mean, std), size, c_hi - c_lo)
    else:
        data = _pad_to(data, size, c_hi - c_lo)
        band_valid = _pad_to(valid, size, c_hi - c_lo)
    del valid
    row_items = []
    for j, c in enumerate(cols):
        w = min(size, grid.width - c)
        v = anyvalid[:, c - c_lo: c - c_lo + w]
        cs = slice(c - c_lo, c - c_lo + size)
        has = bool(v.any())
        row_items.append(_TileItem(r, c, data[:, :, cs] if has else None,
                                   band_valid[:, :, cs] if has and band_valid is not None else None,
                                   v, h, w, j == len(cols) - 1, i, (a, b), s_i, n == 0 and j == 0, skip))
    return row_items


def _iter_tiles(ds: Any, band_idx: list[int], grid: TileGrid,
                plan: list[tuple[int, tuple[int, int], list[int], list[int], int]],
                mean: np.ndarray, std: np.ndarray, threads: int = 1, lookahead: int = 2
                ) -> Iterator[list[_TileItem]]:
    """Yield the tiles of each tile row, strip by strip, top to bottom.

    With ``threads > 1`` several row bands are read at once, each thread through its own
    dataset handle (GDAL handles are not thread-safe), at most ``threads + lookahead`` ahead,
    and yielded in order. Fast GPUs need this: one thread decodes DEFLATE at about 15 Mpx/s.
    """
    specs = _row_specs(grid, plan)
    if threads <= 1:
        for spec in specs:
            yield _read_row(ds, band_idx, grid, spec)  # raw: the main thread normalizes per batch
        return
    import collections
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()
    opened: list[Any] = []
    lock = threading.Lock()

    def read(spec: tuple[int, tuple[int, int], int, int, list[int], int]) -> list[_TileItem]:
        handle = getattr(local, "ds", None)
        if handle is None:
            handle = local.ds = open_raster(ds.name)
            with lock:
                opened.append(handle)
        return _read_row(handle, band_idx, grid, spec, mean, std)

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="geoseg-read")
    pending: collections.deque[Any] = collections.deque()
    try:
        for spec in specs:
            pending.append(pool.submit(read, spec))
            if len(pending) >= threads + lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)
        for handle in opened:
            handle.close()


class _Writer:
    """Background writer of finished row bands (keeps the main thread on the model).

    Every ``checkpoint_seconds`` it flushes the staging files and records the rows
    that are final in the run state, so an interrupted run can resume.
    """

    def __init__(self, sinks: list[GeoTiffSink], state: RunState, state_file: Path, checkpoint_seconds: float,
                 height: int, maxsize: int = 4) -> None:
        self.sinks = sinks
        self.state = state
        self.state_file = state_file
        self.every = checkpoint_seconds
        self.height = height
        self.last = time.monotonic()
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
            row, col, arrays, strip_i, upto = item
            try:
                for sink, (arr, mask) in zip(self.sinks, arrays):
                    sink.write(arr, row, col)
                    if mask is not None:
                        sink.write_mask(mask, row, col)
                self.state.strip, self.state.rows_done = strip_i, upto
                if time.monotonic() - self.last >= self.every:
                    self.checkpoint()
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.error = e

    def checkpoint(self) -> None:
        for s in self.sinks:
            s.flush()
        self.state.save(self.state_file)
        self.last = time.monotonic()

    def put(self, row: int, col: int, arrays: list[tuple[np.ndarray, np.ndarray | None]], strip_i: int,
            upto: int) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((row, col, arrays, strip_i, upto))

    def close(self) -> None:
        """Drain the queue, record the final checkpoint, re-raise any write error."""
        self.q.put(_END)
        self.t.join()
        if self.error is not None:
            raise self.error
        self.checkpoint()


def buffer_bytes(strip_width: int, tile: int, bands: int, classes: int, batch: int, prefetch: int,
                 gdal_cache_mb: float, read_threads: int = 1) -> int:
    """Upper estimate of the buffers one run holds (see docs/memory.md), in bytes.

    Accumulator ``(8*(K+1)+1)*T*S`` (float64 sums and weights, validity); row bands in flight ``(prefetch+1+threads)*(itemsize+1)*B*T*S``
    with the largest itemsize, 8 (raw values plus per-band validity; tiles are views); finished
    rows waiting for the writer ``4*T*S*(K+3)``; two batches in and out ``2*4*N*T*T*(B+K)``;
    the GDAL block cache.
    """
    s, t = strip_width + tile, tile
    acc = (8 * (classes + 1) + 1) * t * s
    rows = (prefetch + 1 + read_threads) * 9 * bands * t * s
    writes = 4 * t * s * (classes + 3)
    batches = 2 * 4 * batch * t * t * (bands + classes)
    return int(acc + rows + writes + batches + gdal_cache_mb * 2**20)


def strip_width_for_budget(max_memory_mb: float, tile: int, bands: int, classes: int, batch: int,
                           prefetch: int, gdal_cache_mb: float, read_threads: int = 1) -> int:
    """Widest column strip whose :func:`buffer_bytes` fit in ``max_memory_mb``."""
    budget = max_memory_mb * 2**20
    args = (tile, bands, classes, batch, prefetch)
    per_col = buffer_bytes(1, *args, 0, read_threads) - buffer_bytes(0, *args, 0, read_threads)
    fixed = buffer_bytes(0, *args, gdal_cache_mb, read_threads)
    width = int((budget - fixed) // max(per_col, 1))
    if width < tile:
        need = buffer_bytes(tile, *args, gdal_cache_mb, read_threads) / 2**20
        raise UsageError(f"--max-memory {max_memory_mb:g} MB is too small for tile {tile} and batch {batch} "
                         f"(needs about {need:.0f} MB); raise it or lower --tile-size/--batch-size")
    return max(tile, width)


def _check_disk(out_path: Path, prob_path: Path | None, width: int, height: int, classes: int, prob_dtype: str,
                resume: bool) -> None:
    """Refuse to start when the output directories lack space for staging files and outputs."""
    import shutil

    px = width * height
    # staging (uncompressed) plus the COG written beside it (at most the same size again)
    needs: dict[Path, float] = {out_path.parent: 2 * px}
    if prob_path is not None:
        per = (classes + 1) * 4 if prob_dtype == "float32" else classes + 2  # uint8: + the mask band
        needs[prob_path.parent] = needs.get(prob_path.parent, 0) + 2 * px * per
    for d, need in needs.items():
        if resume:
            need /= 2  # staging files already exist
        free = shutil.disk_usage(d if str(d) else ".").free
        if need > free:
            raise RasterWriteError(f"{d}: needs about {need / 1e9:.1f} GB free for this run's outputs and "
                                   f"staging files but only {free / 1e9:.1f} GB are free; free space or "
                                   "choose another output directory")


def default_output_paths(source: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None
                         ) -> dict[str, Path]:
    """``<out_dir>/<stem>_classes.tif``, ``_probabilities.tif``, ``_polygons.gpkg``, ``_preview.png``."""
    src = Path(source)
    d = Path(out_dir) if out_dir is not None else src.parent
    return {
        "classes": d / f"{src.stem}_classes.tif",
        "probabilities": d / f"{src.stem}_probabilities.tif",
        "polygons": d / f"{src.stem}_polygons.gpkg",
        "preview": d / f"{src.stem}_preview.png",
    }


def predict_raster(
    source: str | os.PathLike[str],
    model: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Predictor,
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
    resume: bool = False,
    checkpoint_seconds: float = 30.0,
    max_strip_width: int = 8192,
    max_memory_mb: float | None = None,
    prefetch: int = 2,
    read_threads: int | None = None,
    gdal_cache_mb: int = 64,
    on_progress: Callable[[Progress], None] | None = None,
) -> PredictionReport:
    """Segment ``source`` with ``model`` and write a class raster (and optionally probabilities).

    Args:
        source: input GeoTIFF (any size; read by windows).
        model: a checkpoint path, several (an ensemble: their class probabilities averaged), or an
            object with ``meta`` and ``predict`` (see :class:`Predictor`).
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
        resume: continue an interrupted run of the same input, model and options (see :mod:`geoseg.resume`).
        checkpoint_seconds: how often finished rows are flushed and recorded for resuming.
        max_strip_width: widest column strip held in memory (pixels).
        max_memory_mb: bound the run's buffers (accumulator, row bands, batches, GDAL cache) to about
            this many MB by narrowing the column strips (:func:`buffer_bytes`); the model itself is extra.
        prefetch: row bands read ahead.
        read_threads: threads reading row bands in parallel (default: 1 on CPU, where the model
            needs the cores; up to 8 when the predictor runs on a GPU).
        gdal_cache_mb: GDAL block cache for this run, in MB.
        on_progress: called after each batch with a :class:`Progress`.

    Returns:
        A :class:`PredictionReport`.

    Raises:
        GeosegError: bad input, model or output. Nothing is left at the destinations; after an
            interruption (KeyboardInterrupt, :class:`~geoseg.errors.Interrupted`) the staging
            files and state stay so that ``resume=True`` can continue.
    """
    t0 = time.perf_counter()
    if blend not in BLEND_WINDOWS:
        raise UsageError(f"--blend {blend!r}: choose one of {', '.join(BLEND_WINDOWS)}")
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if probability_dtype not in ("uint8", "float32"):
        raise UsageError("probability dtype must be uint8 or float32")
    out_path = Path(output) if output is not None else default_output_paths(source, None)["classes"]
    check_destination(out_path, overwrite=overwrite, inputs=[source])
    prob_path = Path(probabilities) if probabilities is not None else None
    if prob_path is not None:
        check_destination(prob_path, overwrite=overwrite, inputs=[source])
        if prob_path.resolve() == out_path.resolve():
            raise UsageError("class and probability outputs must be different files")

    # A bounded GDAL block cache: its default (5% of RAM) would grow with the raster.
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb), open_raster(source) as ds:
        info = inspect(ds)
        paths = ([model] if isinstance(model, (str, os.PathLike))
                 else list(model) if isinstance(model, (list, tuple)) else None)
        if paths is not None:
            from geoseg.predict import TorchPredictor

            predictor: Any = TorchPredictor.from_checkpoint(paths, device=device, tta=tta, precision=precision)
        else:
            predictor = model
        meta: ModelMeta = predictor.meta
        size = tile_size or meta.tile_size
        ov = meta.overlap if overlap is None else overlap
        band_idx = resolve_bands(ds, bands, meta.num_bands, meta.bands)
        grid = TileGrid(info.height, info.width, size, ov, meta.size_multiple)
        on_gpu = str(getattr(predictor, "device", "cpu")).startswith("cuda")
        threads = max(1, read_threads or (min(8, os.cpu_count() or 1) if on_gpu else 1))
        if max_memory_mb is not None:
            max_strip_width = min(max_strip_width, strip_width_for_budget(
                max_memory_mb, size, meta.num_bands, meta.num_classes, batch_size, prefetch, gdal_cache_mb,
                threads))
        strips = column_strips(info.width, size, ov, max_strip_width, meta.size_multiple)
        _check_disk(out_path, prob_path, info.width, info.height, meta.num_classes, probability_dtype, resume)
        schema = meta.schema
        k = meta.num_classes

        staged = [staging_path(out_path)] + ([staging_path(prob_path)] if prob_path else [])
        key = {
            "source": file_fingerprint(source),
            "model": (file_fingerprint(model) if isinstance(model, (str, os.PathLike))
                      else [file_fingerprint(p) for p in paths] if paths is not None
                      else {"type": type(predictor).__qualname__, "meta": meta.to_dict()}),
            "options": {"bands": band_idx, "tile_size": size, "overlap": ov, "blend": blend, "tta": tta,
                        "precision": getattr(predictor, "precision", precision),
                        "probabilities": str(prob_path) if prob_path else None,
                        "probability_dtype": probability_dtype, "strips": strips},
        }
        key = json.loads(json.dumps(key))  # the form it takes once saved (tuples become lists)
        state = find_resume_state(out_path, key, staged) if resume else RunState(key)
        if not resume:
            clear_state(out_path, staged)
        for dest in (out_path, prob_path):
            if dest is not None:
                remove_leftovers(dest)
        start = (state.strip, state.rows_done)

        tags = {"geoseg_classes": schema.to_json(), "geoseg_model_arch": meta.arch,
                "geoseg_tile_size": str(size), "geoseg_overlap": str(ov), "geoseg_blend": blend}
        common = dict(width=info.width, height=info.height, crs=info.crs, transform=info.transform,
                      resume=resume)
        sinks: list[GeoTiffSink] = []
        interrupted = ok = False
        try:
            sinks.append(GeoTiffSink(out_path, count=1, dtype="uint8", nodata=schema.nodata,
                                     colormap=schema.colormap(), descriptions=["class"], tags=tags,
                                     resampling="nearest", staging=staged[0], **common))
            if prob_path is not None:
                fdt = probability_dtype == "float32"
                sinks.append(GeoTiffSink(prob_path, count=k + 1, dtype=probability_dtype,
                                         nodata=float("nan") if fdt else None,
                                         descriptions=[f"p_{c.name}" for c in schema.classes] + ["confidence"],
                                         tags={**tags, "scale": "1" if fdt else "1/255"},
                                         resampling="average", mask=not fdt, staging=staged[1], **common))
            writer = _Writer(sinks, state, state_path(out_path), checkpoint_seconds, info.height)
            try:
                stats = _run(ds, band_idx, grid, strips, meta, predictor, blend, batch_size, schema.lookup_table(),
                             schema.nodata, writer, prob_path is not None, probability_dtype, prefetch,
                             on_progress, t0, start, threads)
            finally:
                writer.close()
            # two phases: every COG is built before any is renamed into place, so an interruption
            # leaves either all outputs or none (the renames take microseconds)
            for s in sinks:
                s.finalize()
            for s in sinks:
                s.publish()
            clear_state(out_path, staged)
            ok = True
        except (KeyboardInterrupt, Interrupted):
            interrupted = True
            raise
        finally:
            if not ok:
                for s in sinks:
                    s.abort(keep_staging=interrupted)
                if not interrupted:
                    clear_state(out_path, staged)

    widest = max(b - a for a, b in strips)
    return PredictionReport(
        classes_path=out_path, probabilities_path=prob_path,
        width=info.width, height=info.height, tiles_total=stats["total"], tiles_run=stats["run"],
        tiles_skipped=stats["skipped"], seconds=time.perf_counter() - t0,
        device=str(getattr(predictor, "device", "custom")), precision=getattr(predictor, "precision", "custom"),
        tile_size=size, overlap=ov, blend=blend, strips=len(strips),
        accumulator_bytes=(8 * (k + 1) + 1) * grid.band_height * widest,
        class_pixel_counts=stats["counts"], resumed_from=start if resume else None)


def _run(ds: Any, band_idx: list[int], grid: TileGrid, strips: list[tuple[int, int]], meta: ModelMeta,
         predictor: Any, blend: str, batch_size: int, lut: np.ndarray, nodata: int, writer: _Writer,
         want_probs: bool, prob_dtype: str, prefetch: int, on_progress: Callable[[Progress], None] | None,
         t0: float, start: tuple[int, int], read_threads: int = 1) -> dict[str, Any]:
    """Predict, blend and hand finished rows to ``writer``, from ``start`` = (strip, rows already written)."""
    mean = np.asarray(meta.mean, dtype=np.float32)
    std = np.asarray(meta.std, dtype=np.float32)
    k = meta.num_classes
    weights = WeightCache(blend, grid.overlap)
    rows = grid.row_starts
    plan = _plan(grid, strips, start)
    total = sum(len(plan_rows) * len(cols) for _, _, plan_rows, cols, _ in plan)
    counts = np.zeros(256, dtype=np.int64)
    done = run = skipped = 0
    pixels_done = 0
    acc: RowBandAccumulator | None = None
    skip_until = 0  # rows of the current strip already in the output (resume)
    submit = getattr(predictor, "submit", None)

    def flush(strip_i: int, upto: int) -> None:
        nonlocal pixels_done
        assert acc is not None
        r0 = acc.base
        idx, probs, valid = acc.pop_rows(upto, probabilities=want_probs)
        if upto <= skip_until:
            return
        cut = max(0, skip_until - r0)
        idx, probs, valid = idx[cut:], probs[:, cut:], valid[cut:]
        cls = lut[idx]
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
        writer.put(r0 + cut, acc.col0, arrays, strip_i, upto)
        pixels_done += cls.size

    def add(item: _TileItem, probs: np.ndarray | None) -> None:
        nonlocal acc, done, skip_until
        a, b = item.strip
        if item.strip_first:
            acc = RowBandAccumulator(k, grid.band_height, b - a, col0=a)
            acc.base = item.row
            skip_until = item.skip_until
        assert acc is not None
        if acc.base != item.row:
            flush(item.strip_index, item.row)
        if probs is not None:
            w = weights.get(grid.size, grid.size, item.row == 0, item.row + grid.size >= grid.height,
                            item.col == 0, item.col + grid.size >= grid.width)
            acc.add(probs[:, : item.height, : item.width], w[: item.height, : item.width], item.row, item.col,
                    item.valid)
        done += 1
        if item.last_in_row and item.row_index == len(rows) - 1:
            flush(item.strip_index, grid.height)

    def finish(batch: list[_TileItem], handle: Any) -> None:
        nonlocal skipped
        probs = handle.result() if handle is not None else None
        j = 0
        for it in batch:
            if it.data is None:
                skipped += 1
                add(it, None)
            else:
                add(it, probs[j])  # type: ignore[index]
                j += 1
        if on_progress is not None:
            on_progress(Progress(done, total, pixels_done, grid.height * grid.width, time.perf_counter() - t0))

    def submit_batch(items: list[_TileItem]) -> Any:
        nonlocal run
        todo = [it for it in items if it.data is not None]
        if not todo:
            return None
        run += len(todo)
        if todo[0].band_valid is not None:  # raw values (one reader thread): normalize the batch here
            x = _normalized(np.stack([it.data for it in todo]),  # type: ignore[misc]
                            np.stack([it.band_valid for it in todo]), mean, std)  # type: ignore[misc]
            return submit(x) if submit is not None else _Done(predictor.predict(x))
        tiles = [it.data for it in todo]  # normalized by the reader threads
        if submit is not None:
            return submit(tiles)  # copied straight into the device's pinned buffer, no stacked copy
        return _Done(predictor.predict(np.stack(tiles)))  # type: ignore[arg-type]

    # Pipelined: batch n+1 is submitted before batch n is blended (overlaps GPU work with blending).
    in_flight: tuple[list[_TileItem], Any] | None = None
    current: list[_TileItem] = []
    n_data = 0
    rows_in = _iter_tiles(ds, band_idx, grid, plan, mean, std, read_threads, prefetch)
    source = prefetch_in_thread(rows_in, prefetch, "geoseg-reader") if read_threads <= 1 else rows_in
    try:
        for row_items in source:
            for item in row_items:
                current.append(item)
                n_data += item.data is not None
                if n_data >= batch_size:
                    handle = submit_batch(current)
                    if in_flight is not None:
                        finish(*in_flight)
                    in_flight = (current, handle)
                    current, n_data = [], 0
    finally:
        source.close()  # stop the readers now, before the caller closes the dataset
    handle = submit_batch(current) if current else None
    if in_flight is not None:
        finish(*in_flight)
    if current:
        finish(current, handle)
    if total and run == 0:
        warnings.warn(f"{ds.name}: no valid pixels (all nodata); the outputs are entirely nodata", NodataWarning,
                      stacklevel=3)
    return {"total": total, "run": run, "skipped": skipped,
            "counts": {int(i): int(c) for i, c in enumerate(counts) if c}}


def _plan(grid: TileGrid, strips: list[tuple[int, int]], start: tuple[int, int]
          ) -> list[tuple[int, tuple[int, int], list[int], list[int], int]]:
    """(strip index, strip, tile row indexes, tile columns, rows written) still to run, from ``start``.

    Within the resumed strip, rows ``[0, rows_done)`` are already written; the first tile row
    to run is the first that reaches past ``rows_done`` (it still adds to unwritten rows).
    """
    s0, rows_done = start
    if rows_done >= grid.height:
        s0, rows_done = s0 + 1, 0
    plan = []
    for s_i, (a, b) in enumerate(strips):
        if s_i < s0:
            continue
        cols = tiles_touching(grid.col_starts, grid.size, a, b)
        skip = rows_done if s_i == s0 else 0
        row_idx = [i for i, r in enumerate(grid.row_starts) if r + grid.size > skip or skip == 0]
        plan.append((s_i, (a, b), row_idx, cols, skip))
    return plan


class _Done:
    def __init__(self, value: np.ndarray) -> None:
        self.value = value

    def result(self) -> np.ndarray:
        return self.value
