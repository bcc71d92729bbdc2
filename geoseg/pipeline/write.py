"""Write finished rows in a background thread and record them for resuming. Torch-free."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from geoseg.io.threads import BackgroundThread, join_through_interrupts
from geoseg.io.writer import GeoTiffSink
from geoseg.resume import RunState

_END = object()


@dataclass
class FinishedRows:
    """Rows ``[row, row + h)`` of strip ``strip_index`` at column ``col``, one (array, mask) per sink.

    ``ready`` (if set) blocks until the arrays hold their values (a device copy in flight);
    ``done`` (if set) is called once they are written (their buffers may be reused).
    ``upto`` is how far the strip is final once these rows are written.
    """

    row: int
    col: int
    arrays: list[tuple[np.ndarray, np.ndarray | None]]
    strip_index: int
    upto: int
    ready: Callable[[], None] | None = None
    done: Callable[[], None] | None = None


class RowWriter:
    """Writes :class:`FinishedRows` into the sinks off the main thread (which keeps the model fed).

    Every ``checkpoint_seconds`` it flushes the staging files and records the rows that are
    final in the run state, so an interrupted run can resume.
    """

    def __init__(self, sinks: list[GeoTiffSink], state: RunState, state_file: Path, checkpoint_seconds: float,
                 maxsize: int = 4) -> None:
        self.sinks = sinks
        self.state = state
        self.state_file = state_file
        self.every = checkpoint_seconds
        self.last = time.monotonic()
        self.q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        #: set on Ctrl-C while closing: the rows still queued are dropped (the run state records only
        #: rows written, so --resume recomputes them)
        self.stopping = False
        self.t = BackgroundThread(self._run, "geoseg-writer")
        self.t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is _END:
                return
            if self.error is not None or self.stopping:
                continue
            try:
                if item.ready is not None:
                    item.ready()
                for sink, (arr, mask) in zip(self.sinks, item.arrays):
                    sink.write(arr, item.row, item.col)
                    if mask is not None:
                        sink.write_mask(mask, item.row, item.col)
                if item.done is not None:
                    item.done()
                self.state.strip, self.state.rows_done = item.strip_index, item.upto
                if time.monotonic() - self.last >= self.every:
                    self.checkpoint()
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.error = e

    def checkpoint(self) -> None:
        for s in self.sinks:
            s.flush()
        self.state.save(self.state_file)
        self.last = time.monotonic()

    def put(self, rows: FinishedRows) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(rows)

    def close(self, checkpoint: bool = True) -> None:
        """Drain the queue, record the final checkpoint (if ``checkpoint``), re-raise any write error.

        A Ctrl-C meanwhile drops the rows still queued, but this returns (raising it) only once the
        writer thread has ended: the caller then closes the files it was writing.
        """
        def stop() -> None:
            self.stopping = True

        pending: BaseException | None = None
        while True:
            try:
                self.q.put(_END)
                break
            except BaseException as e:  # noqa: BLE001 - re-raised once the thread has ended
                pending = pending or e
                stop()  # the thread skips what is queued: room for the end marker
        try:
            join_through_interrupts(self.t, stop)
        except BaseException as e:  # noqa: BLE001
            pending = pending or e
        if pending is not None:
            raise pending
        if self.error is not None:
            raise self.error
        if checkpoint:
            self.checkpoint()
