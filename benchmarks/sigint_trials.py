"""Interrupt `geoseg infer` (SIGINT) or `geoseg vectorize` at random moments and count what goes wrong.

Not a test (it takes minutes); tests/test_resume.py runs a few timings of the same checks. Usage:

    python benchmarks/sigint_trials.py infer --trials 30
    python benchmarks/sigint_trials.py vectorize --trials 30 --workers 1
    GEOSEG_ROOT=/other/checkout python benchmarks/sigint_trials.py infer   # that checkout's geoseg

Every trial must exit 130 with one line that says how to rerun, no traceback, nothing at the
destination; a crash (a negative exit status such as -11, SIGSEGV) is counted with the
faulthandler's stack of the crashing thread. For vectorize the delay between the signal and the
exit is measured too (it must stay within a second or two).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(os.environ.get("GEOSEG_ROOT", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(ROOT))
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SRC = SHARED / "ftw_baselines" / "inference-img.tif"
CDL = SHARED / "usda_cdl_kansas"
ENV = {**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONPATH": str(ROOT)}


def _trial(cmd: list[str], started: Path | None, delay: float, again: float | None) -> tuple[int, float, str]:
    p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while started is not None and not started.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    t = time.perf_counter()
    p.send_signal(signal.SIGINT)
    if again is not None:  # a second Ctrl-C (impatient users press it twice) lands in the cleanup
        time.sleep(again)
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        return -999, time.perf_counter() - t, "hung over 60 s\n" + err
    return p.returncode, time.perf_counter() - t, err


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["infer", "vectorize"])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--min-delay", type=float, default=0.0)
    ap.add_argument("--max-delay", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--twice", action="store_true", help="a second SIGINT 0-0.5 s after the first")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    crashes, bad, finished, delays = [], [], 0, []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if a.command == "infer":
            from geoseg.models.init import init_checkpoint

            model = work / "m.pt"
            init_checkpoint(model, bands=8, classes=3, base_channels=4, depth=2, tile_size=64, overlap=16,
                            mean=[1500.0] * 8, std=[1000.0] * 8)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from _mirror import mirror_tile

            src = mirror_tile(CDL / "2021_30m_cdls.tif", work / "big.tif", 6144, 6144)  # as tests/test_cli_vectorize
        for i in range(a.trials):
            out = work / f"out{i}"
            out.mkdir()
            if a.command == "infer":
                cmd = [sys.executable, "-m", "geoseg", "infer", str(SRC), "-m", str(model), "-o", str(out), "-q",
                       "--tile-size", "64", "--overlap", "16", "--batch-size", "1", "--checkpoint-seconds", "0",
                       "--device", "cpu", "--no-vector"]
                started: Path | None = out / ".inference-img_classes.tif.geoseg-tmp-state.json"
                delay = rng.uniform(a.min_delay, a.max_delay)
            else:
                cmd = [sys.executable, "-m", "geoseg", "vectorize", str(src), "-o", str(out / "p.gpkg"), "-q",
                       "--workers", str(a.workers)]
                started = None
                delay = rng.uniform(a.min_delay, a.max_delay)
            again = rng.uniform(0.0, 0.5) if a.twice else None
            rc, waited, err = _trial(cmd, started, delay, again)
            left = [p.name for p in out.iterdir()]
            if rc == 0:
                finished += 1
            elif rc < 0 or rc == -999:
                crashes.append((i, rc, err[-3000:]))
            else:
                delays.append(waited)
                lines = [ln for ln in err.splitlines() if ln.strip()]
                if rc != 130 or len(lines) != 1 or "Traceback" in err or (a.command == "vectorize" and left):
                    bad.append((i, rc, left, err[-1500:]))
            print(f"trial {i}: delay {delay:.2f} s, exit {rc}, stopped after {waited:.2f} s, left {left}", flush=True)
    print(f"\n{a.trials} trials: {len(crashes)} crashed, {len(bad)} unclean, {finished} finished before the signal")
    if delays:
        print(f"signal to exit: median {statistics.median(delays):.2f} s, max {max(delays):.2f} s")
    for i, rc, err in crashes:
        print(f"--- trial {i} exit {rc}\n{err}")
    for i, rc, left, err in bad:
        print(f"--- trial {i} exit {rc} left {left}\n{err}")


if __name__ == "__main__":
    main()
