"""Interrupted inference resumes to byte-identical outputs; SIGKILL included."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, shared_file
from geoseg.classes import ClassSchema
from geoseg.errors import UsageError
from geoseg.io.atomic import TMP_MARKER
from geoseg.models.meta import ModelMeta
from geoseg.pipeline import predict_raster


class ConvModel:
    """A neighbourhood (not pointwise) function, so blending really matters; fails after `fail_after` batches."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.meta = ModelMeta("unet", {"depth": 2}, ["a", "b", "c"], [0, 0, 0], [1, 1, 1],
                              ClassSchema.default(3), 32, 8)
        self.fail_after = fail_after
        self.batches = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches += 1
        if self.fail_after is not None and self.batches > self.fail_after:
            raise KeyboardInterrupt
        z = batch + np.roll(batch, 1, axis=2) * 0.5 + np.roll(batch, -1, axis=3) * 0.25
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def raster(make_raster):
    rng = np.random.default_rng(3)
    return make_raster(rng.normal(size=(3, 150, 130)).astype(np.float32))


def run(raster, out: Path, model, **kw):
    return predict_raster(raster, model, out / "c.tif", probabilities=out / "p.tif", tile_size=32, overlap=8,
                          batch_size=3, checkpoint_seconds=0, **kw)


@pytest.mark.parametrize("fail_after", [1, 4, 7, 10])
@pytest.mark.parametrize("strip", [8192, 64])
def test_resume_after_interrupt_is_identical(raster, tmp_path, fail_after, strip):
    ref, part = tmp_path / "ref", tmp_path / "part"
    ref.mkdir(), part.mkdir()
    run(raster, ref, ConvModel(), max_strip_width=strip)
    with pytest.raises(KeyboardInterrupt):
        run(raster, part, ConvModel(fail_after), max_strip_width=strip)
    assert not (part / "c.tif").exists()  # nothing at the destination
    assert list(part.glob(".*geoseg-tmp*"))  # staging kept for resuming
    # what a SIGKILL during the COG step leaves: an unfinished COG and GDAL's overview temp file
    (part / ".c.geoseg-tmp-deadbeef.tif").write_bytes(b"partial")
    (part / ".c.geoseg-tmp-deadbeef.tif.ovr.tmp").write_bytes(b"partial")
    (part / ".p.geoseg-tmp-deadbeef.vrt").write_bytes(b"<VRTDataset/>")  # the COG step's mask VRT
    model = ConvModel()
    rep = run(raster, part, model, max_strip_width=strip, resume=True)
    assert rep.resumed_from is not None
    full = ConvModel()
    run(raster, tmp_path / "ref", full, max_strip_width=strip, overwrite=True)
    assert model.batches <= full.batches
    if fail_after >= 7:
        assert rep.resumed_from != (0, 0)  # rows were recorded before the interrupt
        assert model.batches < full.batches, rep.resumed_from  # finished rows were not recomputed
        # the speed counts the pixels this run processed, not those the first run wrote
        assert 0 < rep.pixels_processed < rep.width * rep.height
        assert rep.megapixels_per_second == pytest.approx(rep.pixels_processed / 1e6 / rep.seconds)
    for name in ("c.tif", "p.tif"):
        assert (part / name).read_bytes() == (ref / name).read_bytes()
    assert not list(part.glob(".*geoseg-tmp*"))


def test_resume_refuses_other_options_and_starts_over_when_there_is_nothing(raster, tmp_path):
    from geoseg.errors import ResumeWarning

    # nothing to resume: the run starts from the beginning and says so (issue 21; it was an error)
    with pytest.warns(ResumeWarning, match="nothing to resume here; started from the beginning"):
        rep = run(raster, tmp_path, ConvModel(), resume=True)
    assert rep.resumed_from is None and (tmp_path / "c.tif").exists()
    for name in ("c.tif", "p.tif"):
        (tmp_path / name).unlink()
    with pytest.raises(KeyboardInterrupt):
        run(raster, tmp_path, ConvModel(3))
    with pytest.raises(UsageError, match="different overlap"):
        predict_raster(raster, ConvModel(), tmp_path / "c.tif", probabilities=tmp_path / "p.tif", tile_size=32,
                       overlap=16, resume=True)
    # an output the interrupted run did not write (no probabilities): named too ("nothing to resume here" before)
    with pytest.raises(UsageError, match="used a different probabilities; rerun"):
        predict_raster(raster, ConvModel(), tmp_path / "c.tif", probabilities=None, resume=True)
    # without --resume a new run starts over and cleans up
    run(raster, tmp_path, ConvModel())
    assert not list(tmp_path.glob(".*geoseg-tmp*"))


def _infer_cmd(src: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "geoseg", "infer", str(src), "-m", str(model), "-o", str(out), "-q",
            "--tile-size", "64", "--overlap", "16", "--batch-size", "1", "--checkpoint-seconds", "0",
            "--device", "cpu", *(["--no-vector"] if _has_vector_opts() else []), *extra]


def _has_vector_opts() -> bool:
    return "--no-vector" in (ROOT / "geoseg" / "cli" / "infer.py").read_text()


@pytest.mark.parametrize("trial", range(2))
def test_sigkill_then_resume_is_identical(tmp_path, trial):
    """Kill `geoseg infer` with SIGKILL at a random point, resume, compare with an uninterrupted run."""
    from geoseg.models.init import init_checkpoint

    src = shared_file("ftw_baselines/inference-img.tif")
    model = tmp_path / "m.pt"
    init_checkpoint(model, bands=8, classes=3, base_channels=4, depth=2, tile_size=64, overlap=16,
                    mean=[1500.0] * 8, std=[1000.0] * 8)
    ref, part = tmp_path / "ref", tmp_path / "part"
    ref.mkdir(), part.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(_infer_cmd(src, model, ref), cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    p = subprocess.Popen(_infer_cmd(src, model, part), cwd=ROOT, env=env, stderr=subprocess.PIPE)
    state = part / ".inference-img_classes.tif.geoseg-tmp-state.json"
    deadline = time.time() + 120
    while not state.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(trial).uniform(0.0, 0.8))
    p.send_signal(signal.SIGKILL)
    p.wait()
    if p.returncode == 0:
        pytest.skip("run finished before the kill")
    final = part / "inference-img_classes.tif"
    if final.exists():  # killed after the outputs were renamed into place: they must be complete
        assert final.read_bytes() == (ref / "inference-img_classes.tif").read_bytes()
        return
    r = subprocess.run(_infer_cmd(src, model, part, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (part / "inference-img_classes.tif").read_bytes() == (ref / "inference-img_classes.tif").read_bytes()
    assert not list(part.glob(".*geoseg-tmp*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_sigterm_stop_cleanly_then_resume(tmp_path, sig):
    from geoseg.models.init import init_checkpoint

    src = shared_file("ftw_baselines/inference-img.tif")
    model = tmp_path / "m.pt"
    init_checkpoint(model, bands=8, classes=3, base_channels=4, depth=2, tile_size=64, overlap=16,
                    mean=[1500.0] * 8, std=[1000.0] * 8)
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen(_infer_cmd(src, model, out), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    state = out / ".inference-img_classes.tif.geoseg-tmp-state.json"
    deadline = time.time() + 120
    while not state.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("run finished before the signal")
    assert p.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "--resume" in lines[0] and "Traceback" not in err
    assert not (out / "inference-img_classes.tif").exists()
    r = subprocess.run(_infer_cmd(src, model, out, "--resume"), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "inference-img_classes.tif").exists() and not list(out.glob(".*geoseg-tmp*"))


def test_train_sigkill_leaves_loadable_checkpoints_and_resumes(tmp_path):
    """Kill `geoseg train` with SIGKILL mid-run: every checkpoint present loads, and --resume finishes."""
    from geoseg.models import load_checkpoint

    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "geoseg", "train", "--image", str(ROOT / "sample_data" / "field.tif"),
           "--vector-labels", str(ROOT / "sample_data" / "field_training_polygons.gpkg"), "--class-field", "class",
           "-o", str(out), "--epochs", "3", "--samples-per-epoch", "8", "--batch-size", "4", "--tile-size", "32",
           "--arch", "unet", "--base-channels", "4", "--depth", "2", "--seed", "0", "-q", "--device", "cpu"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "m.last.pt"
    deadline = time.time() + 180
    while not last.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 1.0))
    p.send_signal(signal.SIGKILL)
    p.wait()
    for ck in tmp_path.glob("*.pt"):
        if TMP_MARKER not in ck.name:  # a kill mid-save leaves its hidden temporary file behind
            load_checkpoint(ck)  # never a truncated file under a final name
    if p.returncode == 0:
        pytest.skip("training finished before the kill")
    r = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    model, meta = load_checkpoint(out)
    assert meta.schema.names == ["cleared", "fallen_dry", "forest", "water"]
    assert (tmp_path / "m.metrics.csv").exists()


@pytest.mark.parametrize("command", ["train", "vectorize"])
def test_sigterm_stops_train_and_vectorize_with_one_line(tmp_path, command):
    if command == "train":
        args = ["train", "--image", str(ROOT / "sample_data" / "field.tif"), "--vector-labels",
                str(ROOT / "sample_data" / "field_training_polygons.gpkg"), "--class-field", "class",
                "-o", str(tmp_path / "m.pt"), "--epochs", "50", "--tile-size", "32", "--arch", "unet",
                "--base-channels", "4", "--depth", "2", "-q", "--device", "cpu"]
        started = tmp_path / "m.last.pt"
    else:
        args = ["vectorize", str(shared_file("usda_cdl_kansas/2021_30m_cdls.tif")), "-o", str(tmp_path / "v.gpkg"),
                "--band-rows", "4", "--workers", "1", "-q"]
        started = None
    p = subprocess.Popen([sys.executable, "-m", "geoseg", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline and (started is None or not started.exists()):
        time.sleep(0.05)
        if started is None and time.time() > deadline - 117:
            break
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0 or " polygons (" in err:  # done (its summary printed) before the signal came
        pytest.skip("finished before the signal")
    assert p.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err
    if command == "train":
        assert "--resume" in lines[0]
        from geoseg.models import load_checkpoint

        load_checkpoint(tmp_path / "m.last.pt")
    else:
        assert not (tmp_path / "v.gpkg").exists()
    assert not [q for q in tmp_path.iterdir() if "geoseg-tmp" in q.name]


def test_resume_after_a_kill_before_the_first_checkpoint(raster, tmp_path):
    """SIGKILL-like death (os._exit at the first batch, no cleanup) before any periodic checkpoint:
    --resume continues from the start and gives the uninterrupted bytes (issue 21: "no interrupted run")."""
    ref, part = tmp_path / "ref", tmp_path / "part"
    ref.mkdir()
    part.mkdir()
    run(raster, ref, ConvModel())
    child = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_resume as T
class Dies(T.ConvModel):
    def predict(self, batch):
        os._exit(9)
Dies.__qualname__ = "ConvModel"  # the resume key records the predictor's type and metadata
from geoseg.pipeline import predict_raster
predict_raster({str(raster)!r}, Dies(), {str(part / 'c.tif')!r}, probabilities={str(part / 'p.tif')!r},
               tile_size=32, overlap=8, batch_size=3, checkpoint_seconds=3600)
"""
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr[-800:]
    assert list(part.glob(".*geoseg-tmp-state.json"))  # the state exists from the first moment
    rep = run(raster, part, ConvModel(), resume=True)
    assert rep.resumed_from == (0, 0)
    for name in ("c.tif", "p.tif"):
        assert (part / name).read_bytes() == (ref / name).read_bytes()


def test_resume_on_a_damaged_staging_file_says_so(raster, tmp_path):
    """It said "write failed (disk full?)" halfway through (issue 21)."""
    with pytest.raises(KeyboardInterrupt):
        run(raster, tmp_path, ConvModel(4))
    staging = next(tmp_path.glob(".c.tif*partial.tif"))
    with open(staging, "r+b") as f:
        f.truncate(staging.stat().st_size // 3)
    with pytest.raises(UsageError, match=r"staging file .* is damaged \(truncated or overwritten\); run without "
                                         r"`resume` to start over"):
        run(raster, tmp_path, ConvModel(), resume=True)
    run(raster, tmp_path, ConvModel())  # without --resume: starts over
    assert not list(tmp_path.glob(".*geoseg-tmp*"))
