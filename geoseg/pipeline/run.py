"""``predict_raster``: read -> tile -> predict -> blend -> write, streaming in bounded memory.

The stages, one module each:

* :mod:`geoseg.pipeline.plan`: which tile rows run, strip by strip (resume included);
* :mod:`geoseg.pipeline.read`: row bands of raw values, read by several threads into
  page-locked buffers on a GPU;
* :mod:`geoseg.predict.stream` (torch): everything per pixel on the predictor's device:
  validity, normalization, tiles, batches, the model, blending, argmax, classes, nodata,
  probabilities; only finished rows come back;
* :mod:`geoseg.pipeline.write`: a writer thread puts finished rows into the staging
  GeoTIFFs and records them for ``--resume``; :class:`~geoseg.io.writer.GeoTiffSink` turns
  them into COGs at the end;
* :mod:`geoseg.pipeline.budget`: memory and disk checks before the start.

This module imports no torch: the device stages are loaded when a run starts. Peak memory
is independent of raster height (docs/memory.md).

``predict_raster`` is the one place where the stages are wired together (its docstring is a
third of it); the outputs' creation arguments (:func:`_output_specs`), starting the reader
(:func:`_start_reading`) and the device stages' loop (:func:`_stream`) are beside it.
"""

from __future__ import annotations

import contextlib
import json
from functools import partial
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from affine import Affine

from geoseg.blend import BLEND_WINDOWS, DEFAULT_BLEND
from geoseg.classes import SCHEMA_TAG
from geoseg.errors import Interrupted, NodataWarning, ResumeWarning, UsageError
from geoseg.io.atomic import check_destination, destination_lock
from geoseg.io.gdalcache import block_cache
from geoseg.io.heap import HeapTrimmer, release_free_heap, streaming_heap
from geoseg.io.raster import inspect, open_raster, resolve_bands
from geoseg.io.threads import Prefetcher
from geoseg.io.writer import GeoTiffSink
from geoseg.models.meta import ModelMeta
from geoseg.io.paths import beside, is_virtual, name_stem
from geoseg.pipeline.budget import check_disk, fit_strip_width
from geoseg.pipeline.plan import plan_block, plan_run, tile_grid
from geoseg.pipeline.read import GDAL_DECODE, RowBandReader, block_cache_bytes, default_read_threads
from geoseg.pipeline.write import RowWriter
from geoseg.resume import (RunState, check_staging, clear_state, file_fingerprint, find_resume_state, remove_leftovers,
                           source_fingerprint, staging_path, state_path)
from geoseg.styles import raster_qml, write_qml
from geoseg.tiling import column_strips


class Predictor(Protocol):
    """What the pipeline needs from a model: its metadata and batched probabilities.

    Any object with these runs on the CPU; :class:`geoseg.predict.TorchPredictor` (and
    :class:`geoseg.predict.null.NullPredictor`) also offer ``forward_tensor`` and a ``device``,
    and run every stage on that device.
    """

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
    #: seconds spent: setup, waiting for input, the main thread queueing the device stages,
    #: draining the device and the writer, writing the COGs
    timings: dict[str, float] = field(default_factory=dict)
    #: how each output (classes, probabilities) was created: the arguments of its
    #: :class:`~geoseg.io.writer.GeoTiffSink` but the paths (assembling block parts uses them)
    sink_specs: list[dict[str, Any]] = field(default_factory=list)

    #: pixels this run computed (fewer than width x height after ``--resume``)
    pixels_processed: int | None = None

    @property
    def megapixels_per_second(self) -> float:
        """Speed of this run: the pixels it processed (not those an earlier run wrote) per second."""
        done = self.width * self.height if self.pixels_processed is None else self.pixels_processed
        return done / 1e6 / max(self.seconds, 1e-9)


def default_output_paths(source: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None,
                         stem: str | None = None) -> dict[str, Path]:
    """``<out_dir>/<stem>_classes.tif``, ``_probabilities.tif``, ``_polygons.gpkg``, ``_preview.png``
    (``stem``: the source's unless given, e.g. by :func:`geoseg.batch.plan_outputs`).

    A URL or ``/vsi`` input has no folder to write beside: its outputs go to the working directory
    unless ``out_dir`` says where.
    """
    stem = stem or name_stem(source)
    d = Path(out_dir) if out_dir is not None else beside(source)
    return {
        "classes": d / f"{stem}_classes.tif",
        "probabilities": d / f"{stem}_probabilities.tif",
        "polygons": d / f"{stem}_polygons.gpkg",
        "preview": d / f"{stem}_preview.png",
    }


def predict_raster(
    source: str | os.PathLike[str],
    model: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Predictor,
    output: str | os.PathLike[str] | None = None,
    *,
    probabilities: str | os.PathLike[str] | None = None,
    probability_dtype: str = "uint8",
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
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
    gdal_cache_mb: float | None = None,
    accumulate: str = "auto",
    compile: bool = False,
    threads: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    rows: tuple[int, int] | None = None,
    load_model: Callable[..., Any] | None = None,
) -> PredictionReport:
    """Segment ``source`` with ``model`` and write a class raster (and optionally probabilities).

    Args:
        source: input GeoTIFF (any size; read by windows).
        model: a checkpoint path, several (an ensemble: their class probabilities averaged), an ONNX
            model (``.onnx``, run by onnxruntime, :class:`geoseg.predict.OnnxPredictor`), or an
            object with ``meta`` and ``predict`` (see :class:`Predictor`).
        output: class raster path (default ``<source stem>_classes.tif`` beside the source).
        probabilities: also write per-class probabilities plus a confidence band here.
        probability_dtype: ``uint8`` (0-255 scaled, nodata in the mask band) or ``float32`` (NaN nodata).
        bands: 1-based input bands in model order (default: all non-alpha bands).
        nodata: an input value to treat as nodata in every band, beside the raster's own nodata and
            masks (an undeclared zero collar); such pixels get the output nodata.
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
        read_threads: threads reading each row band in parallel (default:
            :func:`geoseg.pipeline.read.default_read_threads`: with a GPU all cores but two, at most 16; on a
            CPU 2 for a compressed tiled GeoTIFF, which GDAL then decodes on 2 threads, else 1;
            :data:`geoseg.pipeline.read.GDAL_DECODE` says where GDAL's decoding threads are used).
        gdal_cache_mb: GDAL block cache for this run, in MB (default: enough for the row bands in
            flight, :func:`geoseg.pipeline.read.block_cache_bytes`; 64 MB with ``max_memory_mb``).
        accumulate: blending sums ``auto`` (float32 on every device), ``float32`` or ``float64``
            (the exactness reference: tiled = whole-image to 1e-6; float32 is within 1e-5).
        compile: compile the model with ``torch.compile`` (checkpoint paths only; see docs/gpu.md).
        threads: CPU threads for the model (checkpoint paths only; default every core, or a Dask worker's
            own). Runs with the same number give the same bytes; on some CPUs (oneDNN's AVX-512 kernels)
            another number changes the model's last float bits, and so can move a probability by one step
            (docs/reliability.md#determinism).
        on_progress: called after each batch with a :class:`Progress`.
        rows: write only output rows ``[r0, r1)`` (tile row starts, :func:`geoseg.pipeline.plan.block_bounds`)
            into ``output``/``probabilities`` as plain GeoTIFF *parts* of that many rows, exactly the
            bytes a whole run computes there; :func:`geoseg.pipeline.assemble.assemble_blocks` joins the
            parts into the whole run's COGs (the report's ``sink_specs``). No resume inside a block.
        load_model: builds the predictor from checkpoint paths (default
            :meth:`geoseg.predict.TorchPredictor.from_checkpoint`; a Dask worker passes its cache).

    Returns:
        A :class:`PredictionReport`.

    Raises:
        GeosegError: bad input, model or output. Nothing is left at the destinations; after an
            interruption (KeyboardInterrupt, :class:`~geoseg.errors.Interrupted`) the staging
            files and state stay so that ``resume=True`` can continue.
    """
    t0 = time.perf_counter()
    if blend not in BLEND_WINDOWS:
        raise UsageError(f"`blend` {blend!r}: choose one of {', '.join(BLEND_WINDOWS)}")
    if batch_size < 1:
        raise UsageError("`batch_size` must be >= 1")
    if probability_dtype not in ("uint8", "float32"):
        raise UsageError("probability dtype must be uint8 or float32")
    if accumulate not in ("auto", "float32", "float64"):
        raise UsageError(f"accumulate={accumulate!r}: choose auto, float32 or float64")
    if bands is not None and (isinstance(bands, (str, bytes)) or not all(isinstance(b, (int, np.integer))
                                                                        for b in bands)):
        raise UsageError(f"`bands` {bands!r}: give 1-based band numbers as integers, e.g. [4, 3, 2, 8]")
    for name, value, low in (("tile_size", tile_size, 1), ("overlap", overlap, 0), ("threads", threads, 1),
                             ("read_threads", read_threads, 1), ("checkpoint_seconds", checkpoint_seconds, 0),
                             ("prefetch", prefetch, 1)):
        if value is not None and value < low:  # a 0 meant "the default" by accident, or went unchecked
            raise UsageError(f"`{name}` {value}: must be >= {low}")
    for path in (output, probabilities):
        if path is not None and Path(path).suffix.lower() not in (".tif", ".tiff"):
            raise UsageError(f"{path}: rasters are written as GeoTIFF (COG); name it .tif")
    out_path = Path(output) if output is not None else default_output_paths(source, None)["classes"]
    check_destination(out_path, overwrite=overwrite, inputs=[source])
    prob_path = Path(probabilities) if probabilities is not None else None
    if prob_path is not None:
        check_destination(prob_path, overwrite=overwrite, inputs=[source])
        if prob_path.resolve() == out_path.resolve():
            raise UsageError("class and probability outputs must be different files")

    # one run at a time per destination: a second one gets a clear error instead of destroying this one
    with destination_lock(out_path), destination_lock(prob_path):
        # A bounded GDAL block cache: its default (5% of RAM) would grow with the raster.
        with block_cache(64 << 20), open_raster(source) as ds, contextlib.ExitStack() as reading:
            info = inspect(ds)
            paths = ([model] if isinstance(model, (str, os.PathLike))
                     else list(model) if isinstance(model, (list, tuple)) else None)
            if paths is not None:
                from geoseg.predict import load_predictor

                predictor: Any = (load_model or load_predictor)(paths, device=device, tta=tta, precision=precision,
                                                                compile=compile, threads=threads)
            else:
                predictor = model
            meta: ModelMeta = predictor.meta
            if hasattr(predictor, "check_tile"):  # a graph of fixed tile size (ONNX)
                predictor.check_tile(tile_size or meta.tile_size)
            grid = tile_grid(info.height, info.width, meta, tile_size, overlap)
            size, ov = grid.size, grid.overlap
            band_idx = resolve_bands(ds, bands, meta.num_bands, meta.bands)
            on_gpu = str(getattr(predictor, "device", "cpu")).startswith("cuda")
            threads = max(1, read_threads or default_read_threads(
                ds, on_gpu=on_gpu, model_threads=int(getattr(predictor, "threads", os.cpu_count() or 1))))
            max_strip_width = fit_strip_width(max_strip_width, min(info.width, max_strip_width), max_memory_mb,
                                              size, meta.num_bands, meta.num_classes, min(batch_size, len(grid)),
                                              prefetch, gdal_cache_mb or 64)  # no batch is larger than the raster
            strips = column_strips(info.width, size, ov, max_strip_width, meta.size_multiple)
            widest = max(b - a for a, b in strips)
            cache = (int(gdal_cache_mb * 2**20) if gdal_cache_mb is not None else 64 * 2**20 if max_memory_mb
                     else block_cache_bytes(ds, band_idx, widest, size))
            r0, r1 = rows if rows is not None else (0, info.height)
            if rows is not None:
                resume = False  # a block is the unit of resuming: it is complete or rerun
                if r0 not in grid.row_starts or not (r1 == grid.height or r1 in grid.row_starts) or r1 <= r0:
                    raise UsageError(f"rows {r0}..{r1} are not a block of the tile grid (see block_bounds)")
            check_disk(out_path, prob_path, info.width, r1 - r0, meta.num_classes, probability_dtype, resume)
            # a remote source's fingerprint reads through ``ds``, which the reader thread is about to use
            # (a GDAL handle serves one thread at a time)
            source_key = source_fingerprint(source, ds) if is_virtual(source) else None
            reading.enter_context(block_cache(cache))  # process-wide in GDAL: the reader threads' handles too
            start_reading = partial(_start_reading, reading, ds, band_idx, threads=threads, prefetch=prefetch,
                                    on_gpu=on_gpu, nodata=nodata)
            # Unless a resume state decides where the run starts, reading starts now: the first row bands
            # are decoded while the outputs are set up (fingerprints, staging files, the first checkpoint).
            plan = plan_block(grid, strips, r0, r1) if rows is not None else None if resume else plan_run(grid, strips)
            early = start_reading(plan) if plan is not None else None

            staged = [staging_path(out_path)] + ([staging_path(prob_path)] if prob_path else [])
            key = {
                "source": source_key or source_fingerprint(source, ds),  # a local file: hashed, not read via ds
                "model": (file_fingerprint(model) if isinstance(model, (str, os.PathLike))
                          else [file_fingerprint(p) for p in paths] if paths is not None
                          else {"type": type(predictor).__qualname__, "meta": meta.to_dict()}),
                "options": {"bands": band_idx, "nodata": nodata, "tile_size": size, "overlap": ov, "blend": blend,
                            "tta": tta,
                            "precision": getattr(predictor, "precision", precision),
                            "probabilities": str(prob_path) if prob_path else None,
                            "probability_dtype": probability_dtype, "strips": strips},
            }
            key = json.loads(json.dumps(key))  # the form it takes once saved (tuples become lists)
            found = find_resume_state(out_path, key, staged) if resume else None
            if resume and found is None:
                warnings.warn(f"{out_path}: nothing to resume here; started from the beginning", ResumeWarning,
                              stacklevel=2)
            resume = found is not None
            if resume:
                check_staging(out_path, staged)
            state = found or RunState(key)
            if not resume:
                clear_state(out_path, staged)
            for dest in (out_path, prob_path):
                if dest is not None:
                    remove_leftovers(dest)
            start = (state.strip, state.rows_done)

            specs = _output_specs(meta, info, grid, blend, probability_dtype if prob_path is not None else None)
            part = {} if rows is None else dict(height=r1 - r0, transform=info.transform * Affine.translation(0, r0),
                                                row_offset=r0, cog=False)
            sinks: list[GeoTiffSink] = []
            interrupted = ok = False
            try:
                for dest, spec, stage in zip([out_path, prob_path], specs, staged):
                    assert dest is not None  # specs has one entry a destination
                    sinks.append(GeoTiffSink(dest, staging=stage, resume=resume, **{**spec, **part}))
                writer = RowWriter(sinks, state, state_path(out_path), checkpoint_seconds)
                writer.checkpoint()  # the run state exists from the first moment: --resume works after any kill
                streamed = False
                try:
                    if early is None:
                        plan = plan_run(grid, strips, start)
                    reader, reads = early or start_reading(plan)
                    stats = _stream(ds, reader, reads, predictor, blend=blend,
                                    batch_size=batch_size, writer=writer, probabilities=prob_path is not None,
                                    prob_dtype=probability_dtype, accumulate=accumulate, on_progress=on_progress,
                                    t0=t0)
                    streamed = True
                finally:
                    # no last checkpoint after a complete stream: the COG step closes the staging files next,
                    # and a run stopped during it resumes from its last checkpoint (checkpoint_seconds)
                    writer.close(checkpoint=not streamed)
                # two phases: every COG is built before any is renamed into place, so an interruption
                # leaves either all outputs or none (the renames take microseconds)
                t_cog = time.perf_counter()
                for s in sinks:
                    s.finalize()
                for s in sinks:
                    s.publish()
                if rows is None:  # a block's part has no style; the joined COG gets it (assemble_blocks)
                    write_qml(out_path, raster_qml(meta.schema), overwrite=overwrite)
                clear_state(out_path, staged)
                stats["timings"]["writing COGs"] = time.perf_counter() - t_cog
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

    return PredictionReport(
        classes_path=out_path, probabilities_path=prob_path,
        width=info.width, height=info.height, tiles_total=stats["total"], tiles_run=stats["run"],
        tiles_skipped=stats["skipped"], seconds=time.perf_counter() - t0,
        device=str(getattr(predictor, "device", "custom")), precision=getattr(predictor, "precision", "custom"),
        tile_size=size, overlap=ov, blend=blend, strips=len(strips),
        accumulator_bytes=(((8 if accumulate == "float64" else 4) * (meta.num_classes + 1) + 1) * grid.band_height
                           * widest),
        class_pixel_counts=stats["counts"], resumed_from=start if resume else None, timings=stats["timings"],
        sink_specs=specs,
        pixels_processed=(info.width * (r1 - r0) if rows is not None
                          else info.width * info.height - _pixels_written_before(strips, start, info.height)))


def _pixels_written_before(strips: Sequence[tuple[int, int]], start: tuple[int, int], height: int) -> int:
    """Pixels an earlier run wrote: the strips before ``start``'s, and its rows in that one."""
    strip, rows = start
    return sum((b - a) * height for a, b in strips[:strip]) + (rows * (strips[strip][1] - strips[strip][0])
                                                                 if strip < len(strips) else 0)


def _output_specs(meta: ModelMeta, info: Any, grid: Any, blend: str, probability_dtype: str | None
                  ) -> list[dict[str, Any]]:
    """The :class:`~geoseg.io.writer.GeoTiffSink` arguments (but the paths) of the class raster and, with a
    ``probability_dtype``, of the probabilities: georeferencing, class schema and colours, band names,
    the tags that say how they were made, scale, nodata or mask, overview resampling."""
    schema = meta.schema
    tags = {SCHEMA_TAG: schema.to_json(), "geoseg_model_arch": meta.arch,
            "geoseg_tile_size": str(grid.size), "geoseg_overlap": str(grid.overlap), "geoseg_blend": blend}
    common = dict(width=info.width, height=info.height, crs=info.crs, transform=info.transform)
    specs = [dict(count=1, dtype="uint8", nodata=schema.nodata, colormap=schema.colormap(), classes=schema,
                  descriptions=["class"], tags=tags, resampling="nearest", **common)]
    if probability_dtype is not None:
        fdt = probability_dtype == "float32"
        specs.append(dict(count=meta.num_classes + 1, dtype=probability_dtype, nodata=float("nan") if fdt else None,
                          descriptions=[f"p_{c.name}" for c in schema.classes] + ["confidence"],
                          tags={**tags, "scale": "1" if fdt else "1/255"},
                          scale=None if fdt else 1 / 255,  # GDAL band scale: tools read 0-1
                          resampling="average", mask=not fdt, **common))
    return specs


def _start_reading(stack: contextlib.ExitStack, ds: Any, band_idx: list[int], plan: Any, *, threads: int,
                   prefetch: int, on_gpu: bool, nodata: float | None) -> tuple[RowBandReader, Prefetcher]:
    """Start reading ``plan``'s row bands (page-locked buffers on a GPU: copied to it asynchronously, with no
    staging copy); the reading stops when ``stack`` closes, if not before."""
    alloc: Callable[[int], tuple[np.ndarray, Any]] | None = None
    if on_gpu:
        from geoseg.predict.stream import pinned_alloc as alloc
    reader = RowBandReader(ds, band_idx, plan, threads=threads, ahead=prefetch, alloc=alloc, nodata=nodata,
                           gdal_decode=GDAL_DECODE["cuda" if on_gpu else "cpu"])
    return reader, stack.enter_context(contextlib.closing(reader.prefetcher())).start()


def _stream(ds: Any, reader: RowBandReader, bands: Prefetcher, predictor: Any, *, blend: str, batch_size: int,
            writer: RowWriter, probabilities: bool, prob_dtype: str, accumulate: str,
            on_progress: Callable[[Progress], None] | None, t0: float) -> dict[str, Any]:
    """Run the device stages on the row bands ``bands`` (being read by ``reader``); the run's counts."""
    from geoseg.predict.stream import StreamRunner

    meta: ModelMeta = predictor.meta
    plan = reader.plan
    grid = plan.grid
    total = plan.tiles

    def progress(tiles: int, pixels: int) -> None:
        if on_progress is not None:
            on_progress(Progress(tiles, total, pixels, grid.height * grid.width, time.perf_counter() - t0))

    runner = StreamRunner(predictor, plan, mean=meta.mean, std=meta.std, blend=blend, batch_size=batch_size,
                          lut=meta.schema.lookup_table(), nodata=meta.schema.nodata, probabilities=probabilities,
                          prob_dtype=prob_dtype, emit=writer.put, accumulate=accumulate, on_batch=progress)
    waited, t_loop = 0.0, time.perf_counter()
    # on a CPU no fresh mmap (and its page faults) for every large tensor, and a trim only when freed
    # memory piles up; a GPU's host side allocates little per batch and keeps its heap as it was measured
    # (trimmed after every band)
    trim = HeapTrimmer() if not runner.cuda else release_free_heap
    try:
        with streaming_heap() if not runner.cuda else contextlib.nullcontext():
            while True:
                t = time.perf_counter()
                band = next(bands, None)
                waited += time.perf_counter() - t
                if band is None:
                    break
                runner.push(band, partial(band.release, reader.buffers))
                trim()  # freed memory piling up band after band: else the peak creeps up with height
            t = time.perf_counter()
            stats = runner.close()
        stats["timings"] = {"setup": t_loop - t0, "waiting for input": waited,
                            "main thread (device stages)": t - t_loop - waited,
                            "draining the device and writer": time.perf_counter() - t}
    finally:
        bands.close()  # stop the readers now, before the caller closes the dataset
        runner.release()
    if stats["overflow"]:
        n = stats["overflow"]
        warnings.warn(f"{ds.name}: {n} pixel{'s hold' if n != 1 else ' holds'} values beyond float32's range "
                      "after normalization; nodata there", NodataWarning, stacklevel=3)
    if stats["nonfinite"]:
        n = stats["nonfinite"]
        warnings.warn(f"{ds.name}: the model gave NaN or infinite probabilities for {n} pixel{'s' if n != 1 else ''} "
                      "(usually near extreme input values, such as an undeclared fill value); nodata there: declare "
                      "the fill value with `nodata`", NodataWarning, stacklevel=3)
    if total and stats["run"] == 0:
        warnings.warn(f"{ds.name}: no valid pixels (all nodata); the outputs are entirely nodata", NodataWarning,
                      stacklevel=3)
    return stats
