"""Run a generator in a background thread, a bounded number of items ahead. Torch-free."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_END = object()


class StopRequested(Exception):
    """Raised by :func:`check_stop` in a background thread whose consumer has stopped (Ctrl-C)."""


class BackgroundThread(threading.Thread):
    """A daemon thread that says when its work has ended (:attr:`ended`), for
    :func:`join_through_interrupts`, and is told to stop early by :attr:`stop` (see :func:`check_stop`)."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(target=target, name=name, daemon=True)
        self.ended = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.ended.set()


def stop_requested() -> bool:
    """True in a :class:`BackgroundThread` whose consumer has stopped: long work there (polygonizing a
    band, waiting for a worker) checks this to end within a fraction of a second after a Ctrl-C."""
    t = threading.current_thread()
    return isinstance(t, BackgroundThread) and t.stop.is_set()


def check_stop() -> None:
    """Raise :class:`StopRequested` if :func:`stop_requested`."""
    if stop_requested():
        raise StopRequested


def join_through_interrupts(t: BackgroundThread, on_interrupt: Callable[[], None] | None = None) -> None:
    """Wait until ``t`` has ended even if a Ctrl-C (or an exception raised by a signal handler) arrives
    meanwhile; re-raise it afterwards.

    A thread left running inside GDAL while the caller goes on to close the datasets it uses, or while
    the interpreter exits, crashes the process (SIGSEGV) instead of the clean exit 130. ``Thread.join``
    cannot be retried after such an exception: Python 3.11 then marks the thread stopped while it still
    runs (``is_alive()`` is False), so this waits on the thread's own :attr:`~BackgroundThread.ended`.
    ``on_interrupt`` (e.g. telling ``t`` to stop early) is called when such an exception arrives.
    """
    pending: BaseException | None = None
    while t.ident is not None and not t.ended.is_set():
        try:
            t.ended.wait(0.1)
        except BaseException as e:  # noqa: BLE001 - re-raised below, once the thread has ended
            pending = pending or e
            if on_interrupt is not None:
                on_interrupt()
    if pending is not None:
        raise pending
    if t.ident is not None:
        t.join()  # returns at once: the thread's work has ended


def prefetch_in_thread(gen: Iterator[Any], maxsize: int = 2, name: str = "geoseg-prefetch") -> Iterator[Any]:
    """Yield the items of ``gen``, produced in a worker thread at most ``maxsize`` ahead.

    Exceptions of ``gen`` are re-raised in the consumer. When the consumer stops (the returned
    generator is closed or garbage collected, or a Ctrl-C arrives while it waits), the worker stops
    after the item in progress (sooner where that work calls :func:`check_stop`), closes ``gen``,
    and has ended before this generator finishes closing, so a resource that ``gen`` reads (an
    open dataset) may be closed right after.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, maxsize))

    def put(item: Any) -> bool:
        """Queue ``item`` unless the consumer has stopped; never blocks past a stop."""
        while not t.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in gen:
                if not put(item):
                    break
            else:
                put(_END)
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            put(e)
        finally:
            if t.stop.is_set() and hasattr(gen, "close"):
                gen.close()

    t = BackgroundThread(run, name)
    try:
        t.start()  # inside the try: a Ctrl-C right after the start still stops and joins the thread
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        t.stop.set()
        join_through_interrupts(t)
