"""Client side: send many inputs, or blocks of one large input, to a Dask cluster; gather the outputs.

Small inputs run whole, one task each. An input larger than a block (:func:`block_rows_for`)
is split into blocks of rows on the tile grid (:func:`geoseg.pipeline.plan.block_bounds`),
one task each; every task writes its parts into ``.<output>.geoseg-tmp-blocks/`` beside
the output, and once all parts of an input are there the client joins them
(:func:`geoseg.pipeline.assemble.assemble_blocks`) into the same COGs a single-process run
writes. A block's parts are renamed into place only when complete, so with ``resume`` the
blocks already there are kept (when the input, model and options are the same) and only the
others run again. A failure of one input is recorded with its name; the others go on.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from geoseg.batch import BatchSummary
from geoseg.errors import GeosegError, Interrupted, UsageError

#: inputs above this many pixels are split into blocks of about this many pixels (64 M pixels:
#: a few minutes of a GPU each, a few hundred MB of parts)
BLOCK_PIXELS = 64 << 20


def block_rows_for(width: int, block_rows: int | None) -> int:
    """Rows per block: ``block_rows`` or about :data:`BLOCK_PIXELS` pixels."""
    return block_rows or max(1, BLOCK_PIXELS // max(1, width))


@dataclass
class InferJob:
    """One input and its outputs (``probabilities`` None: not asked; ``polygons``: written after)."""

    source: str
    classes: Path
    probabilities: Path | None = None
    polygons: Path | None = None
    # filled while running
    bounds: list[tuple[int, int]] = field(default_factory=list)
    futures: list[Any] = field(default_factory=list)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: bool = False

    @property
    def outputs(self) -> list[Path]:
        return [self.classes] + ([self.probabilities] if self.probabilities else [])

    def blocks_dir(self) -> Path:
        return self.classes.with_name(f".{self.classes.name}.geoseg-tmp-blocks")

    def stop_flag(self, since_ns: int) -> Path:
        """The file that tells this job's running tasks to stop (the client was interrupted); a temporary
        name of the class output, which its next run removes (:func:`geoseg.resume.remove_leftovers`)."""
        from geoseg.io.atomic import TMP_MARKER

        return self.classes.parent / f".{self.classes.stem}{TMP_MARKER}-stop-{since_ns}"

    def part(self, out: int, b: int) -> Path:
        r0, r1 = self.bounds[b]
        return self.blocks_dir() / f"{'classes' if out == 0 else 'probabilities'}-rows-{r0:09d}-{r1:09d}.tif"


def infer_many(client: Any, jobs: Sequence[InferJob], model: Sequence[str], options: dict[str, Any], *,
               overwrite: bool = False, resume: bool = False, block_rows: int | None = None,
               summary: BatchSummary | None = None, on_task: Callable[[int, int], None] | None = None,
               on_done: Callable[[InferJob, dict[str, Any]], None] | None = None) -> BatchSummary:
    """Run ``jobs`` on ``client``'s cluster; each input's failure is recorded in the summary by name.

    ``on_task(done, total)`` after each task; ``on_done(job, result)`` after each input's outputs
    are in place (the client's follow-up: printing, a preview).
    """
    from distributed import as_completed

    from geoseg.distributed.tasks import infer_task
    from geoseg.io.atomic import check_destination

    summary = summary if summary is not None else BatchSummary()
    since = time.time_ns()
    model = [str(Path(m).resolve()) for m in model]
    futures: dict[Any, tuple[InferJob, int]] = {}
    for i, job in enumerate(jobs):
        try:
            for dest in job.outputs + ([job.polygons] if job.polygons else []):
                check_destination(dest, overwrite=overwrite, inputs=[job.source])
            job.bounds = _bounds(job, model, options, block_rows)
            if len(job.bounds) > 1:
                _check_bands(job, model, options)  # here, not in each block's task (and no block folder left)
                done_blocks = _prepare_blocks(job, model, options, resume)
            else:
                done_blocks = set()
        except GeosegError as e:
            summary.fail(job.source, e)
            continue
        for b, rows in enumerate(job.bounds):
            if b in done_blocks:
                job.results[b] = {"again": True}
                continue
            split = len(job.bounds) > 1
            f = client.submit(infer_task, job.source, model, str(job.part(0, b) if split else job.classes),
                              str(job.part(1, b) if split else job.probabilities) if job.probabilities else None,
                              options, overwrite or split, resume and not split, since, rows if split else None,
                              str(job.stop_flag(since)), pure=False,
                              key=f"geoseg-infer-{Path(job.source).name}-{i}-{b}-{since}")
            futures[f] = (job, b)
            job.futures.append(f)
    total = len(futures)
    pending_vectors: dict[Any, InferJob] = {}
    if on_task is not None:
        on_task(0, total)
    seq = as_completed(list(futures), loop=client.loop)
    with _stopping(client, lambda: [j.stop_flag(since) for j in jobs if any(not f.done() for f in j.futures)],
                   lambda: [*futures, *pending_vectors]):
        _collect_all(client, seq, futures, summary, pending_vectors, total, overwrite, on_task, on_done)
    return summary


@contextlib.contextmanager
def _stopping(client: Any, flags: Callable[[], list[Path]], futures: Callable[[], list[Any]]) -> Iterator[None]:
    """Ctrl-C / SIGTERM while the cluster works: tell the running tasks to stop (they keep what ``resume``
    continues from; before, they ran to the end and published outputs after the command had exited), drop
    the waiting ones, and say how to continue."""
    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        for flag in flags():  # the jobs still running; removed by the next run of that output (a leftover)
            with contextlib.suppress(OSError):
                flag.touch()
        with contextlib.suppress(Exception):  # a cluster already gone has nothing left to cancel
            client.cancel(futures())
        raise Interrupted("interrupted; the cluster's tasks stop within seconds, and the rows and blocks they "
                          "finished are kept: run the same command with --resume to continue") from None


def _collect_all(client: Any, seq: Any, futures: dict[Any, tuple[InferJob, int]], summary: BatchSummary,
                 pending_vectors: dict[Any, InferJob], total: int, overwrite: bool,
                 on_task: Callable[[int, int], None] | None,
                 on_done: Callable[[InferJob, dict[str, Any]], None] | None) -> None:
    finished = 0
    for f in seq:
        if f in pending_vectors:
            job = pending_vectors.pop(f)
            _collect(job, f, summary, on_done)
            continue
        job, b = futures[f]
        finished += 1
        if on_task is not None:
            on_task(finished, total)
        if job.failed:
            continue
        try:
            job.results[b] = f.result()
        except Exception as e:  # noqa: BLE001 - reported with the input's name; the others go on
            job.failed = True
            summary.fail(job.source, _why(e))
            for g in job.futures:
                g.cancel()
            continue
        if len(job.results) == len(job.bounds):
            _finish(client, job, summary, pending_vectors, seq, overwrite, on_done)


def _finish(client: Any, job: InferJob, summary: BatchSummary, pending_vectors: dict[Any, InferJob], seq: Any,
            overwrite: bool, on_done: Callable[[InferJob, dict[str, Any]], None] | None) -> None:
    """All of ``job``'s tasks are done: join its blocks, then send its polygons to the cluster."""
    from geoseg.distributed.tasks import vectorize_task
    from geoseg.resume import remove_leftovers

    try:
        if len(job.bounds) > 1:
            specs = next(r["specs"] for r in job.results.values() if "specs" in r)
            from geoseg.pipeline.assemble import assemble_blocks

            assemble_blocks(job.outputs, specs, [[job.part(o, b) for b in range(len(job.bounds))]
                                                 for o in range(len(job.outputs))], job.bounds, overwrite)
            shutil.rmtree(job.blocks_dir(), ignore_errors=True)
            remove_leftovers(job.classes)  # an interrupted run's stop flag (a whole input's task removes its own)
    except GeosegError as e:
        summary.fail(job.source, e)
        return
    if job.polygons is not None and len(job.bounds) > 1:  # a large input: its bands on the cluster too
        from geoseg.vector import vectorize

        try:
            rep = vectorize(job.classes, job.polygons, probabilities=job.probabilities, overwrite=overwrite,
                            executor=client, workers=max(1, len(client.scheduler_info()["workers"])))
        except GeosegError as e:
            summary.fail(job.source, e)
            return
        job.results[-1] = {"polygons": {"polygons": rep.polygons}}
        _collect(job, None, summary, on_done)
        return
    if job.polygons is not None:
        f = client.submit(vectorize_task, str(job.classes), str(job.polygons), {},
                          str(job.probabilities) if job.probabilities else None, overwrite, time.time_ns(),
                          pure=False)
        pending_vectors[f] = job
        seq.add(f)
        return
    _collect(job, None, summary, on_done)


def _collect(job: InferJob, vector_future: Any, summary: BatchSummary,
             on_done: Callable[[InferJob, dict[str, Any]], None] | None) -> None:
    result = {k: v for r in job.results.values() for k, v in r.items() if k in ("width", "height", "device")}
    result["tiles"] = sum(r.get("tiles", 0) for r in job.results.values())
    result["blocks"] = len(job.bounds)
    if vector_future is not None:
        try:
            result["polygons"] = vector_future.result()
        except Exception as e:  # noqa: BLE001
            summary.fail(job.source, _why(e))
            return
    summary.done.append(job.source)
    if on_done is not None:
        on_done(job, result)


def _why(e: BaseException) -> str:
    if isinstance(e, GeosegError):
        return str(e)
    name = type(e).__name__
    if name == "KilledWorker":
        return "the workers running it died repeatedly (out of memory?); see the workers' logs"
    if name == "CancelledError":
        return "cancelled"
    return f"unexpected {name}: {str(e).splitlines()[0] if str(e) else ''} (see the workers' logs)"


def _bounds(job: InferJob, model: Sequence[str], options: dict[str, Any], block_rows: int | None
            ) -> list[tuple[int, int]]:
    """The blocks of ``job``'s raster: one, or several when it is larger than a block."""
    from geoseg.io.raster import open_raster
    from geoseg.pipeline.plan import block_bounds, tile_grid

    with open_raster(job.source) as ds:
        h, w = ds.height, ds.width
    rows = block_rows_for(w, block_rows)
    if h <= rows:
        return [(0, h)]
    return block_bounds(tile_grid(h, w, _meta(model), options.get("tile_size"), options.get("overlap")), rows)


def _check_bands(job: InferJob, model: Sequence[str], options: dict[str, Any]) -> None:
    """The input's bands against the model's (:func:`geoseg.io.raster.resolve_bands`, as the run checks them)."""
    from geoseg.io.raster import open_raster, resolve_bands

    meta = _meta(model)
    with open_raster(job.source) as ds:
        resolve_bands(ds, options.get("bands"), meta.num_bands, meta.bands)


def _meta(model: Sequence[str]) -> Any:
    from geoseg.models.meta import peek_meta
    from geoseg.predict.onnx import OnnxPredictor, is_onnx

    if is_onnx(model[0]):
        return OnnxPredictor(model[0]).meta
    meta = peek_meta(model[0])
    if meta is None:
        from geoseg.models import read_meta

        meta = read_meta(model[0])
    return meta


def _prepare_blocks(job: InferJob, model: Sequence[str], options: dict[str, Any], resume: bool) -> set[int]:
    """Create the block folder; with ``resume``, the blocks already complete there (same run only)."""
    from geoseg.io.raster import open_raster
    from geoseg.resume import changed_options, file_fingerprint, source_fingerprint

    d = job.blocks_dir()
    with open_raster(job.source) as ds:
        source = source_fingerprint(job.source, ds)
    key = {"source": source, "model": [file_fingerprint(m) for m in model],
           "options": options, "bounds": job.bounds, "probabilities": job.probabilities is not None}
    key = json.loads(json.dumps(key, default=str))
    record = d / "run.json"
    if resume and record.exists():
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("key") != key:
            diff = changed_options(old.get("key") or {}, key)
            raise UsageError(f"{job.classes}: the interrupted run used a different {', '.join(diff) or 'run'}; "
                             "rerun with the same input, model and options, or without `resume` to start over")
        done = {b for b in range(len(job.bounds)) if all(job.part(o, b).exists() for o in range(len(job.outputs)))}
        # one block always runs: its result carries the outputs' creation arguments for the assembly
        return done - {max(done, key=lambda b: -(job.bounds[b][1] - job.bounds[b][0]))} if len(done) == len(
            job.bounds) else done
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    record.write_text(json.dumps({"key": key}))
    return set()


def vectorize_many(client: Any, pairs: Sequence[tuple[str, Path]], options: dict[str, Any], *,
                   overwrite: bool = False, summary: BatchSummary | None = None,
                   on_task: Callable[[int, int], None] | None = None,
                   on_done: Callable[[str, Path, dict[str, Any]], None] | None = None) -> BatchSummary:
    """Vectorize each ``(class raster, output)`` pair in one task on ``client``'s cluster."""
    from distributed import as_completed

    from geoseg.distributed.tasks import vectorize_task
    from geoseg.export import check_output

    summary = summary if summary is not None else BatchSummary()
    since = time.time_ns()
    futures = {}
    for src, dest in pairs:
        try:
            check_output(dest, overwrite=overwrite, inputs=[src])
        except GeosegError as e:
            summary.fail(src, e)
            continue
        fut = client.submit(vectorize_task, src, str(dest), options, None, overwrite, since, pure=False)
        futures[fut] = (src, dest)
    if on_task is not None:
        on_task(0, len(futures))
    for n, f in enumerate(as_completed(list(futures), loop=client.loop), start=1):
        src, dest = futures[f]
        if on_task is not None:
            on_task(n, len(futures))
        try:
            res = f.result()
        except Exception as e:  # noqa: BLE001 - reported with the input's name; the others go on
            summary.fail(src, _why(e))
            continue
        summary.done.append(src)
        if on_done is not None:
            on_done(src, dest, res)
    return summary
