"""Kill `geoseg infer` and `geoseg train` with SIGKILL at random moments, resume, and check every time.

Not a test (it takes minutes); the test suite runs a few trials of the same checks
(tests/test_resume.py, tests/test_train*.py). Usage:

    python benchmarks/kill_trials.py --trials 20

For each infer trial: a run is killed at a random time, `--resume` finishes it, and the
class and probability rasters must equal an uninterrupted run byte for byte; no file may
appear at a destination before its run completes, and no temporary file may remain.
For each train trial: a run is killed at a random time; every checkpoint present must load
(never a truncated file under a final name), and `--resume` must finish with a loadable
best checkpoint and a metrics CSV.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SRC = ROOT.parent / "shared" / "data" / "ftw_baselines" / "inference-img.tif"
FIELD = ROOT / "sample_data" / "field.tif"
POLYS = ROOT / "sample_data" / "field_training_polygons.gpkg"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)


def _kill_at_random(cmd: list[str], rng: random.Random, max_delay: float) -> int:
    p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.5, max_delay))
    p.send_signal(signal.SIGKILL)
    return p.wait()


def infer_trials(n: int, work: Path, rng: random.Random) -> tuple[int, list[str]]:
    from geoseg.models.init import init_checkpoint

    src = SRC if SRC.exists() else FIELD
    model = work / "m.pt"
    init_checkpoint(model, bands=8 if src == SRC else 7, classes=3, base_channels=8, depth=2, tile_size=64,
                    overlap=16, stats_from=src, overwrite=True)
    base = [sys.executable, "-m", "geoseg", "infer", str(src), "-m", str(model), "-q", "--no-vector",
            "--tile-size", "64", "--overlap", "16", "--batch-size", "2", "--checkpoint-seconds", "0",
            "--device", "cpu", "--probabilities"]
    ref = work / "ref"
    r = _run([*base, "-o", str(ref)])
    assert r.returncode == 0, r.stderr
    t0 = time.perf_counter()
    _run([*base, "-o", str(work / "timing")])
    full = time.perf_counter() - t0
    ok, failures = 0, []
    for i in range(n):
        out = work / f"infer_{i}"
        code = _kill_at_random([*base, "-o", str(out)], rng, full)
        finals = [p for p in out.glob("*.tif") if not p.name.startswith(".")] if out.exists() else []
        if code == 0:
            ok += 1  # finished before the kill: nothing to check beyond success
            continue
        if finals:
            # killed after the outputs were renamed into place: they must be complete and exact
            names = sorted(p.name for p in finals)
            expected = sorted(p.name for p in ref.glob("*.tif"))
            if names == expected and all(p.read_bytes() == (ref / p.name).read_bytes() for p in finals):
                ok += 1
            else:
                failures.append(f"infer {i}: incomplete or different final files after kill: {names}")
            continue
        r = _run([*base, "-o", str(out), "--resume"])
        if r.returncode != 0 and "no interrupted run" in r.stderr:
            r = _run([*base, "-o", str(out)])  # killed before the first checkpoint: a plain rerun is right
        same = r.returncode == 0 and all(
            (out / n_).read_bytes() == (ref / n_).read_bytes()
            for n_ in ("inference-img_classes.tif", "inference-img_probabilities.tif")
            if (ref / n_).exists())
        tmp_left = list(out.glob(".*geoseg-tmp*"))
        if same and not tmp_left:
            ok += 1
        else:
            failures.append(f"infer {i}: rc={r.returncode} same={same} leftovers={tmp_left} {r.stderr[-300:]}")
    return ok, failures


def train_trials(n: int, work: Path, rng: random.Random) -> tuple[int, list[str]]:
    from geoseg.models import load_checkpoint

    base = [sys.executable, "-m", "geoseg", "train", "--image", str(FIELD), "--vector-labels", str(POLYS),
            "--class-field", "class", "--epochs", "6", "--samples-per-epoch", "16", "--batch-size", "4",
            "--tile-size", "32", "--base-channels", "4", "--depth", "2", "--seed", "0", "-q", "--device", "cpu"]
    t0 = time.perf_counter()
    r = _run([*base, "-o", str(work / "timing.pt")])
    assert r.returncode == 0, r.stderr
    full = time.perf_counter() - t0
    ok, failures = 0, []
    for i in range(n):
        out = work / f"train_{i}" / "m.pt"
        out.parent.mkdir()
        code = _kill_at_random([*base, "-o", str(out)], rng, full)
        bad = []
        for ck in out.parent.glob("*.pt"):
            try:
                load_checkpoint(ck)
            except Exception as e:  # noqa: BLE001
                bad.append(f"{ck.name}: {e}")
        if bad:
            failures.append(f"train {i}: unloadable checkpoint after kill: {bad}")
            continue
        if code != 0:
            last = out.with_name("m.last.pt")
            r = _run([*base, "-o", str(out), *(["--resume"] if last.exists() else []), "--overwrite"])
            if r.returncode != 0:
                failures.append(f"train {i}: resume failed: {r.stderr[-300:]}")
                continue
        try:
            load_checkpoint(out)
            assert out.with_name("m.metrics.csv").exists()
            ok += 1
        except Exception as e:  # noqa: BLE001
            failures.append(f"train {i}: {e}")
    return ok, failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["infer", "train"], default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="geoseg-kill-"))
    results = {}
    if args.only in (None, "infer"):
        results["infer"] = infer_trials(args.trials, work, rng)
    if args.only in (None, "train"):
        results["train"] = train_trials(args.trials, work, rng)
    for name, (ok, failures) in results.items():
        print(f"{name}: {ok} of {args.trials} trials passed")
        for f in failures:
            print("  FAIL", f)
    print(f"{sum(ok for ok, _ in results.values())} passed, {sum(len(f) for _, f in results.values())} failed")


if __name__ == "__main__":
    main()
