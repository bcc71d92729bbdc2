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


class Prefetcher:
    """The items of ``gen``, produced in a worker thread at most ``maxsize`` ahead, as an iterator.

    Unlike :func:`prefetch_in_thread`, the worker can start before the first item is asked for
    (:meth:`start`): a run starts reading its input while it still sets up its outputs. Exceptions
    of ``gen`` are re-raised in the consumer. :meth:`close` (also called when the items run out or
    one raises) stops the worker after the item in progress (sooner where that work calls
    :func:`check_stop`), closes ``gen``, and returns once the worker has ended, so a resource that
    ``gen`` reads (an open dataset) may be closed right after. Register :meth:`close` (an
    ``ExitStack`` callback) before calling :meth:`start`.
    """

    def __init__(self, gen: Iterator[Any], maxsize: int = 2, name: str = "geoseg-prefetch") -> None:
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

        def run() -> None:  # references neither self nor the consumer: both can be collected
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
        self._q, self._t, self._closed = q, t, False

    def start(self) -> "Prefetcher":
        """Start the worker (once; :meth:`__next__` starts it too)."""
        if self._t.ident is None and not self._closed:
            self._t.start()
        return self

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        self.start()
        try:
            item = self._q.get()
        except BaseException:
            self.close()
            raise
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the worker and wait until it has ended (through a Ctrl-C meanwhile)."""
        self._closed = True
        self._t.stop.set()
        join_through_interrupts(self._t)


def prefetch_in_thread(gen: Iterator[Any], maxsize: int = 2, name: str = "geoseg-prefetch") -> Iterator[Any]:
    """Yield the items of ``gen``, produced in a worker thread at most ``maxsize`` ahead (a
    :class:`Prefetcher` that starts at the first item).

    When the consumer stops (the returned generator is closed or garbage collected, or a Ctrl-C
    arrives while it waits), the worker stops and has ended before this generator finishes closing.
    """
    p = Prefetcher(gen, maxsize, name)
    try:
        p.start()  # inside the try: a Ctrl-C right after the start still stops and joins the thread
        yield from p
    finally:
        p.close()
