"""Training throughput (not a test): full data pipeline against model-only steps.

* **full**: samples/s of the real training step: torchgeo RandomGeoSampler -> DataLoader
  (IntersectionDataset reads + label rasterization/warping) -> BatchMaker (class lookup,
  ignore mask, normalization, D4 augmentation) -> forward + backward + AdamW step.
* **model only**: the same batches, materialised in memory first, through forward +
  backward + step only.

The ratio full / model-only says how much of the model's speed the data pipeline
keeps (1.0 = the pipeline is free). The target is >= 0.7 on a GPU, where the model is
fast and the pipeline matters most; on a CPU the model dominates.

Run: ``python benchmarks/bench_train.py [--device cpu|cuda] [--steps 20] [--workers 0]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def bench(name: str, cfg_kwargs: dict, args: argparse.Namespace) -> str:
    import torch

    from geoseg.models import build_model
    from geoseg.train import TrainConfig
    from geoseg.train import data as D
    from geoseg.train.loop import segmentation_loss

    dev = torch.device(args.device)
    cfg = TrainConfig(output="/dev/null/x.pt", tile_size=args.tile, batch_size=args.batch, depth=3,
                      base_channels=args.channels, num_workers=args.workers,
                      samples_per_epoch=args.batch * (args.steps + args.warmup), **cfg_kwargs).validate()
    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    try:
        mean, std = D.normalization_stats(grid)
        ds = D.build_dataset(grid, plan, cfg, "train")
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        sampler = D.train_sampler(grid, plan, cfg, gen)
        bm = D.BatchMaker(grid, plan.lut, mean, std, regions=plan.train_regions, clip=plan.clip_train,
                          augment="d4", seed=0)
        loader = D.make_loader(ds, sampler, bm, cfg)
        model = build_model("unet", len(grid.band_names), len(plan.schema), base_channels=args.channels,
                            depth=3).to(dev)
        cuda = dev.type == "cuda"
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            loss = segmentation_loss(logits, y, None, False)
            loss.backward()
            opt.step()

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        # full pipeline (first `warmup` batches not timed)
        batches = []
        it = iter(loader)
        for _ in range(args.warmup):
            b = next(it)
            step(b["image"], b["mask"])
        sync()
        t0 = time.perf_counter()
        n = 0
        for b in it:
            step(b["image"], b["mask"])
            batches.append((b["image"], b["mask"]))
            n += b["image"].shape[0]
        sync()
        full = n / (time.perf_counter() - t0)
        # model only, same batches from memory
        t0 = time.perf_counter()
        for x, y in batches:
            step(x, y)
        sync()
        model_only = n / (time.perf_counter() - t0)
        # data only (no model), for reference
        t0 = time.perf_counter()
        m = 0
        for b in loader:
            m += b["image"].shape[0]
        data_only = m / (time.perf_counter() - t0)
    finally:
        plan.close()
    return (f"{name:<34} full {full:7.1f} samples/s | model-only {model_only:7.1f} | ratio {full / model_only:.2f} "
            f"| data-only {data_only:7.1f} samples/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    print(f"device {a.device}, batch {a.batch}, tile {a.tile}, unet base_channels {a.channels} depth 3, "
          f"{a.steps} timed steps, {a.workers} workers, {a.threads} threads")
    lines = [
        bench("brazil (7 bands, polygons)", dict(images=[str(DATA / "rstoolbox_brazil/lsat_tm_1988.tif")],
                                                 vector_labels=str(DATA / "rstoolbox_brazil/trainingPolygons_lsat.gpkg"),
                                                 class_field="class", val_split=0.0), a),
        bench("slovenia (68 bands, label raster)",
              dict(images=[str(DATA / "eolearn_slovenia/NDVI_timeseries_68dates.tif")],
                   labels=str(DATA / "eolearn_slovenia/LULC_label.tif"), val_split=0.0), a),
    ]
    for ln in lines:
        print(ln)


if __name__ == "__main__":
    main()
