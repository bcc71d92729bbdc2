"""End-to-end inference against model-only, read-only and write-only throughput, and peak memory.

Not a test: run on demand, e.g.

    python benchmarks/bench_infer.py --sizes 512 2048                  # CPU
    python benchmarks/bench_infer.py --null-only --sizes 2048 --compress deflate none   # the pipeline's own cost
    python benchmarks/bench_infer.py --device cuda --base-channels 64 --tile-size 512 --batch-size 16 \\
        --sizes 4096 16384 --compile                                    # a GPU

Input: ``ftw_baselines/inference-img.tif`` (real Sentinel-2, 8 bands uint16, EPSG:32633)
mirror-tiled to each size (``--tall``: ``--width`` wide and each size tall), as a DEFLATE or an
uncompressed tiled GeoTIFF (``--compress``). Printed side by side in one run, per size:

* model-only: the grid's own number of tiles already on the device, forward + softmax, as raster
  megapixels/s (so both sides pay for the overlap); eager, compiled with ``--compile``, and with
  batch normalization folded into the convolutions with ``--fold-bn`` (a CPU predictor always
  folds it; on a GPU this column decides whether it should);
* read-only: every tile row's band of rows read once in the raster's own type, by the pipeline's
  reader (same threads, buffers and validity checks);
* write-only: the same all-zero class raster written by row bands and converted to a DEFLATE COG;
* end-to-end ``predict_raster`` with the model, and with a null predictor (fixed probabilities at
  no cost, on the same device: the pipeline's own cost), and their ratios;
* with ``--floor``: the null run again with every per-pixel stage skipped (no conversion, blending,
  argmax or classes; all-nodata rows written): reading, setup, writing and the COG alone, the upper
  bound of the null column on that machine (a measurement device, never the product's behaviour);
* peak RSS of a default end-to-end run of each size in a fresh process, and the ratio.

Runs alternate in one process (best of ``--repeats``), so all see the same machine state.
Targets (issue 15): null end-to-end >= 0.8 of min(read, write) for DEFLATE input and >= 0.5 for
uncompressed input on the 2-core machine (>= 0.9 on a GPU host); end-to-end >= 0.9 of model-only on
a CPU and >= 0.85 on a GPU; peak RSS ratio <= 1.10 for 16x taller rasters, <= 1.15 for 4096² -> 16384².
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT_SRC = ROOT.parent / "shared" / "data" / "ftw_baselines" / "inference-img.tif"
FALLBACK_SRC = ROOT / "sample_data" / "field.tif"


def _e2e_child(raster: str, model: str, out: str, args: argparse.Namespace, env: dict | None = None,
               **kwargs: object) -> dict:
    """Run predict_raster with defaults (and ``kwargs``) in a fresh process; its time, peak RSS, and
    /proc's breakdown of the resident memory at the end (anonymous, file, shared, locked/pinned).

    The peak is /proc's VmHWM, not ``getrusage``'s ru_maxrss: Linux carries ru_maxrss over ``exec``, so
    a child started from a large parent reported the parent's size (the GPU's "3.3x" of earlier rounds).
    """
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    code = f"""
import json, resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
from geoseg.pipeline import predict_raster

def rss():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's RSS at the fork over the exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024

marks = []
def progress(p):  # peak RSS so far at each tenth of the tiles: where memory grows
    if not marks or p.tiles_done * 10 // max(p.tiles_total, 1) > marks[-1][0]:
        marks.append((p.tiles_done * 10 // max(p.tiles_total, 1), round(rss())))
t = time.perf_counter()
rep = predict_raster({raster!r}, {model!r}, {out!r}, batch_size={args.batch_size}, device={args.device!r},
                     overwrite=True, on_progress=progress{extra})
status = {{l.split(":")[0]: l.split(":")[1].strip() for l in open("/proc/self/status") if l.startswith(("Vm", "Rss"))}}
print(json.dumps({{"seconds": time.perf_counter() - t, "device": rep.device, "rss_mb": rss(),
                  "rss_by_tenth": marks, "status": {{k: status[k] for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem",
                                                                          "VmLck", "VmPin") if k in status}}}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _timings(rep) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in rep.timings.items())


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def model_only_seconds(pred, size: int, batch: int, n_tiles: int) -> float:
    """Seconds for the model alone on ``n_tiles`` tiles (same size, batch, precision), already on the device,
    with the C heap as the pipeline keeps it (:func:`geoseg.io.heap.streaming_heap`)."""
    import torch

    from geoseg.io.heap import streaming_heap

    x = torch.randn(batch, pred.meta.num_bands, size, size, device=pred.device)
    if pred.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    n_batches = -(-n_tiles // batch)
    with streaming_heap():
        _sync(pred.device)
        t = time.perf_counter()
        for _ in range(n_batches):
            pred.forward_tensor(x)
        _sync(pred.device)
        return (time.perf_counter() - t) * n_tiles / (n_batches * batch)


def folded_predictor(checkpoint: str, device: str):
    """The checkpoint's network with each batch normalization folded into the convolution before it
    (``torch.fx``, as :func:`geoseg.predict.engine.for_cpu` does on a CPU), on ``device``: the
    ``--fold-bn`` model-only column, to decide on evidence whether a GPU should fold it too."""
    from torch.fx.experimental.optimization import fuse

    from geoseg.models.ensemble import load_ensemble
    from geoseg.predict import TorchPredictor

    net, meta = load_ensemble([checkpoint])
    return TorchPredictor(fuse(net.eval()), meta, device=device)


@contextlib.contextmanager
def without_pixel_stages():
    """Within: :class:`~geoseg.predict.stream.StreamRunner` skips every per-pixel stage. Each tile is queued
    as one without data (no conversion, model or blending) and finished rows are all nodata without an
    argmax or a slide, so a run only reads, sets up, writes rows and builds the COG: how fast the null run
    could be if its stages cost nothing (``--floor``). For measurement only."""
    import torch

    from geoseg.predict import stream

    def no_tiles(self, job, band, raw, valid, width=None):
        for j in range(len(job.cols)):
            self.pending.append((job, j, None, None))
            if len(self.pending) >= self.batch_size:
                self._run_batch()

    blank: dict = {}

    def no_argmax(self, upto, skip=0, probabilities=False, values=None, nonfinite=None):
        key = (upto - self.base - skip, self.width, self.sums.device)
        if key not in blank:
            blank[key] = (torch.zeros(key[:2], dtype=torch.uint8, device=key[2]),
                          torch.zeros(key[:2], dtype=torch.bool, device=key[2]))
        self.base = upto
        return blank[key][0], None, blank[key][1]

    saved = stream.StreamRunner._push_tiles, stream.StreamRunner._push_band, stream.RowBlender.pop
    stream.StreamRunner._push_tiles, stream.StreamRunner._push_band, stream.RowBlender.pop = (
        no_tiles, no_tiles, no_argmax)
    try:
        yield
    finally:
        stream.StreamRunner._push_tiles, stream.StreamRunner._push_band, stream.RowBlender.pop = saved


def read_only(raster: str, size: int, overlap: int, align: int, threads: int, gdal_decode: bool) -> float:
    """Raster Mpx/s of the pipeline's reader alone (every tile row's band read once, own type): through GDAL's
    decoding threads where it can (``gdal_decode``), else by block-aligned chunks, one thread each."""
    from geoseg.io.raster import open_raster
    from geoseg.pipeline.plan import plan_run
    from geoseg.pipeline.read import RowBandReader
    from geoseg.tiling import TileGrid, column_strips

    with open_raster(raster) as ds:
        g = TileGrid(ds.height, ds.width, size, overlap, align)
        plan = plan_run(g, column_strips(ds.width, size, overlap, 8192, align))
        t = time.perf_counter()
        reader = RowBandReader(ds, list(range(1, ds.count + 1)), plan, threads=threads, gdal_decode=gdal_decode)
        for band in reader:
            band.release(reader.buffers)
        return ds.width * ds.height / 1e6 / (time.perf_counter() - t)


def _default_read_threads(raster: str, on_gpu: bool, pred) -> int:
    from geoseg.io.raster import open_raster
    from geoseg.pipeline.read import default_read_threads

    with open_raster(raster) as ds:
        return default_read_threads(ds, on_gpu=on_gpu, model_threads=pred.threads)


def write_only(raster: str, out: str, size: int, overlap: int) -> float:
    """Raster Mpx/s of writing an all-zero class raster by row bands and converting it to a DEFLATE COG."""
    import numpy as np

    from geoseg.io.raster import open_raster
    from geoseg.io.writer import GeoTiffSink
    from geoseg.tiling import TileGrid

    with open_raster(raster) as ds:
        h, w, crs, tr = ds.height, ds.width, ds.crs, ds.transform
    starts = TileGrid(h, w, size, overlap).row_starts + [h]
    t = time.perf_counter()
    sink = GeoTiffSink(out, width=w, height=h, count=1, dtype="uint8", crs=crs, transform=tr, nodata=255)
    zeros = np.zeros((1, size, w), np.uint8)
    for r0, r1 in zip(starts[:-1], starts[1:]):
        sink.write(zeros[:, : r1 - r0], r0, 0)
    sink.commit()
    return w * h / 1e6 / (time.perf_counter() - t)


def make_input(src: str, path: Path, height: int, width: int, compress: str) -> Path:
    from _mirror import mirror_tile

    if not path.exists():
        tmp = path.with_suffix(".tmp.tif")
        mirror_tile(src, tmp, height, width)
        if compress == "deflate":
            tmp.rename(path)
        else:
            import rasterio
            import rasterio.shutil

            rasterio.shutil.copy(tmp, path, driver="GTiff", tiled=True, blockxsize=512, blockysize=512,
                                 compress="none", bigtiff="if_safer")
            tmp.unlink()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="raster sides (or heights with --tall)")
    ap.add_argument("--tall", action="store_true", help="rasters --width wide and each size tall")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--compress", nargs="+", default=["deflate"], choices=["deflate", "none"])
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs; the best is kept")
    ap.add_argument("--null-only", action="store_true", help="only read, write and the null predictor")
    ap.add_argument("--floor", action="store_true",
                    help="also time the null run with every per-pixel stage skipped (null_floor: reading, setup, "
                         "writing and the COG alone; the upper bound of the null column)")
    ap.add_argument("--fold-bn", action="store_true",
                    help="also time model-only with batch normalization folded into the convolutions")
    ap.add_argument("--compile", action="store_true", help="also time the compiled model (torch.compile)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead")
    ap.add_argument("--read-modes", action="store_true",
                    help="also time read-only through GDAL's decoding threads (read_gdal) and by block-aligned "
                         "chunks, one thread and handle each (read_chunks); the same where GDAL cannot decode on "
                         "threads (geoseg.pipeline.read.GDAL_DECODE says which one 'read' uses)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child runs")
    ap.add_argument("--rss-variants", type=int, default=0,
                    help="also measure peak RSS with 1 reader thread (1) and with MALLOC_ARENA_MAX=2 (2)")
    ap.add_argument("--rss-only", action="store_true", help="only the peak-RSS child runs")
    ap.add_argument("--src", default=str(DEFAULT_SRC if DEFAULT_SRC.exists() else FALLBACK_SRC))
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from geoseg.io.stats import band_stats
    from geoseg.models.init import init_checkpoint
    from geoseg.pipeline import predict_raster
    from geoseg.pipeline.read import GDAL_DECODE
    from geoseg.predict import TorchPredictor
    from geoseg.predict.null import NullPredictor
    from geoseg.tiling import TileGrid

    work = Path(args.workdir or tempfile.mkdtemp(prefix="geoseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    mean, std = band_stats([args.src])
    model = work / f"bench_model_{args.base_channels}_{args.depth}_{args.tile_size}.pt"
    init_checkpoint(model, arch="unet", bands=len(mean), classes=3, base_channels=args.base_channels,
                    depth=args.depth, mean=mean, std=std, tile_size=args.tile_size, overlap=args.overlap,
                    overwrite=True)
    pred = TorchPredictor.from_checkpoint(str(model), device=args.device)
    null = NullPredictor(pred.meta, device=str(pred.device))
    comp = None
    if args.compile and not args.null_only:
        comp = TorchPredictor.from_checkpoint(str(model), device=args.device,
                                              compile=args.compile_mode or True)
        t = time.perf_counter()
        model_only_seconds(comp, args.tile_size, args.batch_size, 3 * args.batch_size)
        print(f"compile + warm-up: {time.perf_counter() - t:.1f} s")
    folded = None
    if args.fold_bn and not args.null_only:
        folded = folded_predictor(str(model), args.device)
        model_only_seconds(folded, args.tile_size, args.batch_size, 2 * args.batch_size)  # warm-up
    if not args.null_only:
        model_only_seconds(pred, args.tile_size, args.batch_size, 2 * args.batch_size)  # warm-up
    on_gpu = pred.device.type == "cuda"
    print(f"model: unet base {args.base_channels} depth {args.depth}, tile {args.tile_size}, overlap "
          f"{args.overlap}, batch {args.batch_size}, {pred.device} {pred.precision}; src {Path(args.src).name}; "
          f"cpus {os.cpu_count()}", flush=True)
    align = 2 ** args.depth
    rows = []
    for compress in args.compress:
        for side in args.sizes:
            h, w = (side, args.width) if args.tall else (side, side)
            raster = str(make_input(args.src, work / f"mirror_{h}x{w}_{compress}.tif", h, w, compress))
            g = TileGrid(h, w, args.tile_size, args.overlap, align)
            mpx = h * w / 1e6
            best: dict[str, float] = {}

            def keep(name: str, value: float) -> None:
                best[name] = max(best.get(name, 0.0), value)

            threads = _default_read_threads(raster, on_gpu, pred)  # predict_raster's default for this raster
            default_decode = GDAL_DECODE["cuda" if on_gpu else "cpu"]
            print(f"  {Path(raster).name}: reader threads {threads}, GDAL's decoding threads where it can: "
                  f"{default_decode}", flush=True)
            for _ in range(0 if args.rss_only else args.repeats):
                keep("read", read_only(raster, args.tile_size, args.overlap, align, threads, default_decode))
                if args.read_modes:
                    for name, decode in (("read_gdal", True), ("read_chunks", False)):
                        keep(name, read_only(raster, args.tile_size, args.overlap, align, threads, decode))
                keep("write", write_only(raster, str(work / "w.tif"), args.tile_size, args.overlap))
                t = time.perf_counter()
                rep = predict_raster(raster, null, str(work / "n.tif"), batch_size=args.batch_size, overwrite=True)
                keep("null", mpx / (time.perf_counter() - t))
                print("  null:", _timings(rep), flush=True)
                if args.floor:
                    with warnings.catch_warnings(), without_pixel_stages():
                        warnings.simplefilter("ignore")  # its rows are all nodata, and say so
                        t = time.perf_counter()
                        rep = predict_raster(raster, null, str(work / "f.tif"), batch_size=args.batch_size,
                                             overwrite=True)
                        keep("null_floor", mpx / (time.perf_counter() - t))
                    print("  null, per-pixel stages skipped:", _timings(rep), flush=True)
                if args.null_only:
                    continue
                keep("model", mpx / model_only_seconds(pred, args.tile_size, args.batch_size, len(g)))
                if comp is not None:
                    keep("compiled", mpx / model_only_seconds(comp, args.tile_size, args.batch_size, len(g)))
                if folded is not None:
                    keep("model_bn_folded", mpx / model_only_seconds(folded, args.tile_size, args.batch_size, len(g)))
                t = time.perf_counter()
                rep = predict_raster(raster, pred, str(work / "c.tif"), batch_size=args.batch_size, overwrite=True)
                keep("e2e", mpx / (time.perf_counter() - t))
                print("  model:", _timings(rep), flush=True)
                if comp is not None:
                    t = time.perf_counter()
                    rep = predict_raster(raster, comp, str(work / "cc.tif"), batch_size=args.batch_size,
                                         overwrite=True)
                    keep("e2e_compiled", mpx / (time.perf_counter() - t))
                    print("  compiled:", _timings(rep), flush=True)
            if not args.no_rss:
                child = _e2e_child(raster, str(model), str(work / "rss.tif"), args)
                best["rss"] = child["rss_mb"]
                print(f"  peak RSS MB by tenths of the tiles: {child['rss_by_tenth']}; "
                      f"at the end {child['rss_mb']:.0f}; "
                      f"{child['status']}", flush=True)
                for name, env, kw in [("1 reader thread", {}, {"read_threads": 1}),
                                      ("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"}, {})][: args.rss_variants]:
                    c = _e2e_child(raster, str(model), str(work / "rss.tif"), args, env, **kw)
                    print(f"  peak RSS with {name}: {c['rss_mb']:.0f} MB ({c['seconds']:.1f} s); {c['status']}",
                          flush=True)
            rows.append((compress, f"{h}x{w}", mpx, best))
            print(f"{compress} {h}x{w}: " + ", ".join(f"{k} {v:.2f}" for k, v in best.items()), flush=True)

    print()
    cols = ["model", "compiled", "read", "write", "null", "e2e", "e2e_compiled", "rss"]
    if args.floor:
        cols.insert(5, "null_floor")
    if args.read_modes:
        cols[3:3] = ["read_gdal", "read_chunks"]
    if folded is not None:
        cols.insert(1, "model_bn_folded")
    print(f"{'input':>8} {'size':>12} {'Mpx':>7} " + " ".join(f"{c:>12}" for c in cols)
          + f" {'null/min(r,w)':>14} {'floor/min':>10} {'e2e/model':>10} {'e2e/min':>8} {'e2e_c/model':>12}")
    for compress, size, mpx, b in rows:
        if "read" not in b:  # --rss-only
            continue
        floor_io = min(b["read"], b["write"])
        cells = " ".join(f"{b[c]:>12.2f}" if c in b else f"{'-':>12}" for c in cols)
        e2e_model = f"{b['e2e'] / b['model']:>10.2f}" if "e2e" in b else f"{'-':>10}"
        e2e_min = (f"{b['e2e'] / min(b['model'], floor_io):>8.2f}" if "e2e" in b else f"{'-':>8}")
        e2e_c = (f"{b['e2e_compiled'] / b['model']:>12.2f}" if "e2e_compiled" in b else f"{'-':>12}")
        floor = f"{b['null_floor'] / floor_io:>10.2f}" if "null_floor" in b else f"{'-':>10}"
        print(f"{compress:>8} {size:>12} {mpx:>7.1f} {cells} {b['null'] / floor_io:>14.2f} {floor} {e2e_model} "
              f"{e2e_min} {e2e_c}")
    print(f"(raster Mpx/s, best of {args.repeats}; floor/min = null_floor / min(read, write);\n"
          " rss = peak RSS MB of a default end-to-end run in a fresh process;"
          " e2e_c/model = compiled end-to-end over eager model-only)")
    for compress in args.compress:
        rs = [r for r in rows if r[0] == compress and "rss" in r[3]]
        if len(rs) >= 2:
            print(f"peak RSS ratio {rs[-1][1]} / {rs[0][1]} ({compress}): {rs[-1][3]['rss'] / rs[0][3]['rss']:.3f}")


if __name__ == "__main__":
    main()
