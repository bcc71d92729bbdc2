"""A Ctrl-C at any moment: the background threads (row reader, row writer) have ended before the
caller goes on to close the files they use (a thread still inside GDAL then crashed the process
with SIGSEGV instead of exiting 130; seen once in test_resume's SIGINT test)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from geoseg.io.threads import prefetch_in_thread
from geoseg.pipeline.write import FinishedRows, RowWriter
from geoseg.resume import RunState


class _CtrlC(BaseException):
    """What the test's SIGINT handler raises (not KeyboardInterrupt, which would stop pytest)."""


@pytest.fixture
def ctrl_c_after():
    """``ctrl_c_after(seconds)``: a real SIGINT sent to the main thread that many seconds later."""
    def raise_it(*_: object) -> None:
        raise _CtrlC()

    old = signal.signal(signal.SIGINT, raise_it)
    timers: list[threading.Timer] = []

    def arm(seconds: float) -> None:
        main = threading.main_thread().ident
        t = threading.Timer(seconds, lambda: signal.pthread_kill(main, signal.SIGINT))
        timers.append(t)
        t.start()

    yield arm
    for t in timers:
        t.join()
    signal.signal(signal.SIGINT, old)


class _SlowSink:
    """Stands for a GeoTIFF being written: each write takes a while (GDAL compressing a block)."""

    def __init__(self) -> None:
        self.writes = 0
        self.inside = False

    def write(self, data: np.ndarray, row: int, col: int) -> None:
        self.inside = True
        time.sleep(0.3)
        self.writes += 1
        self.inside = False

    def flush(self) -> None:
        pass


def test_ctrl_c_while_the_writer_drains_returns_only_after_the_writer_ended(tmp_path: Path, ctrl_c_after) -> None:
    sink = _SlowSink()
    w = RowWriter([sink], RunState({}), tmp_path / "state.json", checkpoint_seconds=3600)  # type: ignore[list-item]
    for i in range(4):
        w.put(FinishedRows(row=i, col=0, arrays=[(np.zeros((1, 1, 1), np.uint8), None)], strip_index=0, upto=i + 1))
    ctrl_c_after(0.1)  # arrives while close() waits for the queued rows
    t0 = time.perf_counter()
    with pytest.raises(_CtrlC):
        w.close()
    assert not w.t.is_alive() and not sink.inside  # the caller may close the sink now
    assert sink.writes < 4 and time.perf_counter() - t0 < 1.0  # the rows still queued were dropped


def test_ctrl_c_while_the_reader_stops_returns_only_after_the_reader_ended(ctrl_c_after) -> None:
    inside = threading.Event()

    def rows():
        for i in range(100):
            inside.set()
            time.sleep(0.5)  # stands for GDAL decoding a row band
            inside.clear()
            yield i

    it = prefetch_in_thread(rows(), 2, name="test-reader")
    assert next(it) == 0
    inside.wait(2)
    ctrl_c_after(0.1)  # arrives while closing waits for the band being read
    with pytest.raises(_CtrlC):
        it.close()
        time.sleep(1)  # (without the fix the Ctrl-C arrives here, after close returned early)
    assert not [t for t in threading.enumerate() if t.name == "test-reader"]
    assert not inside.is_set()


def _in_background(work, stop_after: float | None):
    """Run ``work`` in a :class:`BackgroundThread` told to stop ``stop_after`` seconds in (None: from the
    start); (what it raised, seconds from the stop request to its end)."""
    from geoseg.io.threads import BackgroundThread

    seen: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as e:  # noqa: BLE001
            seen.append(e)

    t = BackgroundThread(run, "test-work")
    if stop_after is None:
        t.stop.set()
    t.start()
    if stop_after is not None:
        time.sleep(stop_after)
        t.stop.set()
    t0 = time.perf_counter()
    t.ended.wait(60)
    return (seen[0] if seen else None), time.perf_counter() - t0


def test_polygonizing_a_band_stops_when_asked() -> None:
    """Ctrl-C during vectorize: the thread polygonizing a band (seconds of work) ends soon after its consumer
    stops, instead of finishing the band (vectorize took up to 5 s to exit with 1 worker, 17 s with 2)."""
    from geoseg.io.threads import StopRequested
    from geoseg.vector.seams import _shapes_stoppable, polygonize_band
    from geoseg.vector.source import Band

    data = np.random.default_rng(0).integers(0, 4, size=(400, 1000), dtype=np.uint8)  # ~130k polygons
    band = Band(0, 400, data, np.ones(data.shape, bool))
    t0 = time.perf_counter()
    polygonize_band(band)
    whole = time.perf_counter() - t0
    err, took = _in_background(lambda: polygonize_band(band), None)
    assert isinstance(err, StopRequested) and took < whole / 4, (err, took, whole)

    def endless():  # stands for the features shapes() builds, one Python object at a time
        while True:
            time.sleep(1e-5)
            yield ({"type": "Polygon", "coordinates": []}, 1.0)

    err, took = _in_background(lambda: _shapes_stoppable(endless(), chunk=1000), 0.2)
    assert isinstance(err, StopRequested) and took < 1.0, (err, took)


def _half_a_result(sent: str) -> None:
    """In a pool worker: start a result message (its length header) in the pool's result pipe, then hang, as
    a worker killed while it sends its band."""
    import gc
    import struct
    from multiprocessing.queues import SimpleQueue

    queues = [o for o in gc.get_objects() if isinstance(o, SimpleQueue)]
    assert len(queues) == 1  # the worker's result queue (its call queue is a Queue, not a SimpleQueue)
    queues[0]._writer._send(struct.pack("!i", 1 << 20))
    Path(sent).touch()
    time.sleep(60)


def test_stopping_workers_does_not_wait_on_a_half_sent_result(tmp_path: Path) -> None:
    """Ctrl-C while a worker sends its band: the pool's manager thread, waiting for the rest of that message,
    is released at once (it used to wait for it for ever; the stop gave up on it after 5 s)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from geoseg.vector.parallel import _terminate_workers

    ex = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))  # as geoseg's pool
    sent = tmp_path / "sent"
    ex.submit(_half_a_result, str(sent))
    deadline = time.monotonic() + 60
    while not sent.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent.exists()
    time.sleep(0.3)  # the manager reads the header and waits for the rest
    manager = ex._executor_manager_thread  # type: ignore[attr-defined]
    writer = ex._result_queue._writer  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    try:
        _terminate_workers(ex)
        took = time.perf_counter() - t0
    finally:
        writer.close()  # releases a manager left stuck: no hung exit
    assert took < 3
    assert manager is not None and not manager.is_alive()


def test_a_prefetcher_reads_before_it_is_asked_and_stops_unasked() -> None:
    """``Prefetcher.start()`` produces items before the first ``next`` (a run reads while it sets up), and
    ``close()`` stops a worker nobody has asked anything of yet."""
    from geoseg.io.threads import Prefetcher

    produced = threading.Event()

    def rows():
        for i in range(1000):
            produced.set()
            yield i

    p = Prefetcher(rows(), 2, "test-early").start()
    assert produced.wait(5)  # before any next()
    p.close()
    assert not [t for t in threading.enumerate() if t.name == "test-early"]
    assert list(p) == []  # closed: nothing more
    q = Prefetcher(iter(range(5)), 2, "test-early")
    assert list(q) == [0, 1, 2, 3, 4]  # next() starts it too
    assert not [t for t in threading.enumerate() if t.name == "test-early"]


def test_a_failure_while_setting_up_outputs_stops_the_reader_already_reading(tmp_path: Path, monkeypatch) -> None:
    """Reading starts before the outputs are set up; an error there (here: the staging file cannot be
    created) still stops the reader thread before the input is closed, and leaves nothing behind."""
    from geoseg.errors import RasterWriteError
    from geoseg.models.demo import DEMO_MODEL
    from geoseg.pipeline import predict_raster
    from geoseg.pipeline import run as run_module

    readers: list[int] = []

    def failing_sink(*args: object, **kwargs: object) -> None:
        readers.append(len([t for t in threading.enumerate() if t.name == "geoseg-reader"]))
        raise RasterWriteError("cannot create the staging file (test)")

    monkeypatch.setattr(run_module, "GeoTiffSink", failing_sink)
    field = Path(__file__).resolve().parents[1] / "sample_data" / "field.tif"
    with pytest.raises(RasterWriteError, match="staging"):
        predict_raster(field, DEMO_MODEL, tmp_path / "c.tif")
    assert readers == [1]  # the reader was reading when the setup failed
    assert not [t for t in threading.enumerate() if t.name == "geoseg-reader"]
    assert not list(tmp_path.iterdir())
