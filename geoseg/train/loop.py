"""The training loop (imports torch; devices and precision through Lightning Fabric).

One code path for every device: Lightning Fabric sets up the model, optimizer and
loaders; on CUDA it runs bf16 autocast and the model in channels_last, with
``devices > 1`` it runs DDP (Lightning's launcher), on CPU it runs fp32.

Each epoch: random chips from the training regions (RandomGeoSampler), loss =
cross entropy with ``ignore_index`` (optionally class-weighted) + optional soft
Dice, then a full pass over the validation grid (GridGeoSampler) that accumulates
one confusion matrix. The best epoch by validation macro IoU is written to
``output`` and every epoch to ``<stem>.last.pt`` (both atomically), the history to
``<stem>.metrics.csv`` and ``<stem>.curves.png``.

Reproducibility: every random draw of epoch ``e`` (chip positions, augmentation,
dropout) is seeded from ``(seed, e)``, so a run resumed after epoch ``e`` continues
exactly as the uninterrupted run would on CPU.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from geoseg.errors import CheckpointError, UsageError
from geoseg.io.atomic import atomic_output, check_destination
from geoseg.metrics import SegmentationMetrics, metrics_from_confusion
from geoseg.modelmeta import PER_PIXEL, ModelMeta, default_overlap
from geoseg.train import data as D
from geoseg.train.config import IGNORE_INDEX, TrainConfig

#: config fields that must not change when resuming
_RESUME_FIXED = ("images", "labels", "vector_labels", "class_field", "arch", "base_channels", "depth", "encoder",
                 "encoder_depth", "encoder_weights", "tile_size", "class_map", "ignore_values", "val_split", "val_block", "seed",
                 "class_weights", "dice", "bands_per_date", "context")


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


# ---------------------------------------------------------------------- losses
def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                      dice: bool) -> torch.Tensor:
    """Cross entropy over labelled pixels (+ soft Dice). Zero, with a graph, when nothing is labelled.

    ``logits`` are ``(N, C, H, W)`` with ``target`` ``(N, H, W)``, or ``(P, C)`` with ``(P,)``
    for pixels already picked out (per-pixel models).
    """
    # masks instead of boolean indexing and no early return: nothing here waits for the GPU
    valid = target != IGNORE_INDEX
    logits = logits.float()
    n = logits.shape[1]
    safe = torch.where(valid, target, 0)  # ignored pixels point at class 0 and are masked out
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
    denom = (weight[safe] * valid).sum() if weight is not None else valid.sum()
    loss = ce / denom.clamp_min(1e-6)  # 0 when nothing is labelled
    if dice:
        p = logits.softmax(1)
        p = (p if p.dim() == 2 else p.permute(0, 2, 3, 1)).reshape(-1, n)  # (pixels, n)
        m = valid.reshape(-1, 1).to(p.dtype)
        t = F.one_hot(safe.reshape(-1), n).to(p.dtype) * m
        p = p * m
        inter = (p * t).sum(0)
        card = p.sum(0) + t.sum(0)
        present = (t.sum(0) > 0).to(p.dtype)
        d = (2 * inter + 1.0) / (card + 1.0)
        loss = loss + ((1 - d) * present).sum() / present.sum().clamp_min(1.0)  # mean over classes present
    return loss


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch``: cosine decay from ``lr`` to ``lr / 100`` over ``epochs`` (closed form,
    so a resumed run, even with more ``epochs``, needs no scheduler state)."""
    lo = lr * 0.01
    return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs - 1, 1)))


# ---------------------------------------------------------------------- outputs
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


# ---------------------------------------------------------------------- helpers
def _fabric(cfg: TrainConfig) -> Any:
    from lightning.fabric import Fabric

    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda but no CUDA device is available; use --device cpu")
        devices: Any = [int(dev.split(":")[1])] if ":" in dev else cfg.devices
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        strategy = "ddp" if (isinstance(devices, int) and devices > 1) else "auto"
        return Fabric(accelerator="cuda", devices=devices, precision=precision, strategy=strategy)
    if dev != "cpu":
        raise UsageError(f"--device {cfg.device!r}: use auto, cpu, cuda or cuda:N")
    if cfg.devices > 1:
        raise UsageError("--devices > 1 needs CUDA GPUs; on CPU use --devices 1")
    return Fabric(accelerator="cpu", devices=1, precision="32-true")


def _unwrap(model: Any) -> torch.nn.Module:
    return getattr(model, "module", model)


def _check_resume(cfg: TrainConfig, payload: dict[str, Any], last: Path) -> dict[str, Any]:
    extra = payload.get("extra")
    if not isinstance(extra, dict) or "epoch" not in extra or "optimizer" not in extra:
        raise CheckpointError(f"{last}: has no training state to resume from (not a last checkpoint of "
                              "'geoseg train')")
    old = extra.get("config", {})
    changed = [k for k in _RESUME_FIXED if old.get(k) != cfg.to_dict().get(k)]
    if changed:
        raise UsageError(f"--resume: {', '.join(changed)} differ from the run in {last}; resume with the same "
                         "data and model options (you may change --epochs, --lr, --patience)")
    return extra


def _confusion_update(cm: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
    n = cm.shape[0]
    pred = logits.argmax(1)
    # ignored pixels go to an extra slot: no boolean indexing, so no host sync on a GPU
    idx = torch.where(target != IGNORE_INDEX, target * n + pred, n * n).flatten()
    counts = torch.zeros(n * n + 1, dtype=cm.dtype, device=cm.device)
    counts.scatter_add_(0, idx, torch.ones_like(idx))
    cm += counts[:-1].reshape(n, n)


# ---------------------------------------------------------------------- train
def train(cfg: TrainConfig, *, on_progress: Callable[[TrainProgress], None] | None = None,
          command: list[str] | None = None, on_message: Callable[[str], None] | None = None) -> TrainReport:
    """Train a model as described by ``cfg``; write best/last checkpoints, metrics CSV and curves.

    Args:
        cfg: the run's configuration (validated here).
        on_progress: called after every step and epoch with a :class:`TrainProgress`.
        command: the command line, recorded in the checkpoint.
        on_message: called with a line of text at each stage of the cross-validation (``cfg.cv``).

    Returns:
        A :class:`TrainReport`.

    Raises:
        GeosegError: unusable inputs or outputs; raised before any file is written.
    """
    t_start = time.perf_counter()
    cfg.validate()
    out, last = Path(cfg.output), cfg.sidecar("last")
    csv_path, png_path = cfg.sidecar("metrics"), cfg.sidecar("curves")
    inputs = list(cfg.images) + [p for p in (cfg.labels, cfg.vector_labels) if p]
    payload = None
    if cfg.resume:
        if not last.exists():
            raise UsageError(f"--resume: {last} not found; start without --resume")
        from geoseg.models.checkpoint import read_checkpoint

        payload = read_checkpoint(last)
        extra = _check_resume(cfg, payload, last)
    else:
        for p in (out, last, csv_path, png_path):
            check_destination(p, overwrite=cfg.overwrite, inputs=inputs)

    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    try:
        report = _run(cfg, grid, plan, payload, out, last, csv_path, png_path, on_progress, command, t_start)
    finally:
        plan.close()
    if cfg.cv:
        from geoseg.train.crossval import record_cross_validation, spatial_cross_validation

        report.cross_validation = spatial_cross_validation(cfg, cfg.cv, log=on_message)
        record_cross_validation(out, report.cross_validation)
        report.seconds = time.perf_counter() - t_start
    return report


def _run(cfg: TrainConfig, grid: D.ImageGrid, plan: D.LabelPlan, payload: dict[str, Any] | None, out: Path,
         last: Path, csv_path: Path, png_path: Path, on_progress: Callable[[TrainProgress], None] | None,
         command: list[str] | None, t_start: float) -> TrainReport:
    from geoseg.models import build_model, save_checkpoint

    if payload is not None:
        old_meta = ModelMeta.from_json(payload["geoseg_meta"])
        mean, std = list(old_meta.mean), list(old_meta.std)
        if old_meta.schema.to_dict() != plan.schema.to_dict():
            raise UsageError("--resume: the classes found in the labels differ from the checkpoint's")
    else:
        mean, std = D.normalization_stats(grid)
        if cfg.arch == "tempcnn":
            mean, std = D.pool_over_dates(mean, std, cfg.arch_args["bands_per_date"])
    schema = plan.schema
    n_cls = len(schema)
    fabric = _fabric(cfg)
    if cfg.devices > 1:
        fabric.launch()
    on_cuda = fabric.device.type == "cuda"
    if cfg.num_workers is None:  # recorded in the checkpoint as resolved
        cfg = replace(cfg, num_workers=D.auto_workers(fabric.device, cfg.devices))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, len(grid.band_names), n_cls, **cfg.arch_args)
    if cfg.encoder_weights is not None and payload is None:  # a resumed run has its own weights
        from geoseg.models.encoder_weights import load_encoder_weights

        loaded = load_encoder_weights(model, cfg.encoder_weights)
        encoder_start = {"file": str(cfg.encoder_weights), "tensors": loaded.matched, "of": loaded.total,
                         "adapted": loaded.adapted}
    else:
        encoder_start = None
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch = 0
    history: list[EpochRecord] = []
    best_miou, best_epoch, bad_epochs = -math.inf, -1, 0
    if payload is not None:
        extra = payload["extra"]
        # with --ema the checkpoint's weights are the average; the raw ones are kept beside
        model.load_state_dict(extra.get("raw_state", payload["state_dict"]))
        start_epoch = int(extra["epoch"]) + 1
        history = [EpochRecord(**h) for h in extra.get("history", [])]
        best_miou = float(extra.get("best_miou", -math.inf))
        best_epoch = int(extra.get("best_epoch", -1))
        bad_epochs = int(extra.get("bad_epochs", 0))
    model, opt = fabric.setup(model, opt)
    if payload is not None:
        # after setup: load_state_dict puts the moments on the parameters' device (the GPU's)
        _unwrap_opt(opt).load_state_dict(payload["extra"]["optimizer"])
    ema = None
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(_unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if payload is not None and "ema_n" in payload["extra"]:
            ema.module.load_state_dict(payload["state_dict"])
            ema.n_averaged.fill_(int(payload["extra"]["ema_n"]))

    weight = None
    if cfg.class_weights == "auto":
        weight = torch.tensor(D.class_weights(plan.train_counts), dtype=torch.float32, device=fabric.device)

    gen = torch.Generator()
    train_ds = D.build_dataset(grid, plan, cfg, "train")
    sampler = D.train_sampler(grid, plan, cfg, gen)
    per_pixel = cfg.arch in PER_PIXEL
    # labels closer to a chip's edge than the model's reach see a cut neighbourhood, unlike in
    # inference (tiles overlap): they are left out, except along the image's own edges
    train_bm = D.BatchMaker(grid, plan.lut, mean, std, regions=plan.train_regions, clip=plan.clip_train,
                            augment=cfg.augment, jitter=cfg.jitter, band_dropout=cfg.band_dropout,
                            seed=cfg.seed, margin=int(cfg.arch_args.get("context", 1)) // 2,
                            on_device=on_cuda)  # on a GPU, normalization and augmentation run there
    pin = fabric.device.type == "cuda"
    train_loader = fabric.setup_dataloaders(D.make_loader(train_ds, sampler, train_bm, cfg, pin_memory=pin),
                                            use_distributed_sampler=cfg.devices > 1)
    val_loader = None
    if plan.val_regions:
        val_ds = D.build_dataset(grid, plan, cfg, "val")
        val_bm = D.BatchMaker(grid, plan.lut, mean, std, regions=plan.val_regions, clip=True, on_device=on_cuda)
        val_loader = fabric.setup_dataloaders(
            D.make_loader(val_ds, D.val_sampler(grid, plan, cfg), val_bm, cfg, pin_memory=pin),
            use_distributed_sampler=cfg.devices > 1)

    def meta_for(record: EpochRecord | None, val: SegmentationMetrics | None) -> ModelMeta:
        mult = cfg.size_multiple
        tile = max(256, cfg.tile_size) // mult * mult
        training: dict[str, Any] = {
            "config": cfg.to_dict(), "command": command or [], "epoch": record.epoch + 1 if record else 0,
            "split": {k: v for k, v in plan.split.items() if k != "codes"},
            "train_pixels_per_class": {schema.classes[i].name: int(c) for i, c in enumerate(plan.train_counts)},
            "label_kind": plan.kind, "ignore_index": IGNORE_INDEX, "normalization": "training images, nodata excluded",
            "torchgeo": _version("torchgeo"), "torch": torch.__version__, "device": str(fabric.device),
        }
        if encoder_start is not None:
            training["encoder_weights"] = encoder_start
        if cfg.class_weights == "auto" and weight is not None:
            training["class_weights"] = [float(v) for v in weight.cpu()]
        if record is not None:
            training["metrics"] = record.row()
        if val is not None:
            training["val_per_class"] = val.per_class()
            training["val_confusion"] = val.matrix.tolist()
        return ModelMeta(arch=cfg.arch, arch_args=cfg.arch_args, bands=list(grid.band_names), mean=mean, std=std,
                         schema=schema, tile_size=tile, overlap=default_overlap(cfg.arch, tile, cfg.arch_args),
                         training=training)

    n_steps = math.ceil(len(sampler) / cfg.batch_size)
    stopped_early = False
    best_val: SegmentationMetrics | None = None
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        # every random draw of this epoch depends on (seed, epoch) only
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        gen.manual_seed(cfg.seed * 100_003 + epoch + 1)
        train_bm.set_epoch(epoch)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(cfg.lr, epoch, cfg.epochs)
        model.train()
        # the loss stays on the device: reading it every step would make the host wait for
        # the GPU after each step instead of preparing the next one (read every 10th step there)
        loss_sum = torch.zeros((), dtype=torch.float64, device=fabric.device)
        n_losses, shown = 0, math.nan
        for step, batch in enumerate(train_loader, start=1):
            if on_cuda:
                batch = train_bm.finish(batch, fabric.device)
            x, y = batch["image"], batch["mask"]
            if on_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            if per_pixel:
                # per-pixel models run on the labelled pixels only (batch norm needs two)
                pixels = (y.flatten() != IGNORE_INDEX).nonzero().squeeze(1)
                if len(pixels) < 2:
                    continue
                y = y.flatten()[pixels]
            opt.zero_grad(set_to_none=True)
            logits = model(x, pixels=pixels) if per_pixel else model(x)
            loss = segmentation_loss(logits, y, weight, cfg.dice)
            fabric.backward(loss)
            opt.step()
            if ema is not None:
                ema.update_parameters(_unwrap(model))
            loss_sum += loss.detach().double()
            n_losses += 1
            if on_progress:
                if not on_cuda or step % 10 == 0 or step == n_steps:
                    shown = float(loss.detach())
                on_progress(TrainProgress("train", epoch + 1, cfg.epochs, step, n_steps, shown))
        train_loss = float(loss_sum) / n_losses if n_losses else math.nan
        val = None
        val_loss = math.nan
        if val_loader is not None:
            net = ema.module if ema is not None else model
            net.eval()
            cm = torch.zeros(n_cls, n_cls, dtype=torch.long, device=fabric.device)
            tot = torch.zeros(2, dtype=torch.float64, device=fabric.device)  # loss sum, labelled pixels
            with torch.no_grad():
                for step, batch in enumerate(val_loader, start=1):
                    if on_cuda:
                        batch = val_bm.finish(batch, fabric.device)
                    x, y = batch["image"], batch["mask"]
                    if on_cuda:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with fabric.autocast():  # the EMA copy is not wrapped by Fabric
                        logits = net(x).float()
                    # summed on the device (0 for a batch without labels): no host sync per step
                    tot[0] += F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum").double()
                    tot[1] += (y != IGNORE_INDEX).sum()
                    _confusion_update(cm, logits, y)
                    if on_progress:
                        on_progress(TrainProgress("val", epoch + 1, cfg.epochs, step, len(val_loader)))
            if fabric.world_size > 1:
                cm = fabric.all_reduce(cm, reduce_op="sum")
                tot = fabric.all_reduce(tot, reduce_op="sum")
            val = metrics_from_confusion(cm.cpu().numpy(), schema.names)
            vl, vn = float(tot[0]), int(tot[1])
            val_loss = vl / vn if vn else math.nan
        score = val.miou if val is not None else -train_loss
        # the first epoch is always kept, so a best checkpoint exists even if the score is undefined
        improved = (not math.isnan(score) and score > best_miou + 1e-9) or best_epoch < 0
        rec = EpochRecord(epoch=epoch, train_loss=train_loss, val_loss=val_loss,
                          val_miou=val.miou if val else math.nan, val_macro_f1=val.macro_f1 if val else math.nan,
                          val_overall_accuracy=val.overall_accuracy if val else math.nan,
                          val_iou={n: float(v) for n, v in zip(schema.names, val.iou)} if val else {},
                          lr=float(opt.param_groups[0]["lr"]), seconds=time.perf_counter() - t0, best=improved)
        history.append(rec)
        if improved:
            best_miou = score if not math.isnan(score) else best_miou
            best_epoch, bad_epochs, best_val = epoch, 0, val
        else:
            bad_epochs += 1
        if fabric.is_global_zero:
            saved = ema.module if ema is not None else _unwrap(model)  # the weights to use
            if improved:
                save_checkpoint(saved, meta_for(rec, val), out, overwrite=True)
            extra = {"epoch": epoch, "optimizer": _unwrap_opt(opt).state_dict(),
                     "config": cfg.to_dict(),
                     "history": [_plain(h) for h in history], "best_miou": best_miou, "best_epoch": best_epoch,
                     "bad_epochs": bad_epochs}
            if ema is not None:
                extra["raw_state"] = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
                extra["ema_n"] = int(ema.n_averaged)
            save_checkpoint(saved, meta_for(rec, val), last, overwrite=True, extra=extra)
            write_history_csv(csv_path, history)
            write_curves_png(png_path, history)
        if on_progress:
            on_progress(TrainProgress("epoch", epoch + 1, cfg.epochs, n_steps, n_steps, train_loss, rec))
        if val is not None and bad_epochs >= cfg.patience:
            stopped_early = epoch + 1 < cfg.epochs
            break
    fabric.barrier()
    if not out.exists():
        raise CheckpointError(f"{out}: no epoch was run (already at --epochs {cfg.epochs}); raise --epochs to "
                              "continue training")
    return TrainReport(output=out, last=last, metrics_csv=csv_path, curves_png=png_path, best_epoch=best_epoch,
                       best_miou=best_miou if val_loader is not None else math.nan, epochs_run=epoch + 1,
                       stopped_early=stopped_early, history=history, val_metrics=best_val,
                       seconds=time.perf_counter() - t_start, device=str(fabric.device),
                       precision=str(fabric._precision.precision) if hasattr(fabric, "_precision") else "")


def _unwrap_opt(opt: Any) -> torch.optim.Optimizer:
    return getattr(opt, "optimizer", opt)


def _plain(h: EpochRecord) -> dict[str, Any]:
    d = dict(h.__dict__)
    d["val_iou"] = dict(d["val_iou"])
    return d


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use 'geoseg train'")
