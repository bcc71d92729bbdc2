"""Progress on stderr fed by the library's ``on_progress`` callbacks: a rich bar, or JSON lines for tools."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from geoseg.cli._console import err


def json_progress(stage: str, done: float, total: float | None, **extra: Any) -> None:
    """One machine-readable progress line on stderr:
    ``{"event": "progress", "stage": ..., "done": ..., "total": ..., "fraction": 0..1}`` (fraction null
    while the total is unknown), plus ``extra`` fields. Tools read every stderr line that parses as
    JSON with ``"event": "progress"``; other lines are messages."""
    frac = min(1.0, max(0.0, done / total)) if total else None
    line = {"event": "progress", "stage": stage, "done": done, "total": total, "fraction": frac, **extra}
    sys.stderr.write(json.dumps(line) + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def progress_bar(quiet: bool = False, description: str = "tiles",
                 mode: str = "bar") -> Iterator[Callable[[Any], None] | None]:
    """Yield an ``on_progress`` callback (None when quiet or ``mode`` is ``none``) that drives a
    progress bar on stderr, or with ``mode="json"`` writes :func:`json_progress` lines.

    The bar appears at the first callback, so errors raised before any work starts print
    alone. The callback takes any object with ``tiles_done``/``tiles_total`` (or
    ``done``/``total``) and optionally ``pixels_done`` and ``seconds`` attributes.
    """
    mode = getattr(mode, "value", mode)
    if quiet or mode == "none":
        yield None
        return
    if mode == "json":
        def jcb(p: Any) -> None:
            json_progress(description, getattr(p, "tiles_done", getattr(p, "done", 0)),
                          getattr(p, "tiles_total", getattr(p, "total", None)))

        yield jcb
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
