"""The infer and model commands: outputs, one-line errors, nothing left at destinations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import ROOT, shared_file
from geoseg.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def model8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 8-band, 3-class checkpoint normalised for the FTW Sentinel-2 scene."""
    p = tmp_path_factory.mktemp("m") / "m.pt"
    src = shared_file("ftw_baselines/inference-img.tif")
    main(["model", "init", "--bands", "8", "--classes", "3", "--class-names", "background,field,boundary",
          "--base-channels", "8", "--depth", "2", "--tile-size", "128", "--overlap", "32",
          "--stats-from", str(src), "-o", str(p)])
    assert p.exists()
    return p


def leftovers(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if "geoseg-tmp" in p.name]


def test_infer_writes_outputs(tmp_path, capsys, model8):
    src = shared_file("ftw_baselines/inference-img.tif")
    code, out, err = run_cli(["infer", src, "-m", model8, "-o", tmp_path, "--probabilities", "--tta", "flips",
                              "--no-vector", "-q"] if _has_vector_opts() else
                             ["infer", src, "-m", model8, "-o", tmp_path, "--probabilities", "--tta", "flips", "-q"],
                             capsys)
    assert code == 0, err
    cls = tmp_path / "inference-img_classes.tif"
    prob = tmp_path / "inference-img_probabilities.tif"
    assert cls.exists() and prob.exists()
    with rasterio.open(cls) as c, rasterio.open(src) as s:
        assert c.crs == s.crs and c.transform == s.transform
        assert set(np.unique(c.read(1))) <= {0, 1, 2}
    assert not leftovers(tmp_path)
    # existing outputs are not replaced without --overwrite
    before = cls.stat().st_mtime_ns
    code, out, err = run_cli(["infer", src, "-m", model8, "-o", tmp_path, "-q"], capsys)
    assert code == 1 and "--overwrite" in err and "Traceback" not in err
    assert cls.stat().st_mtime_ns == before
    code, out, err = run_cli(["infer", src, "-m", model8, "-o", tmp_path, "-q", "--overwrite", "--no-vector"]
                             if _has_vector_opts() else ["infer", src, "-m", model8, "-o", tmp_path, "-q",
                                                         "--overwrite"], capsys)
    assert code == 0, err


def _has_vector_opts() -> bool:
    return "--no-vector" in (ROOT / "geoseg" / "cli" / "infer.py").read_text()


def _crafted_pickle(path: Path, marker: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self):  # noqa: D105
            return (os.system, (f"touch {marker}",))

    torch.save({"geoseg_meta": "{}", "state_dict": {}, "x": Evil()}, path)


@pytest.mark.parametrize("case", ["missing", "text", "empty", "bands", "trunc_model", "pickle", "arch",
                                  "outdir", "readonly_dir", "tile", "model_missing", "onnx_missing", "model_dir",
                                  "model_url", "out_url", "classes_url", "classes_png",
                                  "same_file", "block_rows_alone"])
def test_bad_inputs_one_line(tmp_path, capsys, model8, case):
    src = shared_file("ftw_baselines/inference-img.tif")
    model = model8
    out = tmp_path / "out"
    out.mkdir()
    args: list[str] = []
    if case == "missing":
        args = ["infer", tmp_path / "nope.tif", "-m", model, "-o", out]
    elif case == "text":
        (tmp_path / "t.tif").write_text("<html>not a raster</html>")
        args = ["infer", tmp_path / "t.tif", "-m", model, "-o", out]
    elif case == "empty":
        (tmp_path / "e.tif").write_bytes(b"")
        args = ["infer", tmp_path / "e.tif", "-m", model, "-o", out]
    elif case == "bands":
        args = ["infer", shared_file("rasterio_testdata/RGB.byte.tif"), "-m", model, "-o", out]
    elif case == "trunc_model":
        data = model8.read_bytes()
        (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
        args = ["infer", src, "-m", tmp_path / "t.pt", "-o", out]
    elif case == "pickle":
        marker = tmp_path / "pwned"
        _crafted_pickle(tmp_path / "evil.pt", marker)
        args = ["infer", src, "-m", tmp_path / "evil.pt", "-o", out]
    elif case == "arch":
        import torch

        payload = torch.load(model8, weights_only=True)
        payload["geoseg_meta"] = payload["geoseg_meta"].replace('"depth": 2', '"depth": 3')
        torch.save(payload, tmp_path / "other.pt")
        args = ["infer", src, "-m", tmp_path / "other.pt", "-o", out]
    elif case == "outdir":  # a file where the output directory should be
        (tmp_path / "afile").write_text("x")
        args = ["infer", src, "-m", model, "-o", tmp_path / "afile" / "sub"]
    elif case == "readonly_dir":
        if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new files even to root
            args = ["infer", src, "-m", model, "-o", "/proc"]
        else:
            out.chmod(0o500)
            args = ["infer", src, "-m", model, "-o", out]
    elif case == "tile":
        args = ["infer", src, "-m", model, "-o", out, "--tile-size", "102"]
    elif case in ("model_missing", "onnx_missing", "model_dir", "model_url"):
        model = {"model_missing": tmp_path / "nope.pt", "onnx_missing": tmp_path / "nope.onnx", "model_dir": tmp_path,
                 "model_url": "https://example.invalid/m.pt"}[case]
        args = ["infer", src, "-m", model, "-o", out]
    elif case == "out_url":
        args = ["infer", src, "-m", model, "-o", "s3://bucket/out"]
    elif case == "classes_url":
        args = ["infer", src, "-m", model, "--classes-out", "/vsimem/c.tif", "-o", out]
    elif case == "classes_png":  # a GeoTIFF was written under that name
        args = ["infer", src, "-m", model, "--classes-out", out / "c.png"]
    elif case == "block_rows_alone":  # ignored without a word
        args = ["infer", src, "-m", model, "-o", out, "--block-rows", "100"]
    elif case == "same_file":  # "output path is the same as an input"
        args = ["infer", src, "-m", model, "--classes-out", out / "c.tif", "--vector-out", out / "c.tif"]
    before = sorted(p.name for p in out.iterdir())
    code, stdout, err = run_cli([*args, "-q"], capsys)
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written
    if case == "pickle":
        assert not (tmp_path / "pwned").exists()
        assert "refused" in err
    if case == "bands":
        assert "expects 8" in err
    if case == "arch":
        assert "do not match" in err
    assert "unexpected" not in err
    if case == "classes_png":
        assert "name it .tif" in err
    if case == "same_file":
        assert "would be the same file" in err
    if case == "block_rows_alone":
        assert "add --workers N or --scheduler" in err
    if case.endswith("_url") and case != "model_url":
        assert "outputs are written to local files" in err
        assert not Path("s3:").exists()  # nothing made in the working directory either
    if case.startswith("model") or case == "onnx_missing":
        assert {"model_missing": "model file not found", "onnx_missing": "model file not found",
                "model_dir": "is a directory", "model_url": "https://example.invalid/m.pt: models are read from local "
                "files"}[case] in err


def test_output_equal_to_input_is_refused(tmp_path, model8):
    import shutil

    from geoseg.errors import RasterWriteError
    from geoseg.pipeline import predict_raster

    src = tmp_path / "in.tif"
    shutil.copy(shared_file("ftw_baselines/inference-img.tif"), src)
    data = src.read_bytes()
    with pytest.raises(RasterWriteError, match="same as an input"):
        predict_raster(src, model8, src, overwrite=True)
    assert src.read_bytes() == data


def test_model_info_and_help_do_not_import_torch(model8):
    code = ("import sys; from geoseg.cli import app, main;\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "geoseg", "model", "info", str(model8), "--json"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert '"arch": "unet"' in r.stdout and "boundary" in r.stdout


def test_debug_shows_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "geoseg", "infer", str(tmp_path / "nope.tif"), "--debug", "-m",
                        str(tmp_path / "m.pt")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_nodata_option_marks_an_undeclared_zero_collar(tmp_path, capsys):
    """--nodata 0: a zero collar the raster does not declare becomes output nodata instead of a class."""
    with rasterio.open(ROOT / "sample_data" / "field.tif") as src:
        data, prof = src.read(), src.profile
    data[:, :, :40] = 0
    prof.pop("nodata", None)
    with rasterio.open(tmp_path / "collar.tif", "w", **prof) as dst:
        dst.write(data)
    out = {}
    for name, extra in (("plain", []), ("marked", ["--nodata", "0"])):
        code, _, err = run_cli(["infer", tmp_path / "collar.tif", "-o", tmp_path / name, "--no-vector", "-q", *extra],
                               capsys)
        assert code == 0, err
        with rasterio.open(tmp_path / name / "collar_classes.tif") as ds:
            out[name] = ds.read(1)
    assert (out["plain"][:, :40] != 255).all() and (out["marked"][:, :40] == 255).all()


def test_resume_of_a_finished_run_says_it_is_complete(tmp_path, capsys):
    """--resume on outputs that are all there: nothing to do and exit 0 (it failed with 'file exists')."""
    args = ["infer", ROOT / "sample_data" / "field.tif", "-o", tmp_path / "out", "-q"]
    assert run_cli(args, capsys)[0] == 0
    before = (tmp_path / "out" / "field_classes.tif").read_bytes()
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert "already complete" in err and "error" not in err
    assert (tmp_path / "out" / "field_classes.tif").read_bytes() == before


def test_interrupted_while_making_polygons_says_what_is_kept_and_resume_makes_only_the_rest(tmp_path, capsys,
                                                                                           monkeypatch):
    """Ctrl-C during the polygon stage: the class raster is complete and stays (the message said that partial
    outputs were removed, and the next run refused the 'existing' class raster); --resume makes the polygons and
    the preview without running inference again."""
    import geoseg.vector

    real = geoseg.vector.vectorize

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    args = ["infer", ROOT / "sample_data" / "field.tif", "-o", tmp_path / "out", "--probabilities", "--preview", "-q"]
    monkeypatch.setattr(geoseg.vector, "vectorize", interrupted)
    code, _, err = run_cli(args, capsys)
    assert code != 0 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "field_classes.tif (and any probabilities) are complete and kept" in errors[0], err
    assert "--resume" in errors[0]
    out = tmp_path / "out"
    cls, prob = out / "field_classes.tif", out / "field_probabilities.tif"
    assert cls.exists() and prob.exists()
    assert not (out / "field_polygons.gpkg").exists() and not (out / "field_preview.png").exists()
    before = cls.read_bytes(), cls.stat().st_mtime_ns

    monkeypatch.setattr(geoseg.vector, "vectorize", real)
    code, _, err = run_cli(args, capsys)  # without --resume the complete raster is not replaced
    assert code == 1 and "--overwrite" in err
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert "already complete; making the missing outputs" in err
    assert (out / "field_polygons.gpkg").exists() and (out / "field_preview.png").exists()
    assert (cls.read_bytes(), cls.stat().st_mtime_ns) == before  # no second inference
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0 and "nothing to resume" in err


def _described(path: Path, names: list[str | None]) -> Path:
    with rasterio.open(path, "r+") as ds:
        for i, n in enumerate(names, start=1):
            if n is not None:
                ds.set_band_description(i, n)
    return path


def test_band_names_that_disagree_with_the_model_are_refused_with_the_order_they_give(tmp_path, capsys,
                                                                                       make_raster):
    """The model's band names found on the raster in another order: the bands would be fed wrongly, silently
    (they were). Refused with the order the names give; a hand-made `--bands` is used, with a warning."""
    model = tmp_path / "m.pt"
    main(["model", "init", "--bands", "3", "--classes", "2", "--base-channels", "4", "--depth", "2",
          "--tile-size", "64", "--overlap", "16", "--band-names", "red,green,nir", "-o", str(model)])
    data = np.random.default_rng(0).integers(0, 200, (3, 80, 90)).astype(np.uint8)
    swapped = _described(make_raster(data, "swapped.tif"), ["NIR", "green", " Red "])  # case and spaces aside
    code, _, err = run_cli(["infer", swapped, "-m", model, "-o", tmp_path / "a", "--no-vector", "-q"], capsys)
    assert code == 1 and "Traceback" not in err
    assert "at bands 3,2,1" in err and "--bands 3,2,1" in err
    assert not (tmp_path / "a" / "swapped_classes.tif").exists()
    code, _, err = run_cli(["infer", swapped, "-m", model, "-o", tmp_path / "b", "--no-vector", "-q",
                            "--bands", "3,2,1"], capsys)
    assert code == 0 and "warning" not in err, err
    code, _, err = run_cli(["infer", swapped, "-m", model, "-o", tmp_path / "c", "--no-vector", "-q",
                            "--bands", "1,2,3"], capsys)
    assert code == 0 and "warning:" in err and "3,2,1; used as given" in err, err
    # names in model order, names the raster lacks, repeated names: nothing to say
    for i, names in enumerate([["red", "green", "nir"], ["B4", "B3", "B8"], ["nir", "nir", "red"], [None, None, None]]):
        r = _described(make_raster(data, f"r{i}.tif"), names)
        code, _, err = run_cli(["infer", r, "-m", model, "-o", tmp_path / f"d{i}", "--no-vector", "-q"], capsys)
        assert code == 0 and "warning" not in err, (names, err)
    # more bands than the model takes: the hint gives the bands of those names
    wide = _described(make_raster(np.concatenate([data, data[:2]]), "wide.tif"), ["x", "nir", "red", "green", "y"])
    code, _, err = run_cli(["infer", wide, "-m", model, "-o", tmp_path / "e", "--no-vector", "-q"], capsys)
    assert code == 1 and "--bands 3,4,2 (the bands of those names here)" in err, err


def test_polygons_go_beside_the_class_raster_named_by_classes_out(tmp_path, capsys, monkeypatch):
    """The help says so; they went to the working directory (or -o)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    code, _, err = run_cli(["infer", ROOT / "sample_data" / "field.tif", "--classes-out", tmp_path / "sub" / "c.tif",
                            "-q"], capsys)
    assert code == 0, err
    assert (tmp_path / "sub" / "c.tif").exists() and (tmp_path / "sub" / "field_polygons.gpkg").exists()
    assert not (tmp_path / "field_polygons.gpkg").exists()
