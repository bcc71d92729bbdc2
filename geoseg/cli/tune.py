"""``geoseg tune``: search training options on your own data, scored by spatial cross-validation."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from geoseg.cli import app
from geoseg.cli._options import (ClassFieldOpt, OverwriteOpt, TrainDeviceOpt, TrainImageOpt, TrainLabelsOpt,
                                  VectorLabelsOpt)


class Sampler(str, Enum):
    tpe = "tpe"
    random = "random"
    grid = "grid"


@app.command()
def tune(
    image: TrainImageOpt = None,
    labels: TrainLabelsOpt = None,
    vector_labels: VectorLabelsOpt = None,
    class_field: ClassFieldOpt = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="The model trained with the best options (.pt); <stem>.tune.db, .tune.csv and .tune.png go beside it.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML or TOML file of 'geoseg train' options the trials start from (searched options are replaced).")] = None,
    trials: Annotated[int, typer.Option(help="Finished trials the study should hold (a resumed study runs the missing ones).", min=1)] = 20,
    folds: Annotated[int, typer.Option(help="Spatial cross-validation folds per trial.", min=2)] = 3,
    sampler: Annotated[Sampler, typer.Option(help="tpe (Bayesian), random, or grid (a fixed grid of architecture, lr, class weights, jitter).")] = Sampler.tpe,
    timeout: Annotated[Optional[float], typer.Option(help="Start no new trial after this many seconds [no limit].", min=1)] = None,
    storage: Annotated[Optional[Path], typer.Option(help="Optuna study file (SQLite); an existing one is resumed [<output stem>.tune.db].")] = None,
    device: TrainDeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the sampler and of every training [0].")] = None,
    overwrite: OverwriteOpt = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No per-trial messages.")] = False,
) -> None:
    """Search training options (architecture, learning rate, class weights, jitter, depth, context...)
    on IMAGE and its labels: each trial is scored by spatial cross-validation (macro F1 over held-out
    places, never pixels of training labels); hopeless trials are pruned; the study is resumable. Ends
    by training the best options on all labels into OUTPUT, with a table and a plot of the trials."""
    from geoseg.cli._console import err, out, say
    from geoseg.errors import UsageError
    from geoseg.io.atomic import check_destination
    from geoseg.models.files import checkpoint_destination
    from geoseg.train.config import TrainConfig
    from geoseg.train.tune import sidecars
    from geoseg.train.tune import tune as run_tune

    cli = {"images": list(image) if image else None, "labels": labels, "vector_labels": vector_labels,
           "class_field": class_field,
           "output": str(output) if output else None, "device": device, "seed": seed,
           "overwrite": True if overwrite else None}
    file_opts = TrainConfig.from_file(config) if config else None
    if output is None and not (file_opts or {}).get("output"):
        raise UsageError("no output; pass -o model.pt (or set output in --config)")
    cfg = TrainConfig.merge(file_opts, cli)
    check_destination(checkpoint_destination(cfg.output), overwrite=cfg.overwrite, inputs=list(cfg.images))
    db = storage or sidecars(cfg.output)[0]
    if not quiet:
        err.print(f"study: {db} ({'resuming' if Path(db).exists() else 'new'}); {trials} trials of {folds}-fold "
                  f"spatial cross-validation, {sampler.value} sampler")
    report = run_tune(cfg, trials=trials, folds=folds, sampler=sampler.value, timeout=timeout, storage=db,
                      log=None if quiet else say)
    out.print(f"best: macro F1 {report.best_macro_f1:.3f} (spatial CV; the best of {report.trials} trials, so "
              f"optimistic) with {report.best_params}")
    out.print(f"trials: {report.complete} complete, {report.pruned} pruned, {report.failed} failed; "
              f"table {report.table}" + (f", plot {report.plot}" if report.plot else ""))
    if report.model is not None:
        out.print(f"model: {report.model}")
    err.print(f"tuned in {report.seconds:.0f} s")
