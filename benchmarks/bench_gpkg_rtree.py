"""Benchmark: GeoPackage spatial index, GDAL's own (built while streaming) vs geoseg's bulk load afterwards.

For each feature count, writes N square polygons (in batches of 65 536, as vectorize streams them) to a
GeoPackage twice, each in a fresh process: once with GDAL's index (``SPATIAL_INDEX=YES``, the driver's
default) and once as geoseg does (``SPATIAL_INDEX=NO``, boxes spilled to a file, the R-tree bulk-loaded
at the end). Prints wall time and
the process's peak RSS; both indexes hold the same entries (tests/test_export.py checks that).

Usage: python benchmarks/bench_gpkg_rtree.py [N ...]   (default: 1000 10000 100000 1000000)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, pyarrow as pa, shapely
from geoseg.export import ogr

n, bulk, path = int(sys.argv[1]), sys.argv[2] == "bulk", Path(sys.argv[3])
side = int(np.ceil(np.sqrt(n)))
schema = pa.schema([("id", pa.int64()), ("geometry", pa.large_binary())])

def batches():
    for s in range(0, n, 65536):
        i = np.arange(s, min(n, s + 65536))
        x, y = (i % side) * 10.0, (i // side) * 10.0
        g = shapely.box(x, y, x + 9.0, y + 9.0)
        yield pa.record_batch([pa.array(i), pa.array(shapely.to_wkb(g), type=pa.large_binary())], schema=schema)

job = {"path": str(path), "layer": "b", "driver": "GPKG", "geometry_type": "Polygon", "crs": "EPSG:32633",
       "layer_options": {"SPATIAL_INDEX": "NO"} if bulk else None, "rtree": bulk}
t = time.perf_counter()
ogr._write_job(job, pa.RecordBatchReader.from_batches(schema, batches()))
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(n: int, mode: str, d: Path) -> dict[str, float]:
    out = d / f"{mode}_{n}.gpkg"
    r = subprocess.run([sys.executable, "-c", CHILD, str(n), mode, str(out)], capture_output=True, text=True,
                       cwd=ROOT, check=True)
    out.unlink()
    res: dict[str, float] = json.loads(r.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [1000, 10_000, 100_000, 1_000_000]
    print(f"{'features':>10} {'GDAL index s':>13} {'MiB':>6} {'bulk load s':>12} {'MiB':>6}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            g = run(n, "gdal", Path(tmp))
            b = run(n, "bulk", Path(tmp))
            print(f"{n:>10} {g['seconds']:>13.2f} {g['rss_mib']:>6.0f} {b['seconds']:>12.2f} {b['rss_mib']:>6.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
