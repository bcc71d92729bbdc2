"""Read the row bands of a run, in the raster's own type, several threads at once. Torch-free.

Each tile row's band of rows is read once, as raw values (uint16 stays 2 bytes a value)
plus, only where the raster can have masked or non-finite values, a per-band validity
byte. Nothing else happens per pixel on the host: normalization, padding and tiling run
on the predictor's device (:mod:`geoseg.predict.stream`).

With ``threads`` > 1 and ``gdal_decode`` (on a CPU; :data:`GDAL_DECODE`), a compressed tiled
GeoTIFF is read a band at a time through one dataset handle whose blocks GDAL decodes on
``threads`` threads (GTiff's ``NUM_THREADS``, GDAL >= 3.6): on 2 cores 38.9-45.9 against
34.2-43.9 Mpx/s for the chunks below (2048² and 2048 x 8192 Sentinel-2, 8 bands, DEFLATE; one
thread 23.4-24.4). Otherwise the raster is split into chunks along the file's blocks (columns for
tiled files, rows for striped ones) and the chunks are read by ``threads`` threads, each through
its own dataset handle (GDAL handles are not thread-safe), straight into the band's buffer. The
buffers come from a :class:`Buffers` pool: page-locked memory on a GPU, so the copy to
the device needs no staging copy, and a bounded number of them, so memory does not grow
with the raster. At most ``ahead`` bands are read ahead of the one being consumed.
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import numpy as np
from rasterio.windows import Window

from geoseg.io.raster import open_raster, read_into, validity_kind
from geoseg.io.threads import Prefetcher, prefetch_in_thread
from geoseg.pipeline.plan import RowJob, RunPlan


class Buffers(Protocol):
    """A pool of byte buffers for row bands (see :class:`BufferPool`)."""

    def take(self, nbytes: int) -> tuple[np.ndarray, Any]:
        """A flat uint8 array of at least ``nbytes`` and a token to give it back with; may block."""
        ...

    def give(self, token: Any, after: Any = None) -> None:
        """Return a buffer; ``after`` (an event with ``synchronize()``) must complete before its reuse."""
        ...


class BufferPool:
    """A bounded pool of reusable byte buffers (the :class:`Buffers` protocol).

    :meth:`take` blocks while ``count`` buffers are out, which bounds memory, and buffers are
    reused rather than freed (large ``malloc``/``free`` cycles fragment the heap and raise the
    resident size run after run). A buffer given back with an event is reused only once the
    event (its device copy) has completed. ``alloc(nbytes)`` makes a new buffer: a flat uint8
    array and the object that owns its memory (page-locked memory on a GPU).
    """

    def __init__(self, count: int, alloc: Callable[[int], tuple[np.ndarray, Any]] | None = None) -> None:
        self.count = count
        self.alloc = alloc or (lambda n: (np.empty(n, dtype=np.uint8), None))
        self.out = 0
        self.free: list[tuple[np.ndarray, Any, Any]] = []
        self.cv = threading.Condition()

    def take(self, nbytes: int) -> tuple[np.ndarray, Any]:
        nbytes = max(1, nbytes)
        event = None
        with self.cv:
            while True:
                fit = [i for i, (a, _, _) in enumerate(self.free) if a.size >= nbytes]
                if fit:
                    arr, owner, event = self.free.pop(fit[0])
                    break
                if self.out + len(self.free) < self.count or self.free:
                    if self.out + len(self.free) >= self.count:
                        _, _, old = self.free.pop(0)  # too small: replace it
                        if old is not None:
                            old.synchronize()
                    arr, owner = self.alloc(-(-nbytes // 2**20) * 2**20)
                    break
                self.cv.wait(timeout=1.0)
            self.out += 1
        if event is not None:
            event.synchronize()
        return arr, (arr, owner)

    def give(self, token: Any, after: Any = None) -> None:
        with self.cv:
            self.out -= 1
            self.free.append((token[0], token[1], after))
            self.cv.notify()


@dataclass
class RowBand:
    """The raw values of one tile row's band of rows, inside the raster."""

    job: RowJob
    data: np.ndarray  # (bands, h, w) in the raster's own type; w = the job's columns inside the raster
    valid: np.ndarray | None  # (bands, h, w) uint8, nonzero = valid; None when every value is valid
    tile_has_data: tuple[bool, ...]  # per tile of the job: any valid pixel inside the raster
    tokens: tuple[Any, ...] = ()  # the pooled buffers behind data and valid

    def release(self, buffers: Buffers, after: Any = None) -> None:
        for t in self.tokens:
            buffers.give(t, after)
        self.tokens = ()


def block_cache_bytes(ds: Any, band_idx: list[int], strip_width: int, tile: int) -> int:
    """GDAL block cache that holds the blocks of the row bands in flight: three rows of blocks of the
    widest strip (a tile row spans up to two, and the next one starts in the second), at least 64 MiB.

    Without it, every block under the overlap of two tile rows is decoded twice or more.
    """
    bh, _ = ds.block_shapes[band_idx[0] - 1]
    itemsize = max(np.dtype(ds.dtypes[b - 1]).itemsize for b in band_idx)
    rows = min(ds.height, 3 * max(bh, 1) if bh < ds.height else bh)
    return max(64 * 2**20, int(rows * (strip_width + tile) * ds.count * itemsize * 1.1))


#: Whether a compressed tiled GeoTIFF is read through GDAL's decoding threads (else by chunk threads),
#: by device. Measured on CPUs (2 cores: 38.9-45.9 against 34.2-43.9 Mpx/s, never slower); a GPU host keeps
#: the chunk readers it was measured with (84.5 Mpx/s on 14 threads, H200) until ``gpu_session.sh``
#: (``bench_infer.py --read-modes``) compares the two there.
GDAL_DECODE = {"cpu": True, "cuda": False}


def default_read_threads(ds: Any, *, on_gpu: bool, model_threads: int) -> int:
    """Threads reading each row band when the user does not say (``--read-threads``).

    With a GPU, all cores but two, at most 16: decoding must keep up with it. On a CPU, where the
    model needs the cores: two when GDAL decodes the raster on threads (:func:`gdal_decodes_in_threads`)
    and the model itself runs on two or more, else one. Measured on 2 cores (2048² Sentinel-2, 8 bands,
    DEFLATE, the benchmark U-Net): end to end 1.88 -> 1.81 s (best of 5; median 1.96 -> 1.89 s), and the
    pipeline's own cost (null predictor) 231 -> 183 ms. Uncompressed input read by two chunk threads
    gained nothing (1.91 against 1.92 s), and a one-thread Dask worker keeps one.
    """
    if on_gpu:
        return min(16, max(1, (os.cpu_count() or 1) - 2))
    return 2 if model_threads >= 2 and gdal_decodes_in_threads(ds) else 1


def gdal_decodes_in_threads(ds: Any) -> bool:
    """Whether GDAL can decode ``ds``'s blocks on several threads for one read: a compressed tiled
    GeoTIFF (COGs included) and GDAL >= 3.6 (GTiff's ``NUM_THREADS`` open option)."""
    from rasterio.env import GDALVersion

    bh, bw = ds.block_shapes[0]
    return (ds.driver == "GTiff" and ds.compression is not None and bw < ds.width
            and GDALVersion.runtime().at_least("3.6"))


def _chunks(lo: int, hi: int, block: int, n: int) -> list[tuple[int, int]]:
    """Split ``[lo, hi)`` into at most ``n`` pieces whose inner bounds fall on multiples of ``block``."""
    first, last = lo // block, (hi - 1) // block
    blocks = last - first + 1
    n = max(1, min(n, blocks))
    bounds = [lo] + [(first + blocks * i // n) * block for i in range(1, n)] + [hi]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class RowBandReader:
    """Yields the :class:`RowBand` of each job of ``plan`` in order (see the module docstring)."""

    def __init__(self, ds: Any, band_idx: list[int], plan: RunPlan, *, threads: int = 1, ahead: int = 2,
                 alloc: Callable[[int], tuple[np.ndarray, Any]] | None = None, nodata: float | None = None,
                 gdal_decode: bool = True) -> None:
        self.ds = ds
        self.nodata = nodata  # a value the user names as nodata, beside the raster's own masks
        self.band_idx = band_idx
        self.plan = plan
        self.threads = max(1, threads)
        self.ahead = max(1, ahead)
        self.masked, self.floating = validity_kind(ds, band_idx)
        self.dtype = np.dtype(ds.dtypes[band_idx[0] - 1])
        if any(np.dtype(ds.dtypes[b - 1]) != self.dtype for b in band_idx):
            self.dtype = np.dtype(np.float64 if self.floating else np.int64)  # GDAL converts on read
        bh, bw = ds.block_shapes[band_idx[0] - 1]
        self.split_cols = bw < ds.width  # tiled: split along columns, else along rows
        self.block = bw if self.split_cols else max(1, bh)
        #: GDAL's own decoding threads on one handle (see the module docstring), else 1
        #: (``gdal_decode=False``: chunks whatever the raster, for benchmarks that compare the two)
        self.decode_threads = self.threads if gdal_decode and self.threads > 1 and gdal_decodes_in_threads(ds) else 1
        if self.decode_threads > 1:
            self.threads = 1
        self._decoder: Any = None
        # bands being read at once: enough chunks for every thread (narrow rasters have few blocks a band)
        widest = max((self.plan.band_width(j) for j in plan.jobs), default=1)
        per_band = len(_chunks(0, widest if self.split_cols else plan.grid.size, self.block, self.threads))
        self.depth = min(8, max(2, -(-self.threads // per_band) + 1))
        # buffers (values and validity) for the bands read at once, queued ahead, being handed over and
        # in use by the consumer: the pool never runs dry while a band it needs is still unread
        self.buffers: Buffers = BufferPool(2 * (self.ahead + self.depth + 2), alloc)
        # one dataset handle per chunk position, used by one thread at a time: the blocks a band
        # shares with the next one (tile rows overlap, and rarely start on a block) are then found
        # in GDAL's block cache instead of being decoded again (:func:`block_cache_bytes`)
        self._handles: dict[int, Any] = {}
        self._locks: dict[int, threading.Lock] = collections.defaultdict(threading.Lock)
        self._lock = threading.Lock()

    @property
    def checks_validity(self) -> bool:
        return self.masked or self.floating or self.nodata is not None

    def _read_chunk(self, job: RowJob, data: np.ndarray, valid: np.ndarray | None, piece: tuple[int, int],
                    index: int) -> np.ndarray | None:
        """Read one chunk through the handle of its position; its columns' any-valid flags (None: all valid)."""
        if self.decode_threads > 1:
            if self._decoder is None:
                self._decoder = open_raster(self.ds.name, NUM_THREADS=str(self.decode_threads))
            return self._read_with(self._decoder, job, data, valid, piece)
        if self.threads == 1:
            return self._read_with(self.ds, job, data, valid, piece)
        with self._lock:
            lock = self._locks[index]
        with lock:
            h = self._handles.get(index)
            if h is None:
                h = self._handles[index] = open_raster(self.ds.name)
            return self._read_with(h, job, data, valid, piece)

    def _read_with(self, handle: Any, job: RowJob, data: np.ndarray, valid: np.ndarray | None,
                   piece: tuple[int, int]) -> np.ndarray | None:
        a, b = piece
        c_lo = job.col_lo
        if self.split_cols:
            win = Window(a, job.row, b - a, job.height)
            sl: tuple[slice, ...] = (slice(None), slice(None), slice(a - c_lo, b - c_lo))
        else:
            win = Window(c_lo, a, data.shape[2], b - a)
            sl = (slice(None), slice(a - job.row, b - job.row), slice(None))
        v = valid[sl] if valid is not None else None
        read_into(handle, self.band_idx, win, data[sl], v, self.masked, self.nodata)
        return None if v is None else np.asarray(v.any(axis=(0, 1)))

    def _start(self, job: RowJob, pool: ThreadPoolExecutor | None) -> tuple[RowBand, list[Any]]:
        g = self.plan.grid
        w = min(job.cols[-1] + g.size, g.width) - job.col_lo
        shape = (len(self.band_idx), job.height, w)
        n = int(np.prod(shape))
        raw, t1 = self.buffers.take(n * self.dtype.itemsize)
        data = raw[: n * self.dtype.itemsize].view(self.dtype).reshape(shape)
        tokens = [t1]
        valid = None
        if self.checks_validity:
            vraw, t2 = self.buffers.take(n)
            valid = vraw[:n].reshape(shape)
            tokens.append(t2)
        lo, hi = (job.col_lo, job.col_lo + w) if self.split_cols else (job.row, job.row + job.height)
        pieces = _chunks(lo, hi, self.block, self.threads)
        band = RowBand(job, data, valid, (), tuple(tokens))
        if pool is None:
            return band, [_Now(self._read_chunk(job, data, valid, p, i)) for i, p in enumerate(pieces)]
        return band, [pool.submit(self._read_chunk, job, data, valid, p, i) for i, p in enumerate(pieces)]

    def _finish(self, band: RowBand, futures: list[Any]) -> RowBand:
        flags = [f.result() for f in futures]
        g = self.plan.grid
        job = band.job
        if band.valid is None:
            band.tile_has_data = (True,) * len(job.cols)
            return band
        if self.split_cols:
            cols = np.concatenate(flags)
        else:
            cols = np.logical_or.reduce(flags)
        band.tile_has_data = tuple(bool(cols[c - job.col_lo: min(c + g.size, g.width) - job.col_lo].any())
                                   for c in job.cols)
        return band

    def _bands(self) -> Iterator[RowBand]:
        pool = (ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="geoseg-read")
                if self.threads > 1 else None)
        pending: collections.deque[tuple[RowBand, list[Any]]] = collections.deque()
        try:
            for job in self.plan:
                pending.append(self._start(job, pool))
                if len(pending) >= self.depth or pool is None:  # later bands' chunks start before this one is handed on
                    yield self._finish(*pending.popleft())
            while pending:
                yield self._finish(*pending.popleft())
        finally:
            for band, futures in pending:
                for f in futures:
                    if isinstance(f, Future):
                        f.cancel()
            if pool is not None:
                pool.shutdown(wait=True)
            for band, _ in pending:
                band.release(self.buffers)
            for h in [*self._handles.values(), self._decoder]:
                if h is not None:
                    h.close()

    def __iter__(self) -> Iterator[RowBand]:
        """Bands in order, read in a background thread at most ``ahead`` bands ahead."""
        return prefetch_in_thread(self._bands(), self.ahead, "geoseg-reader")

    def prefetcher(self) -> Prefetcher:
        """Bands in order as :meth:`__iter__` gives them, read from the moment its ``start()`` is called
        (a run starts reading while it sets up its outputs); register its ``close()`` first."""
        return Prefetcher(self._bands(), self.ahead, "geoseg-reader")


class _Now:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value
