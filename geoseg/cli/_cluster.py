"""``--scheduler`` / ``--workers`` of infer and vectorize: the work goes to a Dask cluster
(:mod:`geoseg.distributed`); this module prints the dashboard, the progress bar and the summary."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from geoseg.batch import BatchItem, BatchSummary
from geoseg.errors import for_cli


@contextlib.contextmanager
def _cluster(scheduler: str | None, workers: int | None, readable: Sequence[str], writable: Sequence[Path]
             ) -> Iterator[Any]:
    from geoseg.cli._console import err
    from geoseg.distributed.cluster import check_storage, client_for, dashboard

    with client_for(scheduler, workers) as client:
        n = len(client.scheduler_info()["workers"])
        where = scheduler or f"a local cluster of {workers} worker{'s' if workers != 1 else ''}"
        err.print(f"Dask: {where}, {n} worker{'s' if n != 1 else ''}"
                  + (f"; dashboard {dashboard(client)}" if dashboard(client) else ""), soft_wrap=True)
        check_storage(client, readable, sorted({str(p.resolve()) for p in writable}))
        yield client


def _bar(quiet: bool, mode: str) -> Any:
    from geoseg.cli._progress import progress_bar

    return progress_bar(quiet, description="tasks", mode=mode)


class _Tasks:
    def __init__(self, done: int, total: int) -> None:
        self.done, self.total = done, total


def _absolute(source: str) -> str:
    from geoseg.io.paths import is_virtual

    return source if is_virtual(source) else str(Path(source).resolve())


def infer_on_cluster(items: Sequence[BatchItem], outputs: Callable[[BatchItem], dict[str, Path]], model: Any,
                     options: dict[str, Any], *, scheduler: str | None, workers: int | None, block_rows: int | None,
                     probabilities: bool, overwrite: bool, resume: bool, complete: Callable[[BatchItem], bool] | None,
                     quiet: bool, progress: str = "bar", polygons: Callable[[dict[str, Path]], Path] | None,
                     preview: Callable[[BatchItem, dict[str, Path]], None] | None) -> None:
    from geoseg.cli._batch import finish
    from geoseg.cli._console import err, out
    from geoseg.distributed.jobs import InferJob, infer_many

    models = [str(Path(m).resolve()) for m in (model if isinstance(model, list) else [model])]
    summary = BatchSummary()
    jobs, by_job = [], {}
    for item in items:
        if complete is not None and complete(item):
            summary.skipped.append(item.source)
            continue
        paths = {k: p.resolve() for k, p in outputs(item).items()}
        job = InferJob(_absolute(item.source), paths["classes"], paths["probabilities"] if probabilities else None,
                       polygons(paths) if polygons is not None else None)
        jobs.append(job)
        by_job[id(job)] = (item, paths)
    names = {j.source: by_job[id(j)][0].source for j in jobs}  # the names the user typed

    def done(job: InferJob, result: dict[str, Any]) -> None:
        item, paths = by_job[id(job)]
        out.print(f"classes: {job.classes}", soft_wrap=True)
        if job.probabilities:
            out.print(f"probabilities: {job.probabilities}", soft_wrap=True)
        if job.polygons:
            out.print(f"polygons: {job.polygons}", soft_wrap=True)
        if preview is not None:
            preview(item, paths)

    readable = [j.source for j in jobs] + models
    tasks = [0]

    def on_task(d: int, t: int) -> None:
        tasks[0] = t
        if bar is not None:
            bar(_Tasks(d, t))

    with _cluster(scheduler, workers, readable, [j.classes.parent for j in jobs]) as client, _bar(quiet, progress) as bar:
        infer_many(client, jobs, models, options, overwrite=overwrite, resume=resume, block_rows=block_rows,
                   summary=summary, on_task=on_task, on_done=done)
    err.print(f"{tasks[0]} task{'s' if tasks[0] != 1 else ''} ran on the cluster", soft_wrap=True)
    summary.done = [names.get(s, s) for s in summary.done]
    summary.failed = [(names.get(s, s), for_cli(m.replace(s, names.get(s, s), 1))) for s, m in summary.failed]
    for _, msg in summary.failed:
        from geoseg.cli._console import styled

        err.print(styled("error:", "bold red", f" {msg}"), soft_wrap=True)
    finish(summary)


def vectorize_on_cluster(pairs: Sequence[tuple[str, Path]], options: dict[str, Any], *, probabilities: Path | None,
                         overwrite: bool, scheduler: str | None, workers: int | None, resume: bool,
                         quiet: bool, progress: str = "bar") -> None:
    """Several inputs: one task each. One input: its row bands are polygonized by the workers and merged
    here, the same polygons as one process."""
    from geoseg.cli._batch import finish
    from geoseg.cli._console import err, out, styled
    from geoseg.cli.vectorize import print_report
    from geoseg.distributed.jobs import vectorize_many

    todo = [(s, o) for s, o in pairs if not (resume and o.exists())]
    summary = BatchSummary(skipped=[s for s, o in pairs if (s, o) not in todo])
    if not todo:
        finish(summary)
        return
    abs_pairs = [(_absolute(s), o.resolve()) for s, o in todo]
    readable = [s for s, _ in abs_pairs] + ([str(probabilities.resolve())] if probabilities else [])
    with _cluster(scheduler, workers, readable, [o.parent for _, o in abs_pairs]) as client, _bar(quiet, progress) as bar:
        if len(pairs) == 1:
            from geoseg.vector import vectorize

            n = len(client.scheduler_info()["workers"])
            report = vectorize(abs_pairs[0][0], abs_pairs[0][1], probabilities=probabilities, overwrite=overwrite,
                               executor=client, workers=n, on_progress=bar, **options)
            print_report(report)
            return
        vectorize_many(client, abs_pairs, options, overwrite=overwrite, summary=summary,
                       on_task=(lambda d, t: bar(_Tasks(d, t))) if bar else None,
                       on_done=lambda src, out_path, res: out.print(f"polygons: {out_path}", soft_wrap=True))
    for _, msg in summary.failed:
        err.print(styled("error:", "bold red", f" {for_cli(msg)}"), soft_wrap=True)
    finish(summary)
