"""Band polygonization in worker processes (the ``shapes`` pass is the cost). Torch-free.

``rasterio.features.shapes`` spends most of its time building Python objects, so threads
do not help; processes do. Workers read and polygonize bands and return flat numpy arrays
(:class:`~geoseg.vector.seams.BandPolygons`); the parent merges them in row order. At most
``2 * workers`` bands are in flight, so memory stays bounded.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from geoseg.io.gdalcache import set_block_cache
from geoseg.io.heap import release_free_heap
from geoseg.io.threads import check_stop, stop_requested

from geoseg.vector.seams import BandPolygons, polygonize_band
from geoseg.vector.source import ClassSource, ConfidenceSource

#: rasters smaller than this many pixels are polygonized in-process with ``workers=None``
#: (starting worker processes costs about a second)
AUTO_WORKERS_MIN_PIXELS = 16 << 20

_OPEN: dict[str, Any] = {}


#: busy processes besides the workers: the merging process and the writer process
BUSY_WITHOUT_WORKERS = 2


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers(width: int, height: int) -> int:
    """Worker count for ``workers=0``: 1 (in-process) unless the raster is large and cores are free.

    Workers pay only on cores that the merging process and the writer process leave idle:
    on 2 cores, 2 workers were slower than polygonizing in-process (4096² Cropland Data
    Layer: 15.7 s against 14.8 s) while each worker's interpreter, its GDAL cache and its
    bands in flight added ~90 MiB (~265 MiB each on the dense map), which made the peak memory
    of a raster above ``AUTO_WORKERS_MIN_PIXELS`` jump compared with a smaller one. So: one
    worker per CPU beyond those two, up to 4; fewer than 2 such CPUs means in-process.
    """
    if width * height < AUTO_WORKERS_MIN_PIXELS:
        return 1
    free = min(4, _cpus() - BUSY_WITHOUT_WORKERS)
    return free if free >= 2 else 1


def _opened(path: str, make: Any, tag: Any = None) -> Any:
    """A source this process keeps open, by path, ``tag`` (its options) and (a long-lived Dask worker sees
    files replaced) its size and mtime."""
    try:
        st = os.stat(path)
        key = f"{path}|{tag}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        key = f"{path}|{tag}"
    src = _OPEN.get(key)
    if src is None:
        src = _OPEN[key] = make()
    return src


def _job(path: str, r0: int, r1: int, sieve: int | None, keep: Sequence[int] | None, boundary: int | None,
         conf_path: str | None, keep_emit: bool, nodata: float | None = None) -> BandPolygons:
    src = _opened(path, lambda: ClassSource(path, nodata=nodata), tag=nodata)
    band = src.band(r0, r1, sieve=sieve, keep=keep, boundary=boundary)
    conf = None
    if conf_path is not None:
        cs = _opened(conf_path, lambda: ConfidenceSource(conf_path, src))
        conf = cs.read(r0, r1)
    bp = polygonize_band(band, conf, keep_emit)
    del band, conf
    release_free_heap()
    return bp


def band_polygons(src: ClassSource, band_rows: int, *, sieve: int | None, keep: Sequence[int] | None,
                  boundary: int | None, conf: ConfidenceSource | None, keep_emit: bool, workers: int,
                  cache_bytes: int, executor: Any = None) -> Iterator[BandPolygons]:
    """Polygonized bands of ``src`` in row order, from ``workers`` processes (1: in-process), or from
    ``executor`` (e.g. a Dask client) with ``2 * workers`` bands in flight."""
    starts = list(range(0, src.height, band_rows))
    if executor is not None:
        yield from _submitted(executor, src, starts, band_rows, sieve, keep, boundary, conf, keep_emit, max(1, workers))
        return
    if workers <= 1 or len(starts) < 2:
        for r0 in starts:
            check_stop()
            r1 = min(src.height, r0 + band_rows)
            band = src.band(r0, r1, sieve=sieve, keep=keep, boundary=boundary)
            yield polygonize_band(band, conf.read(r0, r1) if conf is not None else None, keep_emit)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from geoseg.errors import GeosegError

    # "spawn": forking a process that runs GDAL writer threads (or torch) is not safe
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=set_block_cache,
                             initargs=(cache_bytes,)) as ex:
        complete = False
        try:
            yield from _submitted(ex, src, starts, band_rows, sieve, keep, boundary, conf, keep_emit, workers)
            complete = True
        except BrokenProcessPool:
            if stop_requested():
                raise
            raise GeosegError("vectorize worker processes died (out of memory, or a script without "
                              "`if __name__ == '__main__':`); use workers=1 / --workers 1") from None
        finally:
            if not complete:  # Ctrl-C or an error: the bands the workers are polygonizing are not waited for
                _terminate_workers(ex)


def _terminate_workers(ex: Any) -> None:
    """End the worker processes of a ``ProcessPoolExecutor`` now (its ``shutdown`` waits for their bands;
    the executor has no public way to stop them before Python 3.14's ``terminate_workers``)."""
    processes = list((getattr(ex, "_processes", None) or {}).values())  # shutdown forgets them
    manager = getattr(ex, "_executor_manager_thread", None)
    writer = getattr(getattr(ex, "_result_queue", None), "_writer", None)  # shutdown forgets it too
    ex.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(timeout=2)
    if manager is not None and writer is not None and not any(p.is_alive() for p in processes):
        # a worker killed while it sent its band leaves half a message in the result pipe, and the manager
        # thread waits for the rest for ever (this process holds the pipe's write end): closing that end
        # gives it end-of-file, so it ends at once (it did so only after 5 s in 3 of 20 trials)
        writer.close()
    if manager is not None:
        # it closes its wake-up pipe as it ends; left running, it could do so while the interpreter's exit
        # hook writes to that pipe (CPython < 3.12): "Exception ignored ... Bad file descriptor" after the
        # one-line Ctrl-C message (seen once in CI)
        manager.join(timeout=5)
        if manager.is_alive():  # stuck on the killed workers: the exit hook would join it for ever
            from concurrent.futures import process

            getattr(process, "_threads_wakeups", {}).pop(manager, None)


def _result(future: Any, poll: float = 0.2) -> Any:
    """``future.result()``, giving up within ``poll`` seconds of a stop request (a Ctrl-C)."""
    while True:
        try:
            return future.result(timeout=poll)
        except TimeoutError:
            check_stop()


def _submitted(executor: Any, src: ClassSource, starts: list[int], band_rows: int, sieve: int | None,
               keep: Sequence[int] | None, boundary: int | None, conf: ConfidenceSource | None, keep_emit: bool,
               workers: int) -> Iterator[BandPolygons]:
    """The bands polygonized by ``executor`` (its workers open the rasters by path), at most ``2 * workers``
    in flight, yielded in row order."""
    from collections import deque

    conf_path = conf.ds.name if conf is not None else None
    keep_l = list(keep) if keep is not None else None
    pending: deque[Any] = deque()
    try:
        for r0 in starts:
            pending.append(executor.submit(_job, src.ds.name, r0, min(src.height, r0 + band_rows), sieve, keep_l,
                                           boundary, conf_path, keep_emit, src.nodata))
            if len(pending) >= 2 * workers:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        for f in pending:
            f.cancel()
