"""End-to-end inference against model-only throughput, and peak memory at two sizes 16x apart.

Not a test: run on demand, e.g.

    python benchmarks/bench_infer.py                       # CPU defaults
    python benchmarks/bench_infer.py --device cuda --base-channels 64 --sizes 4096 16384

Input: ``ftw_baselines/inference-img.tif`` (real Sentinel-2, 8 bands uint16, EPSG:32633)
mirror-tiled to each size. Printed side by side in one run:

* model-only: the grid's own number of tiles (size, batch, precision) already in device
  memory, forward + softmax, as raster megapixels/s (so overlap costs both the same);
* read-only (the reader thread's work) and write-only (the class raster writer's work);
* end-to-end ``predict_raster`` throughput in raster megapixels/s, its ratio to
  model-only, and its ratio to min(model-only, read-only, write-only);
* peak RSS of an end-to-end run of each size in a fresh subprocess, and the ratio between sizes.

Model-only and end-to-end runs alternate in one process (best of ``--repeats``), so both
see the same machine state.

Targets (issue 2): end-to-end >= 0.8 of model-only on CPU, >= 0.85 on a GPU; RSS ratio <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT_SRC = ROOT.parent / "shared" / "data" / "ftw_baselines" / "inference-img.tif"
FALLBACK_SRC = ROOT / "sample_data" / "field.tif"


def _e2e_child(args: argparse.Namespace, raster: str, model: str, out: str) -> dict:
    """Run predict_raster in a fresh process; return its throughput and peak RSS."""
    code = f"""
import json, resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
from geoseg.pipeline import predict_raster
t = time.perf_counter()
rep = predict_raster({raster!r}, {model!r}, {out!r}, batch_size={args.batch_size}, device={args.device!r},
                     overwrite=True)
s = time.perf_counter() - t
print(json.dumps({{"seconds": s, "mpx": rep.width * rep.height / 1e6, "tiles": rep.tiles_run,
                  "device": rep.device, "precision": rep.precision, "accumulator_bytes": rep.accumulator_bytes,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _model_only_seconds(pred, size: int, batch: int, n_tiles: int) -> float:
    """Seconds for the model alone on ``n_tiles`` tiles (same size, batch, precision), already on the device."""
    import torch

    x = torch.randn(batch, pred.meta.num_bands, size, size, device=pred.device)
    if pred.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    n_batches = -(-n_tiles // batch)
    if pred.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n_batches):
        pred._forward(x)
    if pred.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * n_tiles / (n_batches * batch)


def _read_only(raster: str, size: int, overlap: int) -> float:
    import numpy as np

    from geoseg.io.raster import open_raster, read_window
    from geoseg.tiling import TileGrid
    from rasterio.windows import Window

    with open_raster(raster) as ds:
        g = TileGrid(ds.height, ds.width, size, overlap)
        t = time.perf_counter()
        for r in g.row_starts:
            h = min(size, ds.height - r)
            data, valid = read_window(ds, list(range(1, ds.count + 1)), Window(0, r, ds.width, h))
            np.isfinite(data)
        return ds.width * ds.height / 1e6 / (time.perf_counter() - t)


def _write_only(raster: str, out: str, size: int, overlap: int) -> float:
    import numpy as np

    from geoseg.io.raster import open_raster
    from geoseg.io.writer import GeoTiffSink
    from geoseg.tiling import TileGrid

    with open_raster(raster) as ds:
        h, w, crs, tr = ds.height, ds.width, ds.crs, ds.transform
    g = TileGrid(h, w, size, overlap)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    sink = GeoTiffSink(out, width=w, height=h, count=1, dtype="uint8", crs=crs, transform=tr, nodata=255)
    starts = g.row_starts + [h]
    for r0, r1 in zip(starts[:-1], starts[1:]):
        blocky = np.repeat(rng.integers(0, 3, size=(1, 1, w // 16 + 1), dtype=np.uint8), 16, axis=2)[:, :, :w]
        sink.write(np.broadcast_to(blocky, (1, r1 - r0, w)).copy(), r0, 0)
    sink.commit()
    return w * h / 1e6 / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", type=int, nargs=2, default=[1024, 4096], help="two raster sides (16x pixels apart)")
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="alternating model-only / end-to-end runs")
    ap.add_argument("--src", default=str(DEFAULT_SRC if DEFAULT_SRC.exists() else FALLBACK_SRC))
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from _mirror import mirror_tile

    from geoseg.io.stats import band_stats
    from geoseg.modelinit import init_checkpoint
    from geoseg.tiling import TileGrid

    work = Path(args.workdir or tempfile.mkdtemp(prefix="geoseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    mean, std = band_stats([args.src])
    model = work / "bench_model.pt"
    init_checkpoint(model, arch="unet", bands=len(mean), classes=3, base_channels=args.base_channels,
                    depth=args.depth, mean=mean, std=std, tile_size=args.tile_size, overlap=args.overlap,
                    overwrite=True)
    from geoseg.pipeline import predict_raster
    from geoseg.predict import TorchPredictor

    pred = TorchPredictor.from_checkpoint(str(model), device=args.device)
    _model_only_seconds(pred, args.tile_size, args.batch_size, 2 * args.batch_size)  # warm-up
    print(f"model: unet base {args.base_channels} depth {args.depth}, tile {args.tile_size}, overlap "
          f"{args.overlap}, batch {args.batch_size}, {pred.device} {pred.precision}; src {Path(args.src).name}; "
          f"cpus {os.cpu_count()}")
    rows = []
    for side in args.sizes:
        raster = work / f"mirror_{side}.tif"
        if not raster.exists():
            mirror_tile(args.src, raster, side, side)
        g = TileGrid(side, side, args.tile_size, args.overlap, 2 ** args.depth)
        mpx = side * side / 1e6
        rd = _read_only(str(raster), args.tile_size, args.overlap)
        wr = _write_only(str(raster), str(work / f"w_{side}.tif"), args.tile_size, args.overlap)
        # model-only and end-to-end alternate in this process, so both see the same machine state
        mo_s, e2e_s = [], []
        for _ in range(args.repeats):
            mo_s.append(_model_only_seconds(pred, args.tile_size, args.batch_size, len(g)))
            t = time.perf_counter()
            predict_raster(str(raster), pred, str(work / f"c_{side}.tif"), batch_size=args.batch_size,
                           overwrite=True)
            e2e_s.append(time.perf_counter() - t)
        model_eq = mpx / min(mo_s)
        e2e = mpx / min(e2e_s)
        rss = _e2e_child(args, str(raster), str(model), str(work / f"rss_{side}.tif"))["rss_mb"]
        floor = min(model_eq, rd, wr)
        rows.append((side, mpx, model_eq, rd, wr, e2e, e2e / model_eq, e2e / floor, rss))
    print()
    print(f"{'size':>7} {'Mpx':>7} {'model-only':>11} {'read-only':>10} {'write-only':>11} {'end-to-end':>11} "
          f"{'e2e/model':>10} {'e2e/min':>8} {'peak RSS MB':>12}")
    for side, mpx, meq, rd, wr, e2e, r1, r2, rss in rows:
        print(f"{side:>7} {mpx:>7.1f} {meq:>11.2f} {rd:>10.1f} {wr:>11.1f} {e2e:>11.2f} {r1:>10.2f} {r2:>8.2f} "
              f"{rss:>12.0f}")
    print("(raster Mpx/s; model-only runs the grid's own tiles, overlap included, already in device memory;"
          f" best of {args.repeats})")
    print(f"peak RSS ratio {args.sizes[1]}/{args.sizes[0]} ({(args.sizes[1] / args.sizes[0]) ** 2:.0f}x pixels): "
          f"{rows[1][-1] / rows[0][-1]:.3f}")


if __name__ == "__main__":
    main()
