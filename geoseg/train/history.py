"""What a training run reports (torch-free): a record per epoch, the progress and the final report,
where the run stands between epochs, and the history written as the metrics CSV and the curves PNG."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.io.atomic import atomic_output
from geoseg.metrics import SegmentationMetrics


@dataclass
class EpochRecord:
    """Scores of one epoch (validation fields are NaN without validation).

    ``epoch`` counts from 0 here; the CSV, the plot and the CLI count from 1.
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_miou: float
    val_macro_f1: float
    val_overall_accuracy: float
    val_iou: dict[str, float]
    lr: float
    seconds: float
    best: bool = False

    def row(self) -> dict[str, Any]:
        r: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": self.train_loss, "val_loss": self.val_loss,
                             "val_miou": self.val_miou, "val_macro_f1": self.val_macro_f1,
                             "val_overall_accuracy": self.val_overall_accuracy}
        r.update({f"val_iou_{k}": v for k, v in self.val_iou.items()})
        r.update({"lr": self.lr, "seconds": round(self.seconds, 3), "best": int(self.best)})
        return r



@dataclass
class TrainProgress:
    """Passed to ``on_progress`` after every step and every epoch."""

    phase: str  # "train", "val" or "epoch"
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float = math.nan
    record: EpochRecord | None = None


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train` did."""

    output: Path
    last: Path
    metrics_csv: Path
    curves_png: Path | None
    best_epoch: int
    best_miou: float
    epochs_run: int
    stopped_early: bool
    history: list[EpochRecord] = field(default_factory=list)
    val_metrics: SegmentationMetrics | None = None
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "32-true"
    #: the spatial cross-validation estimate (``cfg.cv``), also stored in the checkpoint
    cross_validation: Any = None


@dataclass
class Standing:
    """Where a run stands between epochs: restored by ``--resume``, saved in every last checkpoint."""

    start_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best_miou: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_val: SegmentationMetrics | None = None

    @classmethod
    def restore(cls, payload: dict[str, Any] | None) -> Standing:
        if payload is None:
            return cls()
        extra = payload["extra"]
        return cls(start_epoch=int(extra["epoch"]) + 1, history=[EpochRecord(**h) for h in extra.get("history", [])],
                   best_miou=float(extra.get("best_miou", -math.inf)), best_epoch=int(extra.get("best_epoch", -1)),
                   bad_epochs=int(extra.get("bad_epochs", 0)))

    def record(self, rec: EpochRecord, score: float, val: SegmentationMetrics | None) -> None:
        """Add an epoch's record; ``rec.best`` says whether it improved on the best ``score``."""
        self.history.append(rec)
        if rec.best:
            self.best_miou = score if not math.isnan(score) else self.best_miou
            self.best_epoch, self.bad_epochs, self.best_val = rec.epoch, 0, val
        else:
            self.bad_epochs += 1

def plain(h: EpochRecord) -> dict[str, Any]:
    d = dict(h.__dict__)
    d["val_iou"] = dict(d["val_iou"])
    return d


def write_history_csv(path: Path, history: list[EpochRecord]) -> None:
    rows = [h.row() for h in history]
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def write_curves_png(path: Path, history: list[EpochRecord]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ep = [h.epoch + 1 for h in history]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    a1, a2 = fig.subplots(1, 2)
    a1.plot(ep, [h.train_loss for h in history], "o-", label="train loss")
    if any(not math.isnan(h.val_loss) for h in history):
        a1.plot(ep, [h.val_loss for h in history], "o-", label="validation loss")
    a1.set_xlabel("epoch")
    a1.set_title("loss")
    a1.legend()
    for key, lab in (("val_miou", "val macro IoU"), ("val_macro_f1", "val macro F1"),
                     ("val_overall_accuracy", "val overall accuracy")):
        a2.plot(ep, [getattr(h, key) for h in history], "o-", label=lab)
    a2.set_ylim(0, 1)
    a2.set_xlabel("epoch")
    a2.set_title("validation")
    a2.legend()
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")

