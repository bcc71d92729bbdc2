"""geoseg against Fields of The World's own CLI, on one FTW-format checkpoint and one raster.

    PEER=/work/peer bash ../shared/peers/setup_peer_env.sh        # once: ftw-tools in its own venv
    python benchmarks/bench_ftw.py --peer /work/peer [--size 2048] [--backbone efficientnet-b3]

1. writes a random-weight checkpoint in FTW's format with ftw-tools' own task class
   (../shared/peers/ftw_make_ckpt.py, run in the peer environment);
2. ``geoseg model import CKPT --preset ftw`` turns it into a geoseg checkpoint;
3. mirror-tiles the FTW sample scene (8 bands: B4, B3, B2, B8 of two dates) to SIZE x SIZE;
4. runs ``ftw inference run`` (patch 1024, padding 64, batch 2, CPU, --resize_factor 1) and
   ``geoseg infer`` (tile 1024, overlap 128, batch 2, the preset's), each in a fresh process tree,
   measuring wall time and peak RSS of the tree;
5. prints the pixel agreement of the two class rasters away from the scene edge (ftw never
   predicts its outer 64 px; both tools stitch tiles differently: ftw keeps tile centres of argmax
   labels, geoseg blends probabilities), and the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _mirror import mirror_tile  # noqa: E402
from _rss import measure_tree  # noqa: E402

SCENE = ROOT.parent / "shared" / "data" / "ftw_baselines" / "inference-img.tif"
MAKE_CKPT = ROOT.parent / "shared" / "peers" / "ftw_make_ckpt.py"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", type=Path, default=Path(os.environ.get("PEER", "/tmp/peer")),
                    help="folder of the peer environment (venv/ with ftw-tools)")
    ap.add_argument("--size", type=int, default=2048, help="side of the mirror-tiled test raster")
    ap.add_argument("--backbone", default="efficientnet-b3", help="smp encoder of the checkpoint (FTW's release: "
                    "efficientnet-b3)")
    ap.add_argument("--edge", type=int, default=128, help="pixels of the scene edge left out of the agreement")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args(argv)
    ftw = a.peer / "venv" / "bin" / "ftw"
    if not ftw.exists():
        raise SystemExit(f"{ftw} not found: run PEER={a.peer} bash ../shared/peers/setup_peer_env.sh first")
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_ftw_"))
    work.mkdir(parents=True, exist_ok=True)

    ckpt = work / f"ftw_{a.backbone}.ckpt"
    if not ckpt.exists():
        subprocess.run([str(a.peer / "venv" / "bin" / "python"), str(MAKE_CKPT), str(ckpt), "--backbone",
                        a.backbone], check=True)
    model = work / f"ftw_{a.backbone}.pt"
    subprocess.run([sys.executable, "-m", "geoseg", "model", "import", str(ckpt), "-o", str(model), "--preset", "ftw",
                    "--overwrite"], check=True)
    img = work / f"ftw_scene_{a.size}.tif"
    if not img.exists():
        mirror_tile(SCENE, img, a.size, a.size)

    threads = str(os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    ftw_out = work / "ftw_classes.tif"
    geo_out = work / "geoseg"
    r_ftw = measure_tree([str(ftw), "inference", "run", str(img), "-m", str(ckpt), "-o", str(ftw_out), "-f",
                          "--resize_factor", "1", "--batch_size", "2"], env=env)
    r_geo = measure_tree([sys.executable, "-m", "geoseg", "infer", str(img), "-m", str(model), "-o", str(geo_out),
                          "--batch-size", "2", "--device", "cpu", "--overwrite", "-q"], env=env)

    with rasterio.open(ftw_out) as f, rasterio.open(geo_out / f"{img.stem}_classes.tif") as g:
        fa, ga = f.read(1), g.read(1)
    # one 1024 px patch: both tools run the network once on the same pixels, so they must agree exactly
    (work / "patch").mkdir(exist_ok=True)
    patch = work / "patch" / "patch.tif"  # alone in its folder: ftw's torchgeo dataset indexes the folder
    with rasterio.open(img) as ds:
        prof = ds.profile
        prof.update(width=1024, height=1024, transform=ds.window_transform(((0, 1024), (0, 1024))))
        data = ds.read(window=((0, 1024), (0, 1024)))
    with rasterio.open(patch, "w", **prof) as dst:
        dst.write(data)
    subprocess.run([str(ftw), "inference", "run", str(patch), "-m", str(ckpt), "-o", str(work / "patch_ftw.tif"),
                    "-f", "--resize_factor", "1"], check=True, capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "geoseg", "infer", str(patch), "-m", str(model), "-o",
                    str(work / "patch_geoseg"), "--device", "cpu", "--overwrite", "-q"], check=True, env=env)
    with rasterio.open(work / "patch_ftw.tif") as f, rasterio.open(work / "patch_geoseg" / "patch_classes.tif") as g:
        pf, pg = f.read(1)[64:-64, 64:-64], g.read(1)[64:-64, 64:-64]
    patch_agree = float((pf == pg).mean())
    e = a.edge
    inner = (slice(e, fa.shape[0] - e), slice(e, fa.shape[1] - e))
    agree = float((fa[inner] == ga[inner]).mean())
    px = a.size * a.size / 1e6
    print(f"raster {a.size}x{a.size} (8 bands, mirror-tiled FTW scene), smp U-Net {a.backbone}, random weights, "
          f"{threads} threads")
    print(f"{'tool':<8} {'seconds':>9} {'Mpx/s':>7} {'peak tree RSS MiB':>18}")
    for name, r in (("ftw", r_ftw), ("geoseg", r_geo)):
        print(f"{name:<8} {r['seconds']:9.1f} {px / r['seconds']:7.3f} {r['rss_mib']:18.0f}")
    print(f"speed geoseg/ftw {r_ftw['seconds'] / r_geo['seconds']:.2f}x; memory geoseg/ftw "
          f"{r_geo['rss_mib'] / r_ftw['rss_mib']:.2f}")
    print(f"class agreement more than {e} px from the edge: {agree:.4f} "
          f"(classes present: ftw {np.unique(fa[inner]).tolist()}, geoseg {np.unique(ga[inner]).tolist()})")
    print(f"one 1024 px patch, both tools on the same pixels (its outer 64 px left out): agreement {patch_agree:.4f}; "
          "on the whole raster the tools place their tiles differently (torchgeo's GridGeoSampler, geoseg's grid) "
          "and the network's output depends on context beyond the tile margins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
