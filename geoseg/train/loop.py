"""The training loop (imports torch; devices and precision through Lightning Fabric).

One code path for every device: Lightning Fabric sets up the model, optimizer and
loaders; on CUDA it runs bf16 autocast and the model in channels_last, with
``devices > 1`` it runs DDP (Lightning's launcher), on CPU it runs fp32 (2-D networks in
channels_last there too, :func:`_channels_last`).

Each epoch: random chips from the training regions (RandomGeoSampler), loss =
cross entropy with ``ignore_index`` (optionally class-weighted) + optional soft
Dice, then a full pass over the validation grid (GridGeoSampler) that accumulates
one confusion matrix. The best epoch by validation macro IoU is written to
``output`` and every epoch to ``<stem>.last.pt`` (both atomically), the history to
``<stem>.metrics.csv`` and ``<stem>.curves.png``. With ``sampling`` pixels the chips are
class-balanced batches of labelled pixels (:mod:`geoseg.train.data.pixel_batches`), the
whole schedule runs and the last epoch is the one kept. What ``--arch auto`` and the other
data-dependent defaults pick is decided first, by :mod:`geoseg.train.auto`.

Reproducibility: every random draw of epoch ``e`` (chip positions, augmentation,
dropout) is seeded from ``(seed, e)``, so a run resumed after epoch ``e`` continues
exactly as the uninterrupted run would on CPU.

One function a phase (restore, set up the data, train an epoch, validate, save), all in this
module (under 500 lines): they share one ``_Session`` and are read together.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

from geoseg.errors import CheckpointError, LabelError, UsageError
from geoseg.io.atomic import check_destination
from geoseg.models.files import checkpoint_destination
from geoseg.metrics import SegmentationMetrics, metrics_from_confusion
from geoseg.architectures import PER_PIXEL, default_overlap
from geoseg.models.meta import ModelMeta
from geoseg.train import data as D
from geoseg.train.config import IGNORE_INDEX, TrainConfig
from geoseg.train.history import (
    EpochRecord,
    Standing,
    TrainProgress,
    TrainReport,
    plain,
    write_curves_png,
    write_history_csv,
)
from geoseg.train.losses import confusion_update, cosine_lr, segmentation_loss

#: config fields that must not change when resuming
_RESUME_FIXED = ("images", "labels", "vector_labels", "class_field", "arch", "sampling", "members", "base_channels",
                 "depth", "encoder", "encoder_depth", "encoder_weights", "tile_size", "class_map", "ignore_values",
                 "val_split", "val_block", "seed", "class_weights", "dice", "bands_per_date", "context")


# ---------------------------------------------------------------------- helpers
def _fabric(cfg: TrainConfig) -> Any:
    from lightning.fabric import Fabric

    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("`device` cuda but no CUDA device is available; use `device` cpu")
        devices: Any = [int(dev.split(":")[1])] if ":" in dev else cfg.devices
        precision: Literal["bf16-mixed", "16-mixed"] = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        strategy = "ddp" if (isinstance(devices, int) and devices > 1) else "auto"
        return Fabric(accelerator="cuda", devices=devices, precision=precision, strategy=strategy)
    if dev != "cpu":
        raise UsageError(f"`device` {cfg.device!r}: use auto, cpu, cuda or cuda:N")
    if cfg.devices > 1:
        raise UsageError("`devices` > 1 needs CUDA GPUs; on CPU use `devices` 1")
    return Fabric(accelerator="cpu", devices=1, precision="32-true")


def _unwrap(model: Any) -> torch.nn.Module:
    return getattr(model, "module", model)


def _check_resume(cfg: TrainConfig, payload: dict[str, Any], last: Path) -> dict[str, Any]:
    extra = payload.get("extra")
    if not isinstance(extra, dict) or "epoch" not in extra or "optimizer" not in extra:
        raise CheckpointError(f"{last}: has no training state to resume from (not a last checkpoint of "
                              "'geoseg train')")
    old = extra.get("config", {})
    # an option older versions did not have (not in the old config) cannot differ
    changed = [k for k in _RESUME_FIXED if k in old and old.get(k) != cfg.to_dict().get(k)]
    if changed:
        was = ", ".join(f"{k} (was {old.get(k)!r})" for k in changed)
        raise UsageError(f"`resume`: {was} differ from the run in {last}; resume with the same "
                         "data and model options (you may change `epochs`, `lr`, `patience`)")
    return extra

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
    from geoseg.train.auto import resolve

    t_start = time.perf_counter()
    cfg.validate()
    cv_asked = cfg.cv is not None  # a default cross-validation that cannot run leaves the model and says why
    grid = D.image_grid(cfg.images)
    cfg, picked = resolve(cfg, len(grid.band_names))
    out, last = Path(cfg.output), cfg.sidecar("last")
    csv_path, png_path = cfg.sidecar("metrics"), cfg.sidecar("curves")
    inputs = list(cfg.images) + [p for p in (cfg.labels, cfg.vector_labels) if p]
    payload = None
    if cfg.resume:
        if not last.exists():
            raise UsageError(f"`resume`: {last} not found; start without `resume`")
        from geoseg.models.checkpoint import read_checkpoint

        payload = read_checkpoint(last)
        _check_resume(cfg, payload, last)
    else:
        checkpoint_destination(out)
        for p in (out, last, csv_path, png_path):
            check_destination(p, overwrite=cfg.overwrite, inputs=inputs)

    plan = D.plan_labels(cfg, grid)
    if picked and on_message:  # once the labels are known to be usable
        on_message(picked)
    try:
        report = _run(cfg, grid, plan, payload, out, last, csv_path, png_path, on_progress, command, t_start,
                      picked)
    finally:
        plan.close()
    if cfg.cv:
        from geoseg.train.crossval import record_cross_validation, spatial_cross_validation

        try:
            cv = spatial_cross_validation(cfg, cfg.cv, log=on_message)
        except (UsageError, LabelError) as e:  # the labels cannot be cut into folds, or a fold cannot train
            if cv_asked:
                raise
            if on_message:
                on_message(f"no accuracy estimate: the default {cfg.cv}-fold spatial cross-validation cannot run: {e}")
            return report
        record_cross_validation(out, cv)
        report = replace(report, cross_validation=cv, seconds=time.perf_counter() - t_start)
    return report


@dataclass
class _Session:
    """Everything an epoch needs: the set-up model, optimizer and loaders, and what the checkpoints record."""

    cfg: TrainConfig
    fabric: Any
    grid: D.ImageGrid
    plan: D.LabelPlan
    mean: list[float]
    std: list[float]
    model: Any
    opt: Any
    ema: Any
    encoder_start: dict[str, Any] | None
    command: list[str] | None
    picked: str = ""  # what --arch auto picked, if anything
    weight: torch.Tensor | None = None
    gen: torch.Generator = field(default_factory=torch.Generator)
    train_bm: Any = None
    train_loader: Any = None
    val_bm: Any = None
    val_loader: Any = None
    n_steps: int = 0
    table_pixels: dict[str, int] | None = None  # sampling pixels: pixels in the training and validation tables

    @property
    def on_cuda(self) -> bool:
        return bool(self.fabric.device.type == "cuda")


def _run(cfg: TrainConfig, grid: D.ImageGrid, plan: D.LabelPlan, payload: dict[str, Any] | None, out: Path,
         last: Path, csv_path: Path, png_path: Path, on_progress: Callable[[TrainProgress], None] | None,
         command: list[str] | None, t_start: float, picked: str = "") -> TrainReport:
    mean, std = _normalization(cfg, grid, plan, payload)
    fabric = _fabric(cfg)
    if cfg.devices > 1:
        fabric.launch()
    if cfg.num_workers is None:  # recorded in the checkpoint as resolved
        cfg = replace(cfg, num_workers=D.auto_workers(fabric.device, cfg.devices))
    model, opt, ema, encoder_start = _restore(cfg, fabric, grid, len(plan.schema), payload)
    standing = Standing.restore(payload)
    s = _Session(cfg, fabric, grid, plan, mean, std, model, opt, ema, encoder_start, command, picked)
    _set_up_data(s)
    stopped_early = False
    epoch = standing.start_epoch - 1
    for epoch in range(standing.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_loss = _train_epoch(s, epoch, on_progress)
        val, val_loss = _validate(s, epoch, on_progress)
        score = val.miou if val is not None else -train_loss
        # the first epoch is always kept, so a best checkpoint exists even if the score is undefined
        improved = (not math.isnan(score) and score > standing.best_miou + 1e-9) or standing.best_epoch < 0
        if cfg.pixels:
            # pixel sampling runs its whole cosine schedule and keeps the last epoch: a few held-out
            # polygons' score saturates within epochs and picked half-trained models (docs/training.md)
            improved = True
        names = plan.schema.names
        rec = EpochRecord(epoch=epoch, train_loss=train_loss, val_loss=val_loss,
                          val_miou=val.miou if val else math.nan, val_macro_f1=val.macro_f1 if val else math.nan,
                          val_overall_accuracy=val.overall_accuracy if val else math.nan,
                          val_iou={n: float(v) for n, v in zip(names, val.iou)} if val else {},
                          lr=float(opt.param_groups[0]["lr"]), seconds=time.perf_counter() - t0, best=improved)
        standing.record(rec, score, val)
        if fabric.is_global_zero:
            _save(s, standing, rec, val, out, last, csv_path, png_path)
        if on_progress:
            on_progress(TrainProgress("epoch", epoch + 1, cfg.epochs, s.n_steps, s.n_steps, train_loss, rec))
        if val is not None and not cfg.pixels and standing.bad_epochs >= cfg.patience:
            stopped_early = epoch + 1 < cfg.epochs
            break
    fabric.barrier()
    if not out.exists():
        raise CheckpointError(f"{out}: no epoch was run (already at `epochs` {cfg.epochs}); raise `epochs` to "
                              "continue training")
    return TrainReport(output=out, last=last, metrics_csv=csv_path, curves_png=png_path,
                       best_epoch=standing.best_epoch,
                       best_miou=standing.best_miou if s.val_loader is not None else math.nan, epochs_run=epoch + 1,
                       stopped_early=stopped_early, history=standing.history, val_metrics=standing.best_val,
                       seconds=time.perf_counter() - t_start, device=str(fabric.device),
                       precision=str(fabric._precision.precision) if hasattr(fabric, "_precision") else "")


# ---------------------------------------------------------------------- restore
def _normalization(cfg: TrainConfig, grid: D.ImageGrid, plan: D.LabelPlan, payload: dict[str, Any] | None
                   ) -> tuple[list[float], list[float]]:
    """The run's mean and std: the resumed checkpoint's, else computed from the training images."""
    if payload is not None:
        old_meta = ModelMeta.from_json(payload["geoseg_meta"])
        if old_meta.schema.to_dict() != plan.schema.to_dict():
            raise UsageError("`resume`: the classes found in the labels differ from the checkpoint's")
        return list(old_meta.mean), list(old_meta.std)
    mean, std = D.normalization_stats(grid)
    if cfg.arch == "tempcnn":
        mean, std = D.pool_over_dates(mean, std, cfg.arch_args["bands_per_date"])
    return mean, std


def _restore(cfg: TrainConfig, fabric: Any, grid: D.ImageGrid, n_cls: int, payload: dict[str, Any] | None
             ) -> tuple[Any, Any, Any, dict[str, Any] | None]:
    """The model, optimizer and weight EMA, set up by Fabric: new (optionally from encoder weights) or as
    the resumed checkpoint left them. Returns them with the encoder weights' record (None without)."""
    from geoseg.models import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, len(grid.band_names), n_cls, **cfg.arch_args)
    encoder_start = None
    if cfg.encoder_weights is not None and payload is None:  # a resumed run has its own weights
        from geoseg.models.encoder_weights import load_encoder_weights

        loaded = load_encoder_weights(model, cfg.encoder_weights)
        encoder_start = {"file": str(cfg.encoder_weights), "tensors": loaded.matched, "of": loaded.total,
                         "adapted": loaded.adapted}
    if _channels_last(cfg, fabric.device):
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if payload is not None:
        # with --ema the checkpoint's weights are the average; the raw ones are kept beside
        model.load_state_dict(payload["extra"].get("raw_state", payload["state_dict"]))
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
    return model, opt, ema, encoder_start


def _channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """The model and its chips in channels_last: on a GPU, and for 2-D networks on a CPU too (oneDNN's
    convolutions prefer it: a training step of this U-Net 0.346 -> 0.289 s, smp's ResNet-18 U-Net 0.622 ->
    0.558 s, 16 chips of 128² on 2 cores). Per-pixel networks keep their own layout."""
    return device.type == "cuda" or cfg.arch not in PER_PIXEL


def _set_up_data(s: _Session) -> None:
    """Class weights, datasets, samplers, batch makers and Fabric's loaders of the session."""
    cfg, grid, plan, fabric = s.cfg, s.grid, s.plan, s.fabric
    if cfg.class_weights == "auto":
        s.weight = torch.tensor(D.class_weights(plan.train_counts), dtype=torch.float32, device=fabric.device)
    if cfg.pixels:
        _set_up_pixels(s)
        return
    assert cfg.batch_size is not None and cfg.jitter is not None  # resolved by geoseg.train.auto
    train_ds = D.build_dataset(grid, plan, cfg, "train")
    sampler = D.train_sampler(grid, plan, cfg, s.gen)
    # labels closer to a chip's edge than the model's reach see a cut neighbourhood, unlike in
    # inference (tiles overlap): they are left out, except along the image's own edges
    s.train_bm = D.BatchMaker(grid, plan.lut, s.mean, s.std, regions=plan.train_regions, clip=plan.clip_train,
                              augment=cfg.augment, jitter=cfg.jitter, band_dropout=cfg.band_dropout,
                              seed=cfg.seed, margin=int(cfg.arch_args.get("context", 1)) // 2,
                              on_device=s.on_cuda)  # on a GPU, normalization and augmentation run there
    pin = s.on_cuda
    s.train_loader = fabric.setup_dataloaders(D.make_loader(train_ds, sampler, s.train_bm, cfg, pin_memory=pin),
                                              use_distributed_sampler=cfg.devices > 1)
    if plan.val_regions:
        val_ds = D.build_dataset(grid, plan, cfg, "val")
        s.val_bm = D.BatchMaker(grid, plan.lut, s.mean, s.std, regions=plan.val_regions, clip=True,
                                on_device=s.on_cuda)
        s.val_loader = fabric.setup_dataloaders(
            D.make_loader(val_ds, D.val_sampler(grid, plan, cfg), s.val_bm, cfg, pin_memory=pin),
            use_distributed_sampler=cfg.devices > 1)
    s.n_steps = math.ceil(len(sampler) / cfg.batch_size)


def _set_up_pixels(s: _Session) -> None:
    """``sampling`` pixels: tables of the labelled pixels of both sides of the split, and their batches."""
    from geoseg.train.data.pixel_batches import pixel_loaders

    p = pixel_loaders(s.cfg, s.grid, s.plan, s.mean, s.std, rank=s.fabric.global_rank)
    s.train_bm, s.train_loader, s.val_bm, s.val_loader = p.train_bm, p.train, p.val_bm, p.val
    s.n_steps, s.table_pixels = len(p.train), p.sizes


def _on_device(s: _Session, bm: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """A batch on the model's device: finished there (chips on a GPU) or moved (pixel batches)."""
    if bm.on_device:
        return dict(bm.finish(batch, s.fabric.device))
    if batch["image"].device != s.fabric.device:
        return {k: v.to(s.fabric.device, non_blocking=True) for k, v in batch.items()}
    return batch


# ---------------------------------------------------------------------- epoch
def _train_epoch(s: _Session, epoch: int, on_progress: Callable[[TrainProgress], None] | None) -> float:
    """One pass over the epoch's training chips; returns the mean loss (NaN when no step ran)."""
    cfg, model, opt, on_cuda = s.cfg, s.model, s.opt, s.on_cuda
    per_pixel = cfg.arch in PER_PIXEL
    layout = _channels_last(cfg, s.fabric.device)
    # every random draw of this epoch depends on (seed, epoch) only
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    s.gen.manual_seed(cfg.seed * 100_003 + epoch + 1)
    s.train_bm.set_epoch(epoch)
    for g in opt.param_groups:
        g["lr"] = cosine_lr(cfg.lr, epoch, cfg.epochs)
    model.train()
    # the loss stays on the device: reading it every step would make the host wait for
    # the GPU after each step instead of preparing the next one (read every 10th step there)
    loss_sum = torch.zeros((), dtype=torch.float64, device=s.fabric.device)
    n_losses, shown = 0, math.nan
    for step, batch in enumerate(s.train_loader, start=1):
        batch = _on_device(s, s.train_bm, batch)
        x, y = batch["image"], batch["mask"]
        if layout:
            x = x.contiguous(memory_format=torch.channels_last)
        if per_pixel:
            # per-pixel models run on the labelled pixels only (batch norm needs two)
            pixels = (y.flatten() != IGNORE_INDEX).nonzero().squeeze(1)
            if len(pixels) < 2:
                continue
            y = y.flatten()[pixels]
        opt.zero_grad(set_to_none=True)
        logits = model(x, pixels=pixels) if per_pixel else model(x)
        loss = segmentation_loss(logits, y, s.weight, cfg.dice)
        s.fabric.backward(loss)
        opt.step()
        if s.ema is not None:
            s.ema.update_parameters(_unwrap(model))
        loss_sum += loss.detach().double()
        n_losses += 1
        if on_progress:
            if not on_cuda or step % 10 == 0 or step == s.n_steps:
                shown = float(loss.detach())
            on_progress(TrainProgress("train", epoch + 1, cfg.epochs, step, s.n_steps, shown))
    return float(loss_sum) / n_losses if n_losses else math.nan


# ---------------------------------------------------------------------- validate
def _validate(s: _Session, epoch: int, on_progress: Callable[[TrainProgress], None] | None
              ) -> tuple[SegmentationMetrics | None, float]:
    """Scores and mean loss over the validation grid (the EMA weights with ``--ema``); ``(None, NaN)``
    without validation."""
    if s.val_loader is None:
        return None, math.nan
    fabric, n_cls = s.fabric, len(s.plan.schema)
    net = s.ema.module if s.ema is not None else s.model
    net.eval()
    cm = torch.zeros(n_cls, n_cls, dtype=torch.long, device=fabric.device)
    tot = torch.zeros(2, dtype=torch.float64, device=fabric.device)  # loss sum, labelled pixels
    with torch.no_grad():
        for step, batch in enumerate(s.val_loader, start=1):
            batch = _on_device(s, s.val_bm, batch)
            x, y = batch["image"], batch["mask"]
            if _channels_last(s.cfg, fabric.device):
                x = x.contiguous(memory_format=torch.channels_last)
            with fabric.autocast():  # the EMA copy is not wrapped by Fabric
                logits = net(x).float()
            # summed on the device (0 for a batch without labels): no host sync per step
            tot[0] += F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum").double()
            tot[1] += (y != IGNORE_INDEX).sum()
            confusion_update(cm, logits, y)
            if on_progress:
                on_progress(TrainProgress("val", epoch + 1, s.cfg.epochs, step, len(s.val_loader)))
    if fabric.world_size > 1:
        cm = fabric.all_reduce(cm, reduce_op="sum")
        tot = fabric.all_reduce(tot, reduce_op="sum")
    val = metrics_from_confusion(cm.cpu().numpy(), s.plan.schema.names)
    vl, vn = float(tot[0]), int(tot[1])
    return val, vl / vn if vn else math.nan


# ---------------------------------------------------------------------- save
def _meta(s: _Session, record: EpochRecord | None, val: SegmentationMetrics | None) -> ModelMeta:
    """The checkpoint's metadata after ``record``'s epoch."""
    cfg, plan, schema = s.cfg, s.plan, s.plan.schema
    mult = cfg.size_multiple
    tile = max(256, cfg.tile_size) // mult * mult
    training: dict[str, Any] = {
        "config": cfg.to_dict(), "command": s.command or [], "epoch": record.epoch + 1 if record else 0,
        "split": {k: v for k, v in plan.split.items() if k != "codes"},
        "train_pixels_per_class": {schema.classes[i].name: int(c) for i, c in enumerate(plan.train_counts)},
        "label_kind": plan.kind, "ignore_index": IGNORE_INDEX, "normalization": "training images, nodata excluded",
        "torchgeo": _version("torchgeo"), "torch": torch.__version__, "device": str(s.fabric.device),
    }
    if s.encoder_start is not None:
        training["encoder_weights"] = s.encoder_start
    if s.picked:
        training["auto"] = s.picked
    if s.table_pixels is not None:
        training["pixel_tables"] = s.table_pixels
    if cfg.class_weights == "auto" and s.weight is not None:
        training["class_weights"] = [float(v) for v in s.weight.cpu()]
    if record is not None:
        training["metrics"] = record.row()
    if val is not None:
        training["val_per_class"] = val.per_class()
        training["val_confusion"] = val.matrix.tolist()
    return ModelMeta(arch=cfg.arch, arch_args=cfg.arch_args, bands=list(s.grid.band_names), mean=s.mean, std=s.std,
                     schema=schema, tile_size=tile, overlap=default_overlap(cfg.arch, tile, cfg.arch_args),
                     training=training)


def _save(s: _Session, standing: Standing, rec: EpochRecord, val: SegmentationMetrics | None, out: Path,
          last: Path, csv_path: Path, png_path: Path) -> None:
    """The best checkpoint (when ``rec`` improved), the last one with the training state, the CSV and the curves."""
    from geoseg.models import save_checkpoint

    saved = s.ema.module if s.ema is not None else _unwrap(s.model)  # the weights to use
    if rec.best:
        save_checkpoint(saved, _meta(s, rec, val), out, overwrite=True)
    extra = {"epoch": rec.epoch, "optimizer": _unwrap_opt(s.opt).state_dict(),
             "config": s.cfg.to_dict(),
             "history": [plain(h) for h in standing.history], "best_miou": standing.best_miou,
             "best_epoch": standing.best_epoch, "bad_epochs": standing.bad_epochs}
    if s.ema is not None:
        extra["raw_state"] = {k: v.detach().cpu() for k, v in _unwrap(s.model).state_dict().items()}
        extra["ema_n"] = int(s.ema.n_averaged)
    save_checkpoint(saved, _meta(s, rec, val), last, overwrite=True, extra=extra)
    write_history_csv(csv_path, standing.history)
    write_curves_png(png_path, standing.history)


def _unwrap_opt(opt: Any) -> torch.optim.Optimizer:
    return getattr(opt, "optimizer", opt)


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use 'geoseg train'")
