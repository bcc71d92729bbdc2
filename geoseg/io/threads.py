"""Run a generator in a background thread, a bounded number of items ahead. Torch-free."""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

_END = object()


def prefetch_in_thread(gen: Iterator[Any], maxsize: int = 2, name: str = "geoseg-prefetch") -> Iterator[Any]:
    """Yield the items of ``gen``, produced in a worker thread at most ``maxsize`` ahead.

    Exceptions of ``gen`` are re-raised in the consumer. When the consumer stops (the returned
    generator is closed or garbage collected), the worker stops after the item in progress,
    closes ``gen``, and is joined before this generator finishes closing, so a resource that
    ``gen`` reads (an open dataset) may be closed right after.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, maxsize))
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Queue ``item`` unless the consumer has stopped; never blocks past a stop."""
        while not stop.is_set():
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
            if stop.is_set() and hasattr(gen, "close"):
                gen.close()

    t = threading.Thread(target=run, name=name, daemon=True)
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
        t.join()
