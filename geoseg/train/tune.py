"""Hyper-parameter search on the user's own data (``geoseg tune``, ``geoseg train --auto``), with Optuna.

Every trial trains with one set of options and is scored by spatial cross-validation
(:mod:`geoseg.train.crossval`): the pooled macro F1 over held-out spatial units, never pixels of the
training labels. After each fold the pooled score so far is reported to Optuna, whose median pruner
stops trials that are already worse than the median of earlier trials at the same fold. The study lives
in an SQLite file, so an interrupted search continues where it stopped. At the end a model is trained
on all labels with the best options; the table of trials (CSV) and a plot (PNG) are written beside it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from geoseg.errors import GeosegError, UsageError
from geoseg.train.config import TrainConfig

#: samplers of ``--sampler``
SAMPLERS = ("tpe", "random", "grid")

#: the grid of ``--sampler grid`` (options every architecture takes; the grid is their product)
GRID: dict[str, list[Any]] = {
    "arch": ["unet", "tempcnn"],
    "lr": [3e-4, 1e-3, 3e-3],
    "class_weights": ["none", "auto"],
    "jitter": [0.0, 0.2],
}


def suggest(trial: Any, base: TrainConfig) -> dict[str, Any]:
    """The options of one trial: the architecture, then the options that architecture takes."""
    p: dict[str, Any] = {
        "arch": trial.suggest_categorical("arch", ["unet", "tempcnn"]),
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "class_weights": trial.suggest_categorical("class_weights", ["none", "auto"]),
        "jitter": trial.suggest_categorical("jitter", [0.0, 0.1, 0.2]),
    }
    # options of one architecture only (TPE and random sampling handle such conditional spaces)
    if p["arch"] == "unet":
        p["depth"] = trial.suggest_int("depth", 1, 3)
        p["base_channels"] = trial.suggest_categorical("base_channels", [16, 32])
        p["tile_size"] = trial.suggest_categorical("tile_size", [32, 64])
    else:
        p["context"] = trial.suggest_categorical("context", [1, 3, 5])
        p["tile_size"] = 16
    return p


def _grid_suggest(trial: Any, base: TrainConfig) -> dict[str, Any]:
    p = {k: trial.suggest_categorical(k, v) for k, v in GRID.items()}
    p["tile_size"] = 16 if p["arch"] == "tempcnn" else base.tile_size
    return p


@dataclass
class TuneReport:
    """What :func:`tune` did."""

    best_params: dict[str, Any]
    best_macro_f1: float
    trials: int
    complete: int
    pruned: int
    failed: int
    table: Path
    plot: Path | None
    model: Path | None
    seconds: float


def _config(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    # options of the other architecture are reset to the table's defaults
    cleared = {k: None for k in ("depth", "base_channels", "context", "bands_per_date", "encoder", "encoder_depth")}
    return dataclasses.replace(base, **{**cleared, **params}, cv=0).validate()


def sidecars(output: str | Path) -> tuple[Path, Path, Path]:
    """``best.pt`` -> ``best.tune.db``, ``best.tune.csv``, ``best.tune.png``."""
    p = Path(output)
    return (p.with_name(p.stem + ".tune.db"), p.with_name(p.stem + ".tune.csv"), p.with_name(p.stem + ".tune.png"))


def tune(base: TrainConfig, *, trials: int = 20, folds: int = 3, sampler: str = "tpe", timeout: float | None = None,
         storage: str | Path | None = None, train_best: bool = True,
         log: Callable[[str], None] | None = None) -> TuneReport:
    """Search training options for ``base`` (its images, labels and output) and train the best.

    Args:
        base: the run's configuration; the searched options replace its own, the others are kept.
        trials: the number of finished (complete or pruned) trials the study should hold; a resumed
            study runs only the missing ones.
        folds: spatial cross-validation folds per trial.
        sampler: ``tpe`` (Bayesian), ``random`` or ``grid`` (:data:`GRID`).
        timeout: stop starting new trials after this many seconds.
        storage: the study's SQLite file (default ``<output stem>.tune.db``); an existing one is resumed.
        train_best: train ``base.output`` with the best options on all labels at the end.
        log: called with a line of text per trial and fold.
    """
    import warnings

    import optuna

    t0 = time.perf_counter()
    if sampler not in SAMPLERS:
        raise UsageError(f"`sampler` {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if trials < 1 or folds < 2:
        raise UsageError("`trials` must be >= 1 and `folds` >= 2")
    db, csv_path, png_path = sidecars(base.output)
    db = Path(storage) if storage else db
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=base.seed, n_startup_trials=min(5, trials)),
        "random": lambda: optuna.samplers.RandomSampler(seed=base.seed),
        "grid": lambda: optuna.samplers.GridSampler(GRID, seed=base.seed),
    }
    setup = _study_setup(base, folds, sampler)

    def open_study() -> Any:
        return optuna.create_study(
            study_name="geoseg", storage=f"sqlite:///{db.resolve()}", load_if_exists=True, direction="maximize",
            sampler=samplers[sampler](), pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))

    study = open_study()
    before = study.user_attrs.get("setup")
    if before is not None and before != setup:  # a study of other data or options: never resumed as this one
        from geoseg.resume import changed_options

        changed = changed_options(before, setup)
        if not base.overwrite:
            raise UsageError(f"{db}: holds a study of other options ({', '.join(changed[:6])} changed); pass "
                             "`overwrite=True` to start a new one, or the same options to resume it")
        del study
        db.unlink()
        if log:
            log(f"{db}: a study of other options ({', '.join(changed[:6])} changed) replaced by a new one")
        study = open_study()
        before = None
    if before is None:
        study.set_user_attr("setup", setup)
    from geoseg.train.crossval import spatial_cross_validation

    pick = _grid_suggest if sampler == "grid" else suggest

    def objective(trial: Any) -> float:
        params = pick(trial, base)
        trial.set_user_attr("options", params)  # with what the sampler does not choose (tempcnn's chip size)
        try:
            cfg = _config(base, params)
        except UsageError as e:  # a combination the architecture refuses: not a failure of the search
            trial.set_user_attr("not_possible", str(e))
            raise optuna.TrialPruned(str(e)) from None

        def on_fold(f: int, so_far: Any) -> None:
            trial.report(so_far.macro_f1, f)
            if log:
                log(f"trial {trial.number} fold {f + 1}/{folds}: macro F1 so far {so_far.macro_f1:.3f}")
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            cv = spatial_cross_validation(cfg, folds, on_fold=on_fold)
        except GeosegError as e:  # settings this data cannot take (a chip larger than a fold's window...)
            if log:
                log(f"trial {trial.number} {params}: not possible here: {e}")
            trial.set_user_attr("not_possible", str(e))
            raise optuna.TrialPruned(str(e)) from None
        trial.set_user_attr("overall_accuracy", cv.overall_accuracy)
        trial.set_user_attr("cv", cv.to_dict())
        if log:
            log(f"trial {trial.number} {params}: macro F1 {cv.macro_f1:.3f}, OA {cv.overall_accuracy:.3f}")
        return cv.macro_f1 if not math.isnan(cv.macro_f1) else 0.0

    done = lambda: sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # noqa: E731
                       for t in study.trials)
    left = trials - done()
    if log and done():
        log(f"{db}: resuming a study with {done()} finished trials")
    if left > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=left, timeout=timeout, catch=(RuntimeError,))
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        why = [t.user_attrs["not_possible"] for t in study.trials if "not_possible" in t.user_attrs]
        raise UsageError("no trial finished: every trial was pruned or failed"
                         + (f"; e.g. {why[-1]}" if why else ""))
    best = study.best_trial
    _write_table(study, csv_path)
    plot = _write_plot(study, png_path)
    model = None
    if train_best:
        from geoseg.train.loop import train

        cfg = dataclasses.replace(_config(base, best.user_attrs["options"]), overwrite=True)
        if log:
            log(f"training the best options on all labels: {best.params}")
        train(cfg)
        _record_tune(cfg.output, best, len(study.trials), sampler, folds)
        model = Path(cfg.output)
    return TuneReport(best_params=dict(best.params), best_macro_f1=float(best.value or 0.0), trials=len(study.trials),
                      complete=len(complete), pruned=states.count(optuna.trial.TrialState.PRUNED),
                      failed=states.count(optuna.trial.TrialState.FAIL), table=csv_path, plot=plot, model=model,
                      seconds=time.perf_counter() - t0)


def _study_setup(base: TrainConfig, folds: int, sampler: str) -> dict[str, str]:
    """What a study's trials depend on: the data, the options not searched, folds and sampler (as text, as
    the study stores it); a resumed study must have the same."""
    import json

    run_only = {"output", "overwrite", "resume", "device", "devices", "num_workers"}
    opts = {k: json.dumps(v, sort_keys=True, default=str) for k, v in dataclasses.asdict(base).items()
            if k not in run_only}
    return {**opts, "folds": str(folds), "sampler": sampler}


def _record_tune(path: str, best: Any, n: int, sampler: str, folds: int) -> None:
    """The search in the checkpoint: the best trial's cross-validation, marked as chosen among ``n``."""
    from geoseg.models.checkpoint import update_training_record

    cv = dict(best.user_attrs.get("cv", {}))
    cv["method"] = f"{cv.get('method', '')}; the best of {n} trials, so optimistic"
    update_training_record(path, spatial_cv=cv, tune={"sampler": sampler, "trials": n, "folds": folds,
                                                      "best_trial": best.number, "best_params": dict(best.params)})


def _write_table(study: Any, path: Path) -> None:
    from geoseg.io.atomic import atomic_output

    df = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration", "user_attrs"))
    df = df.drop(columns=[c for c in df.columns if c in ("user_attrs_cv", "user_attrs_options")], errors="ignore")
    with atomic_output(path, overwrite=True) as tmp:
        df.to_csv(tmp, index=False)


def _write_plot(study: Any, path: Path) -> Path | None:
    """Score of every trial and the best so far, pruned trials marked: the search at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    from geoseg.io.atomic import atomic_output

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ys = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pr = [(t.number, max(t.intermediate_values.values())) for t in study.trials
          if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    ax.scatter(xs, ys, label="trial (spatial CV macro F1)", color="tab:blue", zorder=3)
    if pr:
        ax.scatter(*zip(*pr), label="pruned (score when stopped)", color="tab:gray", marker="x", zorder=3)
    best, run = [], -1.0
    for x, y in zip(xs, ys):
        run = max(run, y)
        best.append(run)
    ax.step(xs, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("macro F1 (spatial cross-validation)")
    ax.set_title("geoseg tune")
    ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
