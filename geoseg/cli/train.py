"""``geoseg train``: a model from imagery plus a label raster or training polygons."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from geoseg.train.history import TrainProgress

from geoseg.cli import app
from geoseg.architectures import ARCHITECTURES
from geoseg.cli._options import (ARCH_HELP, BaseChannelsOpt, ClassFieldOpt, DepthOpt, EncoderDepthOpt, EncoderOpt,
                                  OverwriteOpt, ProgressMode, ProgressOpt, TrainDeviceOpt, TrainImageOpt, TrainLabelsOpt,
                                  VectorLabelsOpt)

TEMPCNN = ARCHITECTURES["tempcnn"].defaults
#: the fixed budget of ``train --auto``: trials of the search and spatial folds per trial
AUTO_TRIALS, AUTO_FOLDS = 8, 3


#: --arch of train: auto (geoseg.train.auto picks) or an architecture of the table
TrainArch = Enum("TrainArch", [("auto", "auto")] + [(name, name) for name in ARCHITECTURES], type=str)  # type: ignore[misc]


class Sampling(str, Enum):
    auto = "auto"
    pixels = "pixels"
    chips = "chips"


class Weights(str, Enum):
    none = "none"
    auto = "auto"


class Augment(str, Enum):
    d4 = "d4"
    none = "none"


@app.command()
def train(
    image: TrainImageOpt = None,
    labels: TrainLabelsOpt = None,
    vector_labels: VectorLabelsOpt = None,
    class_field: ClassFieldOpt = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Best checkpoint (.pt); .last.pt, .metrics.csv, .curves.png go beside it.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML or TOML file with any of these options (command line wins).")] = None,
    arch: Annotated[Optional[TrainArch], typer.Option(help=ARCH_HELP + " auto: tempcnn on the labelled pixels for polygons, points and time series (then also reading each pixel's 7x7 neighbourhood), unet on chips for a label raster on a few bands; says what it picked [auto].")] = None,
    sampling: Annotated[Optional[Sampling], typer.Option(help="pixels: a per-pixel model trains on a table of the labelled pixels, classes drawn by sqrt(frequency); chips: on chips. auto: pixels for tempcnn with --context 1; with --context K each pixel also carries its K x K mean [auto].")] = None,
    class_balance: Annotated[Optional[float], typer.Option(help="--sampling pixels: draw each class with weight (its pixels)**B: 1 as labelled, 0.5 by the square root, 0 equally [0.5 for polygons/points, 1 for a label raster].", min=0, max=1)] = None,
    base_channels: BaseChannelsOpt = None,
    depth: DepthOpt = None,
    encoder: EncoderOpt = None,
    encoder_depth: EncoderDepthOpt = None,
    encoder_weights: Annotated[Optional[Path], typer.Option(help="smp-*: pretrained encoder weights from a file you downloaded (timm, smp or torchgeo state dict; .pt, .pth, .safetensors); other band counts are adapted. Nothing is downloaded [random init].")] = None,
    bands_per_date: Annotated[Optional[int], typer.Option(help=f"tempcnn: bands per date, bands ordered date by date [{TEMPCNN['bands_per_date']}].", min=1)] = None,
    context: Annotated[Optional[int], typer.Option(help=f"tempcnn: odd side in pixels of the neighbourhood whose mean profile is read beside each pixel's, e.g. 7 [{TEMPCNN['context']}: the pixel alone].", min=1)] = None,
    members: Annotated[Optional[int], typer.Option(help="tempcnn: networks trained side by side, their probabilities averaged in one checkpoint (an ensemble) [3 with --sampling pixels, else 1].", min=1)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs [20].", min=1)] = None,
    samples_per_epoch: Annotated[Optional[int], typer.Option(help="Training chips per epoch [about the non-overlapping chips of the training regions], or pixels with --sampling pixels [12800].", min=1)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Chips per step [8], or pixels [256].", min=1)] = None,
    tile_size: Annotated[Optional[int], typer.Option(help="Chip side in pixels, >= 16 for the U-Nets [64].", min=1)] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate, cosine-decayed [1e-3].")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay [1e-4].")] = None,
    class_weights: Annotated[Optional[Weights], typer.Option(help="auto: weight classes by inverse sqrt frequency [none].")] = None,
    dice: Annotated[Optional[bool], typer.Option("--dice/--no-dice", help="Add a soft Dice loss [no].")] = None,
    augment: Annotated[Optional[Augment], typer.Option(help="d4: random flips and 90° rotations [d4].")] = None,
    jitter: Annotated[Optional[float], typer.Option(help="Photometric jitter amplitude, normalised units [0.05 with --sampling pixels, else 0 = off].")] = None,
    band_dropout: Annotated[Optional[float], typer.Option(help="Probability of replacing each band of a chip by its mean, e.g. 0.3 for cloudy time series [0 = off].")] = None,
    ema: Annotated[Optional[float], typer.Option(help="Decay of an exponential moving average of the weights, used for validation and saved, e.g. 0.99 [0 = off].")] = None,
    val_split: Annotated[Optional[float], typer.Option(help="Fraction of polygons / spatial blocks held out for validation [0.2 on chips, 0 with --sampling pixels].")] = None,
    val_block: Annotated[Optional[int], typer.Option(help="Raster labels: spatial block side in pixels [max(2*tile, 64); 32 with --sampling pixels].", min=16)] = None,
    class_map: Annotated[Optional[list[str]], typer.Option(help="SOURCE=TARGET to rename or merge classes, TARGET 'ignore' drops; repeatable.")] = None,
    ignore_value: Annotated[Optional[list[int]], typer.Option(help="Label-raster value meaning unlabelled; repeatable [0].")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early stopping: epochs without a better val macro IoU [10].", min=1)] = None,
    cv: Annotated[Optional[int], typer.Option(help="After training, estimate accuracy by spatial cross-validation with this many folds (each trains a model); stored in the checkpoint; 0 = off [3 for polygons or points with --sampling pixels, else 0].", min=0)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of every random choice [0].")] = None,
    device: TrainDeviceOpt = None,
    devices: Annotated[Optional[int], typer.Option(help="GPUs for DDP (Lightning Fabric) [1].", min=1)] = None,
    num_workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes (default: 0 on a CPU, up to 8 per GPU).", min=0)] = None,
    auto: Annotated[bool, typer.Option("--auto", help=f"Search the options first: a small 'geoseg tune' ({AUTO_TRIALS} trials of {AUTO_FOLDS}-fold spatial cross-validation; the study is kept in <output stem>.tune.db), then train the best.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <output stem>.last.pt.")] = False,
    overwrite: OverwriteOpt = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    progress: ProgressOpt = ProgressMode.bar,
) -> None:
    """Train a model on IMAGE(s) with a label raster or polygons; the result works with 'geoseg infer'."""
    from geoseg.cli._console import err, out, say
    from geoseg.train.config import TrainConfig, parse_class_map

    cli = {
        "images": list(image) if image else None,  # strings: Path() would turn http://host into http:/host
        "labels": labels,
        "vector_labels": vector_labels,
        "class_field": class_field, "output": str(output) if output else None,
        "arch": arch.value if arch else None, "sampling": sampling.value if sampling else None,
        "class_balance": class_balance, "base_channels": base_channels, "depth": depth, "encoder": encoder,
        "encoder_depth": encoder_depth, "encoder_weights": str(encoder_weights) if encoder_weights else None, "bands_per_date": bands_per_date, "context": context, "members": members, "epochs": epochs, "samples_per_epoch": samples_per_epoch,
        "batch_size": batch_size, "tile_size": tile_size, "lr": lr, "weight_decay": weight_decay,
        "class_weights": class_weights.value if class_weights else None, "dice": dice,
        "augment": augment.value if augment else None, "jitter": jitter, "band_dropout": band_dropout, "ema": ema,
        "val_split": val_split,
        "val_block": val_block, "class_map": parse_class_map(class_map) if class_map else None,
        "ignore_values": list(ignore_value) if ignore_value else None, "patience": patience, "cv": cv, "seed": seed,
        "device": device, "devices": devices, "num_workers": num_workers,
        "resume": True if resume else None, "overwrite": True if overwrite else None,
    }
    file_opts = TrainConfig.from_file(config) if config else None
    if output is None and not (file_opts or {}).get("output"):
        from geoseg.errors import UsageError

        raise UsageError("no output; pass -o model.pt (or set output in --config)")
    cfg = TrainConfig.merge(file_opts, cli)
    if ignore_value and cfg.vector_labels:
        from geoseg.errors import UsageError

        raise UsageError("--ignore-value names label-raster values; to leave the polygons of a class out, map it "
                         "away with --class-map VALUE=ignore")

    if auto:
        from geoseg.train.tune import tune as run_tune

        report_t = run_tune(cfg, trials=AUTO_TRIALS, folds=AUTO_FOLDS, sampler="tpe", log=None if quiet else say)
        out.print(f"--auto: the best of {report_t.trials} trials, macro F1 {report_t.best_macro_f1:.3f} (spatial CV, "
                  f"optimistic): {report_t.best_params}; table {report_t.table}")
        out.print(f"model: {report_t.model}")
        return
    from geoseg.train.loop import train as run_train

    from geoseg.errors import Interrupted

    try:
        with _TrainBar(quiet or progress == ProgressMode.none, json_lines=progress == ProgressMode.json) as cb:
            report = run_train(cfg, on_progress=cb, command=["geoseg", *sys.argv[1:]],
                               on_message=say)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted("interrupted; checkpoints of finished epochs are kept: run the same command with "
                          "--resume to continue") from None
    out.print(f"best model: {report.output} (epoch {report.best_epoch + 1}"
              + (f", val macro IoU {report.best_miou:.3f})" if report.best_miou == report.best_miou else ")"))
    out.print(f"last checkpoint: {report.last}")
    out.print(f"metrics: {report.metrics_csv}, curves: {report.curves_png}")
    if report.val_metrics is not None:
        from geoseg.cli.evaluate import metrics_table

        out.print(metrics_table(report.val_metrics, title="validation (best epoch)"))
    if report.cross_validation is not None:
        out.print(f"estimated accuracy: {report.cross_validation.summary()}")
    err.print(f"{report.epochs_run} epochs on {report.device} {report.precision} in {report.seconds:.1f} s"
              + (" (stopped early)" if report.stopped_early else ""))


class _TrainBar:
    """Rich progress bar: one bar per epoch with the running loss and the last validation scores."""

    def __init__(self, quiet: bool, json_lines: bool = False) -> None:
        self.quiet = quiet
        self.json_lines = json_lines
        self.prog: Any = None  # rich's Progress, imported when a bar is shown
        self.task: Any = None
        self.last = ""

    def __enter__(self) -> Any:
        if self.quiet:
            return None
        if self.json_lines:
            return self._json
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from geoseg.cli._console import err

        self.prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err)
        self.prog.__enter__()
        return self

    def __call__(self, p: TrainProgress) -> None:
        prog = self.prog
        assert prog is not None
        desc = f"epoch {p.epoch}/{p.epochs} {p.phase}"
        if p.phase == "epoch":
            r = p.record
            assert r is not None  # every epoch event carries its record
            self.last = (f"val mIoU {r.val_miou:.3f} F1 {r.val_macro_f1:.3f} OA {r.val_overall_accuracy:.3f}"
                         if r.val_miou == r.val_miou else "")
            info = f"loss {r.train_loss:.4f} {self.last}" + (" *best" if r.best else "")
            if self.task is not None:
                prog.update(self.task, completed=p.steps, total=p.steps, info=info, description=f"epoch {p.epoch}/{p.epochs}")
            self.task = None
            return
        if self.task is None:
            self.task = prog.add_task(desc, total=p.steps, info="")
        info = f"loss {p.loss:.4f} {self.last}" if p.phase == "train" else self.last
        prog.update(self.task, completed=p.step, total=p.steps, info=info, description=desc)

    @staticmethod
    def _json(p: TrainProgress) -> None:
        """JSON progress lines in epochs (done 2.5 of total 10: half-way through the third epoch's
        training steps; validation counts as the end of its epoch)."""
        from geoseg.cli._progress import json_progress

        part = p.step / max(1, p.steps) if p.phase == "train" else 1.0
        json_progress(f"epoch {p.epoch}/{p.epochs} {p.phase}", round(p.epoch - 1 + part, 4), p.epochs)

    def __exit__(self, *exc: Any) -> None:
        if self.prog is not None:
            self.prog.__exit__(*exc)
