"""Many inputs, and a real Dask cluster: a ``dask scheduler`` and ``dask worker`` processes on
127.0.0.1 (random ports), started and stopped here. Outputs must equal the sequential run's,
byte for byte (polygons: the same geometries and attributes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import ROOT, SAMPLE
from geoseg.models.demo import DEMO_MODEL

pytest.importorskip("distributed")

#: every wait in this module ends within this many seconds
WAIT_S = 60


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", GEOSEG_DEBUG="")
    return env


def _cli(*args: object, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=timeout)


class Cluster:
    """A scheduler and worker processes, each a real ``dask`` command line."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.workers: list[subprocess.Popen[bytes]] = []
        sched_file = d / "scheduler.json"
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
            env=_env(), stdout=subprocess.DEVNULL, stderr=open(d / "scheduler.log", "wb"))
        deadline = time.monotonic() + WAIT_S
        while not sched_file.exists() or not sched_file.read_text().strip():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                self.close()
                raise RuntimeError("the dask scheduler did not start: " + (d / "scheduler.log").read_text()[-500:])
            time.sleep(0.1)
        self.address = json.loads(sched_file.read_text())["address"]

    def add_worker(self, wrap: list[str] | None = None) -> subprocess.Popen[bytes]:
        """A ``dask worker`` (no nanny: a SIGKILL removes it) with one thread."""
        n = len(self.workers)
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1", "--no-nanny",
               "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{n}"]
        if wrap:  # the last item of ``wrap`` is a shell command line that ends with the worker's
            cmd = [*wrap[:-1], wrap[-1] + " " + " ".join(cmd)]
        p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=open(self.d / f"worker{n}.log", "wb"))
        self.workers.append(p)
        return p

    def wait_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=WAIT_S) as c:
            c.wait_for_workers(n, timeout=WAIT_S)

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        c.add_worker()
        c.add_worker()
        c.wait_workers(2)
        yield c
    finally:
        c.close()


def _small_rasters(d: Path, n: int = 6) -> list[Path]:
    """``n`` small 7-band rasters cut from the sample field image, two of them sharing a stem."""
    with rasterio.open(SAMPLE / "field.tif") as src:
        data, profile = src.read(), src.profile
    out = []
    for i in range(n):
        sub = d / ("a" if i < n - 1 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        name = f"r{i}.tif" if i < n - 1 else "r0.tif"  # b/r0.tif clashes with a/r0.tif
        h, w = 90 + 7 * i, 110 - 5 * i
        p = sub / name
        prof = dict(profile, height=h, width=w, transform=from_origin(500000 + 100 * i, 5300000, 10, 10))
        with rasterio.open(p, "w", **prof) as o:
            o.write(data[:, 10 * i:10 * i + h, 5 * i:5 * i + w])
        out.append(p)
    return out


def _large_raster(d: Path) -> Path:
    """A 7-band raster of 232 x 260 pixels: four blocks of rows at 64-pixel tiles and 48-row blocks."""
    with rasterio.open(SAMPLE / "field.tif") as src:
        data, profile = src.read(), src.profile
    p = d / "large.tif"
    with rasterio.open(p, "w", **dict(profile, height=232, width=260)) as o:
        o.write(data[:, :232, :260])
    return p


def _same_polygons(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> None:
    import pyogrio

    ga, gb = pyogrio.read_dataframe(a, layer=0), pyogrio.read_dataframe(b, layer=0)  # not layer_styles
    ga, gb = ga.drop(columns=[c for c in ignore if c in ga]), gb.drop(columns=[c for c in ignore if c in gb])
    assert len(ga) == len(gb) > 0
    ga, gb = ga.sort_values(list(ga.columns.drop("geometry"))), gb.sort_values(list(gb.columns.drop("geometry")))
    assert list(ga.geometry.to_wkb()) == list(gb.geometry.to_wkb())
    assert ga.drop(columns="geometry").reset_index(drop=True).equals(gb.drop(columns="geometry").reset_index(drop=True))


def _outputs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# --- many inputs, one after another (no cluster) ---

def test_many_inputs_sequential_with_a_failure(tmp_path: Path) -> None:
    ins = _small_rasters(tmp_path / "in", 3)
    bad = tmp_path / "in" / "a" / "broken.tif"
    bad.write_text("not a raster")
    lst = tmp_path / "list.txt"
    lst.write_text("# inputs\nin/a\n\nin/b/r0.tif\n")
    r = _cli("infer", f"@{lst}", "-o", tmp_path / "out", "-q", "--no-vector")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "broken.tif" in r.stderr and "3 of 4 inputs done, 1 failed" in r.stderr
    # a/r0.tif and b/r0.tif share a stem: their outputs take their folders' names
    assert [n for n in _outputs(tmp_path / "out") if n.endswith(".tif")] == ["a_r0_classes.tif", "b_r0_classes.tif",
                                                                             "r1_classes.tif"]
    # the same input alone writes the same bytes
    r1 = _cli("infer", ins[1], "-o", tmp_path / "one", "-q", "--no-vector")
    assert r1.returncode == 0, r1.stderr
    assert (tmp_path / "one" / "r1_classes.tif").read_bytes() == (tmp_path / "out" / "r1_classes.tif").read_bytes()
    # --resume skips the complete inputs; without it nothing is overwritten
    r2 = _cli("infer", tmp_path / "in" / "a" / "r*.tif", "-o", tmp_path / "out", "-q", "--no-vector", "--resume")
    assert r2.returncode == 0 and "already complete" in r2.stderr, r2.stderr
    r3 = _cli("infer", tmp_path / "in" / "a" / "r1.tif", tmp_path / "in" / "b", "-o", tmp_path / "out", "-q",
              "--no-vector")
    assert r3.returncode != 0 and "--overwrite" in r3.stderr


def test_vectorize_many_inputs(tmp_path: Path) -> None:
    cls = tmp_path / "cls"
    cls.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a_r0_classes.tif", "b_r0_classes.tif"):
        labels = np.kron(rng.integers(0, 4, (12, 10)), np.ones((8, 8))).astype("uint8")
        with rasterio.open(cls / name, "w", driver="GTiff", height=96, width=80, count=1, dtype="uint8",
                           crs="EPSG:32633", transform=from_origin(500000, 5300000, 10, 10), nodata=255) as o:
            o.write(labels, 1)
    r = _cli("vectorize", cls, "-o", tmp_path / "poly", "-q")
    assert r.returncode == 0, r.stderr
    assert _outputs(tmp_path / "poly") == ["a_r0_classes.gpkg", "b_r0_classes.gpkg"]
    one = _cli("vectorize", cls / "b_r0_classes.tif", "-o", tmp_path / "one.gpkg", "-q")
    assert one.returncode == 0, one.stderr
    _same_polygons(tmp_path / "one.gpkg", tmp_path / "poly" / "b_r0_classes.gpkg")


# --- on a real cluster ---

def test_six_rasters_on_the_cluster_equal_sequential(tmp_path: Path, cluster: Cluster) -> None:
    _small_rasters(tmp_path / "in")
    # the workers' one thread: on CPUs where oneDNN's kernels depend on the thread count (AVX-512), a run on
    # every core differs from them in the model's last float bits, here one probability of one pixel by 1
    seq = _cli("infer", tmp_path / "in" / "a", tmp_path / "in" / "b", "-o", tmp_path / "seq", "-q", "--probabilities",
               "--threads", "1")
    assert seq.returncode == 0, seq.stderr
    r = _cli("infer", tmp_path / "in" / "a", tmp_path / "in" / "b", "-o", tmp_path / "dask", "-q", "--probabilities",
             "--scheduler", cluster.address)
    assert r.returncode == 0, r.stderr
    assert "dashboard http://" in r.stderr
    assert _outputs(tmp_path / "seq") == _outputs(tmp_path / "dask")
    tifs = [n for n in _outputs(tmp_path / "seq") if n.endswith(".tif")]
    assert len(tifs) == 12
    for n in _outputs(tmp_path / "seq"):  # styles and GDAL's .aux.xml beside them too
        if not n.endswith((".tif", ".gpkg")):
            assert (tmp_path / "seq" / n).read_bytes() == (tmp_path / "dask" / n).read_bytes(), n
    for n in tifs:
        assert (tmp_path / "seq" / n).read_bytes() == (tmp_path / "dask" / n).read_bytes(), n
    for n in _outputs(tmp_path / "seq"):
        if n.endswith(".gpkg"):
            _same_polygons(tmp_path / "seq" / n, tmp_path / "dask" / n)
    # each worker loaded the model once, whatever the number of its tasks
    from distributed import Client

    from geoseg.predict import load

    with Client(cluster.address, timeout=WAIT_S) as c:
        loads = c.run(lambda: load.LOADS)
    assert loads and all(n <= 1 for n in loads.values()), loads
    # vectorize of several inputs on the cluster: the same polygons as one by one
    pv = _cli("vectorize", *[tmp_path / "seq" / n for n in tifs if "classes" in n][:3], "-o", tmp_path / "vec",
              "-q", "--scheduler", cluster.address)
    assert pv.returncode == 0, pv.stderr
    # (infer's polygons also have the mean confidence: it had the probabilities)
    _same_polygons(tmp_path / "vec" / "a_r0_classes.gpkg", tmp_path / "seq" / "a_r0_polygons.gpkg",
                   ignore=("confidence_mean",))


def test_one_raster_in_four_blocks_equals_one_run(tmp_path: Path, cluster: Cluster) -> None:
    from geoseg.distributed.jobs import block_rows_for
    from geoseg.models.meta import peek_meta
    from geoseg.pipeline.plan import block_bounds, tile_grid

    src = _large_raster(tmp_path)
    grid = tile_grid(232, 260, peek_meta(DEMO_MODEL), 64, 16)  # as the run makes it
    assert block_bounds(grid, block_rows_for(260, 48)) == [(0, 48), (48, 96), (96, 144), (144, 232)]
    opts = ["--tile-size", "64", "--overlap", "16", "--probabilities", "-q"]
    seq = _cli("infer", src, "-o", tmp_path / "seq", *opts, "--threads", "1")  # the workers' threads
    assert seq.returncode == 0, seq.stderr
    r = _cli("infer", src, "-o", tmp_path / "dask", *opts, "--scheduler", cluster.address, "--block-rows", "48")
    assert r.returncode == 0, r.stderr
    assert _outputs(tmp_path / "dask") == _outputs(tmp_path / "seq")
    assert {"large_classes.tif", "large_polygons.gpkg", "large_probabilities.tif"} <= set(_outputs(tmp_path / "dask"))
    for n in ("large_classes.tif", "large_probabilities.tif"):
        assert (tmp_path / "seq" / n).read_bytes() == (tmp_path / "dask" / n).read_bytes(), n
    _same_polygons(tmp_path / "seq" / "large_polygons.gpkg", tmp_path / "dask" / "large_polygons.gpkg")
    # vectorize alone, its bands polygonized by the workers
    v = _cli("vectorize", tmp_path / "seq" / "large_classes.tif", "-o", tmp_path / "v.gpkg", "--band-rows", "37",
             "-q", "--scheduler", cluster.address)
    assert v.returncode == 0, v.stderr
    one = _cli("vectorize", tmp_path / "seq" / "large_classes.tif", "-o", tmp_path / "one.gpkg", "--band-rows", "37",
               "-q")
    assert one.returncode == 0, one.stderr
    _same_polygons(tmp_path / "one.gpkg", tmp_path / "v.gpkg")


def test_a_remote_raster_in_blocks_equals_one_run(tmp_path: Path, cluster: Cluster) -> None:
    """A URL or /vsi input split into blocks failed the whole run: its resume key hashed the path as a local file
    (pathlib folds 'http://' to 'http:/'): "unexpected FileNotFoundError"."""
    import zipfile

    src = _large_raster(tmp_path)
    with zipfile.ZipFile(tmp_path / "large.zip", "w") as z:
        z.write(src, "large.tif")
    opts = ["--tile-size", "64", "--overlap", "16", "--no-vector", "-q"]
    seq = _cli("infer", src, "-o", tmp_path / "seq", *opts, "--threads", "1")
    assert seq.returncode == 0, seq.stderr
    args = ["infer", f"/vsizip/{tmp_path / 'large.zip'}/large.tif", "--classes-out", tmp_path / "dask" / "c.tif",
            *opts, "--scheduler", cluster.address, "--block-rows", "48"]
    r = _cli(*args)  # its folder does not exist: one line, as without a cluster ("unexpected FileNotFoundError")
    assert r.returncode == 1 and "dask: output directory does not exist; create it first" in r.stderr, r.stderr
    (tmp_path / "dask").mkdir()
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dask" / "c.tif").read_bytes() == (tmp_path / "seq" / "large_classes.tif").read_bytes()


def test_an_interrupted_client_stops_the_tasks_it_started(tmp_path: Path, cluster: Cluster) -> None:
    """SIGTERM (or Ctrl-C) while an external cluster works: the command said "partial outputs were removed", the
    worker ran its task to the end and published the outputs after the command had exited, and an immediate
    --resume was refused ("another geoseg run is writing this output now")."""
    import signal

    import numpy as np

    with rasterio.open(SAMPLE / "field.tif") as src:
        data, profile = src.read(), src.profile
    big = tmp_path / "big.tif"
    with rasterio.open(big, "w", **dict(profile, height=1240, width=1160)) as o:
        o.write(np.tile(data, (1, 4, 4))[:, :1240, :1160])
    out = tmp_path / "out"
    args = ["infer", big, "-o", out, "--tile-size", "32", "--overlap", "8", "--batch-size", "1", "--no-vector", "-q",
            "--scheduler", cluster.address]
    proc = subprocess.Popen([sys.executable, "-m", "geoseg", *map(str, args)], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WAIT_S
    while not list(out.glob(".big_classes.tif.geoseg-tmp-partial*")):  # the task has started writing
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130 and "the cluster's tasks stop within seconds" in err and "--resume" in err, err
    time.sleep(3)  # the worker sees the stop at its next batch: nothing is published after the command exited
    assert not (out / "big_classes.tif").exists()
    assert list(out.glob(".big_classes.geoseg-tmp-stop-*"))  # the flag the task stopped at
    r = _cli("infer", *args[1:], "--resume")
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".*geoseg-tmp*"))  # the flag went with the run's other temporary files
    seq = _cli("infer", big, "-o", tmp_path / "seq", *args[4:-2], "--threads", "1")
    assert seq.returncode == 0, seq.stderr
    assert (out / "big_classes.tif").read_bytes() == (tmp_path / "seq" / "big_classes.tif").read_bytes()


def test_a_worker_killed_mid_run_changes_nothing(tmp_path: Path, cluster: Cluster) -> None:
    from distributed import Client

    _small_rasters(tmp_path / "in")
    big = _large_raster(tmp_path / "in")
    opts = ["--tile-size", "64", "--overlap", "16", "-q", "--no-vector", "--probabilities"]
    seq = _cli("infer", tmp_path / "in" / "a", tmp_path / "in" / "b", big, "-o", tmp_path / "seq", *opts,
               "--threads", "1")  # the workers' threads
    assert seq.returncode == 0, seq.stderr
    victim = cluster.add_worker()
    cluster.wait_workers(3)
    job = subprocess.Popen([sys.executable, "-m", "geoseg", "infer", str(tmp_path / "in" / "a"),
                            str(tmp_path / "in" / "b"), str(big), "-o",
                            str(tmp_path / "dask"), *opts, "--scheduler", cluster.address, "--block-rows", "48"],
                           env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = False
    try:
        with Client(cluster.address, timeout=WAIT_S) as c:
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and job.poll() is None:
                busy = {a for a, ks in c.processing().items() if ks}
                mine = [a for a, w in c.scheduler_info()["workers"].items() if w.get("name") == "w2"]
                if mine and mine[0] in busy:
                    os.kill(victim.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.05)
        out, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
    assert killed, "the extra worker never got a task"
    assert job.returncode == 0, err
    assert _outputs(tmp_path / "seq") == _outputs(tmp_path / "dask")  # no partial file under a final name
    for n in _outputs(tmp_path / "seq"):
        assert (tmp_path / "seq" / n).read_bytes() == (tmp_path / "dask" / n).read_bytes(), n


def test_resume_runs_only_the_missing_blocks(tmp_path: Path, cluster: Cluster) -> None:
    from distributed import Client

    src = _large_raster(tmp_path)
    opts = ["--tile-size", "64", "--overlap", "16", "--probabilities", "--no-vector", "-q", "--block-rows", "48"]
    seq = _cli("infer", src, "-o", tmp_path / "seq", *opts[:-2], "--threads", "1")
    assert seq.returncode == 0, seq.stderr
    blocks = tmp_path / "dask" / ".large_classes.tif.geoseg-tmp-blocks"
    job = subprocess.Popen([sys.executable, "-m", "geoseg", "infer", str(src), "-o", str(tmp_path / "dask"), *opts,
                            "--scheduler", cluster.address], env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:  # the client dies once a block is complete
        deadline = time.monotonic() + WAIT_S
        while not list(blocks.glob("probabilities-rows-*.tif")) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
        os.kill(job.pid, signal.SIGKILL)
    finally:
        job.wait(timeout=WAIT_S)
    with Client(cluster.address, timeout=WAIT_S) as c:  # the tasks already running finish; wait for them
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and (any(c.processing().values()) or any(
                c.run(lambda dask_worker: dask_worker.state.executing_count).values())):
            time.sleep(0.1)
    done = len([p for p in blocks.glob("classes-rows-*.tif")
                if (blocks / p.name.replace("classes", "probabilities")).exists()])
    assert 1 <= done and not (tmp_path / "dask" / "large_classes.tif").exists()
    listing = sorted(p.name for p in blocks.iterdir())
    r = _cli("infer", src, "-o", tmp_path / "dask", *opts, "--scheduler", cluster.address, "--resume")
    assert r.returncode == 0, r.stderr
    ran = 4 - done if done < 4 else 1  # one block always runs (it carries the outputs' creation arguments)
    assert f"{ran} task{'s' if ran != 1 else ''} ran on the cluster" in r.stderr, (r.stderr, listing)
    for n in ("large_classes.tif", "large_probabilities.tif"):
        assert (tmp_path / "seq" / n).read_bytes() == (tmp_path / "dask" / n).read_bytes(), n
    assert not blocks.exists()


def test_a_worker_that_cannot_see_the_output_is_named(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs unshare -m (a private mount namespace) to give a worker another file system")
    out = tmp_path / "out"
    out.mkdir()
    src = _small_rasters(tmp_path / "in", 1)[0]
    c = Cluster(tmp_path)
    try:
        c.add_worker()
        # this worker sees an empty tmpfs at `out`: another storage under the same path
        c.add_worker(wrap=["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f"mount -t tmpfs none {out} && exec"])
        c.wait_workers(2)
        r = _cli("infer", src, "-o", out, "-q", "--scheduler", c.address)
    finally:
        c.close()
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("Dask:")]
    assert len(lines) == 1 and lines[0].startswith("error: worker tcp://127.0.0.1:"), r.stderr
    assert f"cannot see the output folder {out}" in lines[0]
    assert "Traceback" not in r.stderr
    assert _outputs(out) == []


def test_local_cluster_workers_run_without_the_sampling_profiler_or_a_malloc_threshold(monkeypatch) -> None:
    """`--workers N` starts workers without Dask's statistical profiler (it samples every thread's stack
    every 10 ms and made the one-thread workers ~15-20% slower than the in-process run, issue 16) and
    without Dask's MALLOC_TRIM_THRESHOLD_ (it turns glibc's adaptive mmap threshold off: ~15% slower), and
    with one malloc arena (a task's thread arena unmapped its heaps whenever they emptied: ~15% slower)."""
    from geoseg.distributed.cluster import client_for

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with client_for(None, 1) as client:
        client.wait_for_workers(1, timeout=120)
        sampling = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
        env = client.run(lambda: {k: __import__("os").environ.get(k)
                                  for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")})
    assert list(sampling.values()) == [False]
    assert list(env.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "MALLOC_ARENA_MAX": "1"}]


@pytest.mark.parametrize("address", ["http://127.0.0.1:8787", "notaurl"])
def test_what_is_not_a_scheduler_address_is_one_line_at_once(tmp_path: Path, address: str) -> None:
    """The dashboard's http:// URL or a typo: "unexpected ValueError", a traceback from Client.__del__, and a
    60 s wait for a client that never was."""
    import time

    t = time.perf_counter()
    r = _cli("infer", ROOT / "sample_data" / "field.tif", "-o", tmp_path / "o", "--scheduler", address, "-q")
    assert r.returncode == 2 and time.perf_counter() - t < 30
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a Dask scheduler address" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()
