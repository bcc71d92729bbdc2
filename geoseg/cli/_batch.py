"""Running a command over many inputs one after another, with a summary of what failed."""

from __future__ import annotations

from typing import Callable, Sequence

from geoseg.batch import BatchItem, BatchSummary


def run_sequential(items: Sequence[BatchItem], run_one: Callable[[BatchItem], None],
                   complete: Callable[[BatchItem], bool] | None = None) -> BatchSummary:
    """Run ``run_one`` on each item in turn; a failing input is reported by name and the next one runs.

    ``complete`` (``--resume``) says which inputs are already done: they are skipped. An
    interruption (Ctrl-C, SIGTERM) stops the batch. Ends with :func:`finish`.
    """
    from geoseg.cli._console import err, styled
    from geoseg.errors import GeosegError, Interrupted, for_cli

    summary = BatchSummary()
    n = len(items)
    for i, item in enumerate(items, start=1):
        if complete is not None and complete(item):
            summary.skipped.append(item.source)
            err.print(f"[{i}/{n}] {item.source}: already complete, skipped", soft_wrap=True)
            continue
        err.print(f"[{i}/{n}] {item.source}", soft_wrap=True)
        try:
            run_one(item)
        except Interrupted:
            raise
        except GeosegError as e:
            err.print(styled("error:", "bold red", f" {summary.fail(item.source, for_cli(e))}"), soft_wrap=True)
        else:
            summary.done.append(item.source)
    finish(summary)
    return summary


def finish(summary: BatchSummary) -> None:
    """Print the summary; a :class:`~geoseg.errors.BatchError` (exit status 1) if any input failed."""
    from geoseg.cli._console import err
    from geoseg.errors import BatchError, for_cli

    for line in summary.lines():
        err.print(for_cli(line), soft_wrap=True)
    if summary.failed:
        raise BatchError(f"{len(summary.failed)} of {summary.total} inputs failed (listed above)")
