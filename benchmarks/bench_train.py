"""Training throughput (not a test): full data pipeline against model-only steps.

* **full**: samples/s of the real training step: random chips -> DataLoader workers
  (direct window reads or torchgeo's merge, label rasterization/warping, BatchMaker: class
  lookup, ignore mask, normalization, D4 augmentation; on a GPU the workers stop after
  the labels and ``BatchMaker.finish`` does the rest there, as in training) ->
  forward + backward + AdamW step.
* **model only**: the same finished batches, kept in memory (on a GPU: on the GPU),
  through forward + backward + step only.

The ratio full / model-only says how much of the model's speed the data pipeline
keeps (1.0 = the pipeline is free). The target is >= 0.7 on a GPU, where the model is
fast and the pipeline matters most; on a CPU the model dominates.

Cases: the real scenes as they are (Brazil: Landsat TM 287x310 with 36 training polygons;
Slovenia: 68-date NDVI 100x101 with a dense label raster), and with ``--mirror N`` the same
scenes mirror-tiled to NxN (image and labels alike; Brazil's polygons rasterized first), so
that chips of a realistic size (``--tile 256``) are drawn from a realistic scene.

Run: ``python benchmarks/bench_train.py [--device cpu|cuda] [--steps 20] [--workers 0 4 8]
[--mirror 4096 --cases brazil-mirror slovenia-mirror]``. On the GPU machine, where pyogrio
does not fit, ``--brazil-polygons`` takes the polygons as GeoParquet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = ROOT.parent / "shared" / "data"
CASES = ("brazil", "slovenia", "brazil-mirror", "slovenia-mirror")


def bench(name: str, cfg_kwargs: dict, args: argparse.Namespace) -> str:
    import torch

    from geoseg.models import build_model
    from geoseg.train import TrainConfig
    from geoseg.train import data as D
    from geoseg.train.losses import segmentation_loss

    dev = torch.device(args.device)
    cfg = TrainConfig(output="/dev/null/x.pt", tile_size=args.tile, batch_size=args.batch, depth=3,
                      base_channels=args.channels, num_workers=args.num_workers,
                      samples_per_epoch=args.batch * (args.steps + args.warmup), **cfg_kwargs).validate()
    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    try:
        mean, std = D.normalization_stats(grid)
        ds = D.build_dataset(grid, plan, cfg, "train")
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        sampler = D.train_sampler(grid, plan, cfg, gen)
        cuda = dev.type == "cuda"
        # as in training: on a GPU the workers send raw chips, normalization and D4 run there
        bm = D.BatchMaker(grid, plan.lut, mean, std, regions=plan.train_regions, clip=plan.clip_train,
                          augment="d4", seed=0, on_device=cuda)
        loader = D.make_loader(ds, sampler, bm, cfg, pin_memory=dev.type == "cuda", ring=args.ring_on)
        model = build_model("unet", len(grid.band_names), len(plan.schema), base_channels=args.channels,
                            depth=3).to(dev)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def prepare(b: dict) -> tuple[torch.Tensor, torch.Tensor]:
            if cuda:  # the training loop's path: raw chips to the GPU, then finish there
                if "slot" not in b:
                    b = {k: v.to(dev, non_blocking=True) for k, v in b.items()}
                b = bm.finish(b, dev)
            return b["image"], b["mask"]

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
            step(*prepare(next(it)))
        sync()
        t0 = time.perf_counter()
        n = 0
        waits = [0.0, 0.0, 0.0]  # host time per batch: waiting for the loader, finishing, launching the step
        while True:
            ta = time.perf_counter()
            b = next(it, None)
            if b is None:
                break
            tb = time.perf_counter()
            x, y = prepare(b)
            tc = time.perf_counter()
            step(x, y)
            td = time.perf_counter()
            waits[0] += tb - ta
            waits[1] += tc - tb
            waits[2] += td - tc
            batches.append((x, y))
            n += x.shape[0]
        sync()
        full = n / (time.perf_counter() - t0)
        nb = max(len(batches), 1)
        # model only, the same (finished) batches from memory: on a GPU already on it
        t0 = time.perf_counter()
        for x, y in batches:
            step(x, y)
        sync()
        model_only = n / (time.perf_counter() - t0)
        # data only (no model), for reference
        t0 = time.perf_counter()
        m = 0
        for b in loader:
            m += prepare(b)[0].shape[0]
        sync()
        data_only = m / (time.perf_counter() - t0)
    finally:
        plan.close()
    name += ", ring" if bm._ring is not None else ""
    bm.release()
    return (f"{name:<44} full {full:7.1f} samples/s | model-only {model_only:7.1f} | ratio {full / model_only:.2f} "
            f"| data-only {data_only:7.1f} samples/s\n{'':<44} host ms/batch in the full loop: loader "
            f"{1e3 * waits[0] / nb:.2f}, prepare {1e3 * waits[1] / nb:.2f}, step {1e3 * waits[2] / nb:.2f}")


def rasterize_polygons(image: Path, polygons: Path, out: Path) -> Path:
    """A label raster on ``image``'s grid: class code (1.. in name order) inside polygons, 0 elsewhere."""
    import numpy as np
    import rasterio
    from rasterio.features import rasterize

    from geoseg.io.labels import read_polygons

    gdf = read_polygons(polygons, "class")
    names = sorted(gdf["class"].astype(str).unique())
    with rasterio.open(image) as src:
        gdf = gdf.to_crs(src.crs)
        codes = [names.index(str(v)) + 1 for v in gdf["class"]]
        arr = rasterize(zip(gdf.geometry, codes), out_shape=(src.height, src.width), transform=src.transform,
                        fill=0, dtype="uint8")
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8", crs=src.crs,
                       transform=src.transform, nodata=0)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(arr[np.newaxis])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0], help="one row per DataLoader worker count")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", nargs="+", choices=CASES, default=["brazil", "slovenia"])
    ap.add_argument("--mirror", type=int, default=4096, help="side of the mirror-tiled scenes (*-mirror cases)")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--brazil-polygons", type=Path, default=None,
                    help="Brazil's training polygons (default: the GPKG in --data; GeoParquet works too)")
    ap.add_argument("--workdir", type=Path, default=None, help="where mirrored scenes are written")
    ap.add_argument("--ring", choices=["on", "off", "both"], default="on",
                    help="workers' batches through shared-memory slots (the default on CUDA) or torch's path")
    ap.add_argument("--sharing", choices=["file_descriptor", "file_system"], default=None,
                    help="torch.multiprocessing sharing strategy for worker batches (default: torch's)")
    a = ap.parse_args()
    import tempfile

    import torch

    if a.sharing:
        torch.multiprocessing.set_sharing_strategy(a.sharing)

    torch.set_num_threads(a.threads)
    print(f"device {a.device}, batch {a.batch}, tile {a.tile}, unet base_channels {a.channels} depth 3, "
          f"{a.steps} timed steps, workers {a.workers}, {a.threads} threads")
    br_img = a.data / "rstoolbox_brazil/lsat_tm_1988.tif"
    br_poly = a.brazil_polygons or a.data / "rstoolbox_brazil/trainingPolygons_lsat.gpkg"
    sl_img = a.data / "eolearn_slovenia/NDVI_timeseries_68dates.tif"
    sl_lab = a.data / "eolearn_slovenia/LULC_label.tif"
    work = a.workdir or Path(tempfile.mkdtemp(prefix="geoseg-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, dict]] = []
    for case in a.cases:
        if case == "brazil":
            cases.append(("brazil (7 bands, polygons)", dict(images=[str(br_img)], vector_labels=str(br_poly),
                                                             class_field="class", val_split=0.0)))
        elif case == "slovenia":
            cases.append(("slovenia (68 bands, label raster)", dict(images=[str(sl_img)], labels=str(sl_lab),
                                                                    val_split=0.0)))
        else:
            from _mirror import mirror_tile

            n = a.mirror
            if case == "brazil-mirror":
                img, lab = br_img, rasterize_polygons(br_img, br_poly, work / "brazil_labels.tif")
                name = f"brazil {n}^2 (7 bands, rasterized polys)"
            else:
                img, lab = sl_img, sl_lab
                name = f"slovenia {n}^2 (68 bands, label raster)"
            mi, ml = work / f"{case}_{n}_image.tif", work / f"{case}_{n}_labels.tif"
            if not mi.exists():
                mirror_tile(img, mi, n, n)
                mirror_tile(lab, ml, n, n)
            cases.append((name, dict(images=[str(mi)], labels=str(ml), val_split=0.0)))
    for name, kw in cases:
        for w in a.workers:
            for ring in {"on": [True], "off": [False], "both": [False, True]}[a.ring]:
                a.num_workers, a.ring_on = w, ring
                print(bench(f"{name}, {w} workers", kw, a), flush=True)


if __name__ == "__main__":
    main()
