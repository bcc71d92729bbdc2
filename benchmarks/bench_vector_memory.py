"""Benchmark: peak memory of the polygon stage is flat in the raster height (issue 15).

Not a test. Builds two rasters of the same width by mirror-tiling the real FTW Sentinel-2
scene (../shared/data/ftw_baselines/inference-img.tif, 8 bands uint16): 1024 x 1024 and
1024 wide x 16384 tall, makes an untrained checkpoint (``geoseg model init``: a small U-Net,
8 bands, 3 classes, normalisation from the scene) unless ``--model`` is given, then runs,
each in a fresh process:

* ``geoseg infer IMAGE -o DIR`` (the default: class raster, then polygons to a GeoPackage),
* ``geoseg infer IMAGE -o DIR --no-vector`` (inference alone, for comparison),
* ``geoseg vectorize CLASSES -o OUT.gpkg`` on the class raster infer wrote (the polygon
  stage alone, the CLI's defaults: automatic workers).

Peak RSS is the peak of the *sum* over the command's whole process tree (sampled from
/proc every 20 ms: worker processes and the GeoPackage writer process count), and
``largest`` is ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest single process). The
target is a tall/square ratio <= 1.10 for the default ``geoseg infer`` and for
``geoseg vectorize``.

    .venv/bin/python benchmarks/bench_vector_memory.py [--workdir /tmp/geoseg-vecmem]
    .venv/bin/python benchmarks/bench_vector_memory.py --images small.tif tall.tif --model m.pt
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
SCENE = ROOT.parent / "shared" / "data" / "ftw_baselines" / "inference-img.tif"
PY = sys.executable
TARGET = 1.10

def measure(cmd: list[str], root: Path = ROOT) -> dict[str, float]:
    """Run ``cmd`` in a fresh process tree; wall seconds, peak tree RSS and largest process (MiB)."""
    from _rss import measure_tree

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return measure_tree(cmd, env=env, cwd=root)


def build(workdir: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _mirror import mirror_tile

    if not SCENE.exists():
        raise SystemExit(f"{SCENE} is missing (../shared/data)")
    small, tall = workdir / "scene_1024x1024.tif", workdir / "scene_1024x16384.tif"
    for path, height in ((small, 1024), (tall, 16384)):
        if not path.exists():
            mirror_tile(SCENE, path, height, 1024)  # (height, width)
    return small, tall


def make_model(workdir: Path, root: Path = ROOT) -> Path:
    model = workdir / "unet_8b_3c.pt"
    if not model.exists():
        subprocess.run([PY, "-m", "geoseg", "model", "init", "-o", str(model), "--bands", "8", "--classes", "3",
                        "--base-channels", "8", "--depth", "2", "--stats-from", str(SCENE)],
                       check=True, cwd=str(root), env=dict(os.environ, PYTHONPATH=str(root)))
    return model


def line(name: str, r: dict[str, float]) -> str:
    return (f"{name:<34} {r['seconds']:7.1f} s  peak RSS {r['rss_mib']:6.0f} MiB "
            f"(largest process {r['largest_mib']:5.0f} MiB, {r['procs']:.0f} processes)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-vecmem"))
    ap.add_argument("--images", type=Path, nargs=2, metavar=("SQUARE", "TALL"),
                    help="use these two rasters instead of building them (same width, different heights)")
    ap.add_argument("--model", type=Path, help="checkpoint (default: an untrained small U-Net)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per command; the smallest peak is kept")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="geoseg source tree to run (default: this checkout; e.g. an exported older commit)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    images = list(args.images) if args.images else list(build(args.workdir))
    model = args.model or make_model(args.workdir, args.root)
    print(f"machine: {os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.1f}; model {model}; "
          f"geoseg from {args.root}")

    def best(cmd: list[str]) -> dict[str, float]:
        runs = [measure(cmd, args.root) for _ in range(max(1, args.repeats))]
        return min(runs, key=lambda r: r["rss_mib"])

    results: dict[str, list[dict[str, float]]] = {"infer": [], "infer --no-vector": [], "vectorize": []}
    for img in images:
        import rasterio

        with rasterio.open(img) as ds:
            size = f"{ds.width}x{ds.height}"
        print(f"\n== {img.name}: {size}", flush=True)
        out = args.workdir / f"out_{img.stem}"
        base = [PY, "-m", "geoseg", "infer", str(img), "-m", str(model), "-o", str(out), "--overwrite", "-q"]
        r = best(base)
        results["infer"].append(r)
        print(line("geoseg infer (+ polygons, gpkg)", r), flush=True)
        r = best(base + ["--no-vector"])
        results["infer --no-vector"].append(r)
        print(line("geoseg infer --no-vector", r), flush=True)
        classes = out / f"{img.stem}_classes.tif"
        r = best([PY, "-m", "geoseg", "vectorize", str(classes), "-o", str(args.workdir / f"{img.stem}.gpkg"),
                  "--overwrite", "-q"])
        results["vectorize"].append(r)
        print(line("geoseg vectorize (class raster)", r), flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    print(f"peak RSS ratio, {images[1].name} / {images[0].name} (target <= {TARGET:.2f} with polygons):")
    ok = True
    for name, (a, b) in results.items():
        ratio = b["rss_mib"] / a["rss_mib"]
        check = "" if name == "infer --no-vector" else ("  ok" if ratio <= TARGET else "  ABOVE TARGET")
        ok &= bool(check != "  ABOVE TARGET")
        print(f"  {name:<20} {ratio:5.2f}x  ({a['rss_mib']:.0f} -> {b['rss_mib']:.0f} MiB; largest process "
              f"{a['largest_mib']:.0f} -> {b['largest_mib']:.0f} MiB){check}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
