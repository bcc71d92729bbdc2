"""Benchmark: geoseg vectorize vs a whole-raster ``shapes`` pass vs ``gdal_polygonize.py``.

Not a test. Builds 8192² and 16384² class rasters by mirror-tiling the real USDA Cropland
Data Layer (../shared/data/usda_cdl_kansas/2021_30m_cdls.tif), written in windows so the
large raster is never in memory, then times each tool in its own subprocess and reports
wall time and peak RSS (sum over the process tree, sampled from /proc; a fresh wrapper per run).

    .venv/bin/python benchmarks/bench_vectorize.py [--sizes 8192 16384] [--workdir /tmp/geoseg-bench]

* geoseg: ``geoseg.vectorize(raster, out.gpkg, workers=0)``: the CLI's defaults (no
  simplification, automatic worker processes: one per CPU up to 4 above 16 M pixels).
* floor: read the whole raster, iterate ``rasterio.features.shapes`` once (no merging, no
  attributes, nothing written, whole raster in memory).
* gdal: ``gdal_polygonize.py raster -f GPKG out.gpkg`` (4-connected, like geoseg).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
CDL = ROOT.parent / "shared" / "data" / "usda_cdl_kansas" / "2021_30m_cdls.tif"
PY = sys.executable


def build(size: int, path: Path) -> None:
    """Mirror-tile the CDL to ``size``² (tiles alternate flipped, so every seam is continuous)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    if path.exists():
        return
    with rasterio.open(CDL) as src:
        a = src.read(1)
        prof = src.profile
        cmap = src.colormap(1)
        t = src.transform
    h, w = a.shape

    def mirror(n: int, period: int) -> np.ndarray:
        i = np.arange(n)
        tile, off = i // period, i % period
        return np.where(tile % 2 == 0, off, period - 1 - off)

    rows, cols = mirror(size, h), mirror(size, w)
    prof.update(width=size, height=size, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                driver="GTiff", count=1, BIGTIFF="IF_SAFER")
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **prof) as dst:
        dst.write_colormap(1, cmap)
        for r0 in range(0, size, 512):
            r1 = min(size, r0 + 512)
            dst.write(a[rows[r0:r1]][:, cols], 1, window=Window(0, r0, size, r1 - r0))
    del t
    os.replace(tmp, path)


def measure(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd`` in a fresh process tree; wall seconds and peak RSS (MiB): ``rss_mib`` summed over the
    tree (worker processes count), ``rss_max_mib`` the largest single process (``benchmarks/_rss.py``)."""
    from _rss import measure_tree

    r = measure_tree(cmd, interval=0.05)
    return {**r, "rss_max_mib": r["largest_mib"]}


GEOSEG = """
import sys
sys.path.insert(0, {root!r})
from geoseg.vector import vectorize
r = vectorize(sys.argv[1], sys.argv[2], overwrite=True, workers=0,
              simplify=sys.argv[3] if len(sys.argv) > 3 else None)
print(r.polygons, r.max_open_groups, r.band_rows)
"""

FLOOR = """
import sys, rasterio
from rasterio.features import shapes
with rasterio.open(sys.argv[1]) as ds:
    a = ds.read(1)
    t = ds.transform
n = 0
for _ in shapes(a, connectivity=4, transform=t):
    n += 1
print(n)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    ap.add_argument("--gdal-sizes", type=int, nargs="*", default=None,
                    help="sizes at which to run gdal_polygonize.py (default: all; it is the slowest by far)")
    ap.add_argument("--simplify-size", type=int, default=8192,
                    help="size at which to also write with --simplify 1px for the file-size line")
    args = ap.parse_args()
    if not CDL.exists():
        raise SystemExit(f"{CDL} is missing (../shared/data)")
    gdal = shutil.which("gdal_polygonize.py")
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    rows = []
    for size in args.sizes:
        ras = args.workdir / f"cdl_mirror_{size}.tif"
        t = time.perf_counter()
        build(size, ras)
        print(f"\n== {size}x{size} ({size * size / 1e6:.0f} Mpx), raster {ras.stat().st_size / 2**20:.1f} MiB "
              f"(built in {time.perf_counter() - t:.0f} s)", flush=True)
        out = args.workdir / f"geoseg_{size}.gpkg"
        g = measure([PY, "-c", GEOSEG.format(root=str(ROOT)), str(ras), str(out)])
        print(f"geoseg vectorize -> gpkg : {g['seconds']:8.1f} s  peak RSS {g['rss_mib']:7.0f} MiB "
              f"(largest process {g['rss_max_mib']:.0f} MiB)", flush=True)
        f = measure([PY, "-c", FLOOR, str(ras)])
        print(f"single shapes pass (floor): {f['seconds']:8.1f} s  peak RSS {f['rss_mib']:7.0f} MiB", flush=True)
        d = None
        if gdal and (args.gdal_sizes is None or size in args.gdal_sizes):
            gout = args.workdir / f"gdal_{size}.gpkg"
            if gout.exists():
                gout.unlink()
            d = measure([gdal, "-q", str(ras), "-f", "GPKG", str(gout)])
            print(f"gdal_polygonize.py -> gpkg: {d['seconds']:8.1f} s  peak RSS {d['rss_mib']:7.0f} MiB", flush=True)
        elif not gdal:
            print("gdal_polygonize.py: not installed (apt-get install gdal-bin python3-gdal)")
        else:
            print("gdal_polygonize.py: skipped at this size (--gdal-sizes)")
        raw = size * size
        print(f"geoseg/floor time {g['seconds'] / f['seconds']:.2f}x"
              + (f"; geoseg/gdal time {g['seconds'] / d['seconds']:.2f}x" if d else ""))
        print(f"output {out.stat().st_size / 2**20:.1f} MiB (no simplification, the default) = "
              f"{out.stat().st_size / ras.stat().st_size:.2f}x the GeoTIFF, {out.stat().st_size / raw:.2f} B/px")
        if size == args.simplify_size:
            sout = args.workdir / f"geoseg_{size}_s1.gpkg"
            s = measure([PY, "-c", GEOSEG.format(root=str(ROOT)), str(ras), str(sout), "1px"])
            print(f"with --simplify 1px: {s['seconds']:.1f} s, peak RSS {s['rss_mib']:.0f} MiB, output "
                  f"{sout.stat().st_size / 2**20:.1f} MiB = "
                  f"{sout.stat().st_size / ras.stat().st_size:.2f}x the GeoTIFF")
        rows.append((size, g, f, d))
    print(f"load average at end {os.getloadavg()[0]:.1f} (other work on the machine slows every tool)")
    if len(rows) >= 2:
        (s0, g0, f0, _), (s1, g1, f1, _) = rows[0], rows[-1]
        print(f"\npeak RSS ratio {s1} vs {s0}: geoseg {g1['rss_mib'] / g0['rss_mib']:.2f}x "
              f"(floor {f1['rss_mib'] / f0['rss_mib']:.2f}x) for {(s1 / s0) ** 2:.0f}x the pixels")


if __name__ == "__main__":
    main()
