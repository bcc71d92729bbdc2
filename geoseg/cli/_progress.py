"""A rich progress bar fed by the library's ``on_progress`` callbacks."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from geoseg.cli._console import err


@contextlib.contextmanager
def progress_bar(quiet: bool = False, description: str = "tiles") -> Iterator[Callable[[Any], None] | None]:
    """Yield an ``on_progress`` callback (None when quiet) that drives a progress bar on stderr.

    The bar appears at the first callback, so errors raised before any work starts print
    alone. The callback takes any object with ``tiles_done``/``tiles_total`` (or
    ``done``/``total``) and optionally ``pixels_done`` and ``seconds`` attributes.
    """
    if quiet:
        yield None
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    prog = Progress(*cols, console=err, transient=False)
    state: dict[str, Any] = {}

    def cb(p: Any) -> None:
        if "task" not in state:
            prog.start()
            state["task"] = prog.add_task(description, total=None, rate="")
        done = getattr(p, "tiles_done", getattr(p, "done", 0))
        total = getattr(p, "tiles_total", getattr(p, "total", None))
        rate = ""
        px = getattr(p, "pixels_done", None)
        secs = getattr(p, "seconds", None)
        if px is not None and secs:
            rate = f"{px / 1e6 / secs:.2f} Mpx/s"
        prog.update(state["task"], completed=done, total=total, rate=rate)

    try:
        yield cb
    finally:
        if "task" in state:
            prog.stop()
