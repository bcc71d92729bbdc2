"""The bad-input corpus (tests/corpus/make_corpus.py) across every command.

Each case has a defined outcome: it works (with a warning where the user should
know), or it fails with one line naming the problem, a non-zero exit code and no
traceback. In both cases the inputs are untouched, and a failure leaves nothing at
the destination.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "corpus"))

from geoseg.cli import main  # noqa: E402

TRAIN = ["--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "2", "--tile-size", "16", "-q"]  # else defaults

# id: (argv with {name} placeholders for corpus files and {out} for the output dir, outcome, text in stderr)
CASES: dict[str, tuple[list[str], str, str]] = {
    "infer_truncated_tif": (["infer", "{truncated}", "-m", "{model}", "-o", "{out}"], "error", "truncated.tif"),
    "infer_text_as_tif": (["infer", "{text}", "-m", "{model}", "-o", "{out}"], "error", "cannot open as a raster"),
    "infer_html_as_tif": (["infer", "{html}", "-m", "{model}", "-o", "{out}"], "error", "cannot open as a raster"),
    "infer_empty_file": (["infer", "{empty}", "-m", "{model}", "-o", "{out}"], "error", "empty"),
    "infer_missing_file": (["infer", "{out}/nope.tif", "-m", "{model}", "-o", "{out}"], "error", "not found"),
    "infer_no_georef": (["infer", "{nogeo}", "-m", "{model}", "-o", "{out}"], "ok", "no CRS"),
    "infer_rotated": (["infer", "{rotated}", "-m", "{model}", "-o", "{out}"], "ok", "rotated or sheared"),
    "infer_sheared": (["infer", "{sheared}", "-m", "{model}", "-o", "{out}"], "ok", "rotated or sheared"),
    "infer_1x1": (["infer", "{onepixel}", "-m", "{model}", "-o", "{out}"], "ok", ""),
    "infer_complex_dtype": (["infer", "{complex}", "-m", "{model}", "-o", "{out}"], "error", "not supported"),
    "infer_all_nodata": (["infer", "{all_nodata}", "-m", "{model}", "-o", "{out}"], "ok", "no valid pixels"),
    "infer_nan_inf": (["infer", "{nan_inf}", "-m", "{model}", "-o", "{out}"], "ok", ""),
    "infer_band_mismatch": (["infer", "{five_bands}", "-m", "{model}", "-o", "{out}"], "error", "expects 3"),
    "infer_band_out_of_range": (["infer", "{good}", "-m", "{model}", "-o", "{out}", "--bands", "1,2,9"], "error",
                                "band 9 does not exist"),
    "infer_truncated_model": (["infer", "{good}", "-m", "{truncated_model}", "-o", "{out}"], "error", "truncated.pt"),
    "infer_other_arch_model": (["infer", "{good}", "-m", "{other_arch}", "-o", "{out}"], "error", "do not match"),
    "infer_future_model": (["infer", "{good}", "-m", "{future_model}", "-o", "{out}"], "error", "newer"),
    "infer_plain_torch_file": (["infer", "{good}", "-m", "{plain_torch}", "-o", "{out}"], "error",
                               "without geoseg metadata"),
    "infer_bad_metadata": (["infer", "{good}", "-m", "{bad_meta}", "-o", "{out}"], "error", "not valid JSON"),
    "infer_crafted_pickle": (["infer", "{good}", "-m", "{evil_model}", "-o", "{out}"], "error", "refused"),
    "model_info_crafted_pickle": (["model", "info", "{evil_model}"], "error", "refused"),
    "infer_unwritable_dir": (["infer", "{good}", "-m", "{model}", "-o", "{readonly_dir}"], "error", "/proc"),
    "infer_huge_sparse_no_disk": (["infer", "{huge_sparse}", "-m", "{model}", "-o", "{out}", "--probabilities",
                                   "--probability-dtype", "float32"], "error", "GB free"),
    "preview_huge_sparse": (["preview", "{huge_sparse}", "-o", "{out}/huge.png", "--max-side", "200"], "ok", ""),
    "vectorize_truncated": (["vectorize", "{truncated}", "-o", "{out}/v.gpkg"], "error", "truncated.tif"),
    "vectorize_float_raster": (["vectorize", "{float_classes}", "-o", "{out}/v.gpkg"], "error", "float"),
    "vectorize_1x1": (["vectorize", "{onepixel_classes}", "-o", "{out}/v.gpkg"], "ok", ""),
    "vectorize_unknown_format": (["vectorize", "{classes}", "-o", "{out}/v.xyz"], "error", ".xyz"),
    "vectorize_output_is_input": (["vectorize", "{classes}", "-o", "{classes}", "--overwrite"], "error", ""),
    "vectorize_all_nodata": (["vectorize", "{all_nodata}", "-o", "{out}/v.gpkg"], "ok", "no polygons"),
    # a URL input stays a URL (Path() made http://host of http:/host, "file not found"); port 9: refused at once
    "train_unreachable_url_image": (["train", "--image", "http://127.0.0.1:9/scene.tif", "--labels", "{classes}",
                                     "-o", "{out}/m.pt"], "error", "http://127.0.0.1:9/scene.tif"),
    "train_labels_do_not_overlap": (["train", "--image", "{good}", "--vector-labels", "{labels_far}",
                                     "--class-field", "class", "-o", "{out}/m.pt", *TRAIN], "error", "overlap"),
    "train_labels_without_crs": (["train", "--image", "{good}", "--vector-labels", "{labels_nocrs}",
                                  "--class-field", "class", "-o", "{out}/m.pt", *TRAIN], "error", "CRS"),
    "train_endmembers_without_crs": (["train", "--image", "{good}", "--vector-labels", "{endmembers_nocrs}",
                                      "--class-field", "class", "-o", "{out}/m.pt", *TRAIN], "error", "CRS"),
    "train_missing_class_field": (["train", "--image", "{good}", "--vector-labels", "{labels}",
                                   "--class-field", "nope", "-o", "{out}/m.pt", *TRAIN], "error", "nope"),
    "train_empty_labels": (["train", "--image", "{good}", "--vector-labels", "{labels_empty}",
                            "--class-field", "class", "-o", "{out}/m.pt", *TRAIN], "error", "labels_empty"),
    "train_invalid_and_empty_geometries": (["train", "--image", "{good}", "--vector-labels", "{labels_invalid}",
                                            "--class-field", "class", "-o", "{out}/m.pt", "--val-split", "0",
                                            *TRAIN], "ok", "repaired 1 invalid polygon"),
    "train_labels_in_other_crs": (["train", "--image", "{good}", "--vector-labels", "{labels_other_crs}",
                                   "--class-field", "class", "-o", "{out}/m.pt", "--val-split", "0", *TRAIN],
                                  "ok", ""),
    "evaluate_no_overlap": (["evaluate", "{classes}", "{labels_far}", "--class-field", "class", "-o", "{out}"],
                            "error", "overlap"),
    "evaluate_truth_not_raster": (["evaluate", "{classes}", "{text}", "-o", "{out}"], "error", "text.tif"),
    # a damaged tile in the middle of an otherwise good file, read by every command that reads rasters
    "preview_corrupt_tile": (["preview", "{corrupt_tile}", "-o", "{out}/p.png"], "error", "read failed"),
    "evaluate_corrupt_prediction": (["evaluate", "{corrupt_tile}", "{classes}", "-o", "{out}/ev"], "error",
                                    "corrupt_tile.tif: read failed"),
    "evaluate_corrupt_truth": (["evaluate", "{classes}", "{corrupt_tile}", "-o", "{out}/ev"], "error",
                               "corrupt_tile.tif: read failed"),
    "vectorize_corrupt_tile": (["vectorize", "{corrupt_tile}", "-o", "{out}/v.gpkg"], "error", "read failed"),
    # a polygon with a NaN vertex: skipped with a warning where polygons are read
    "train_nan_coordinate_polygon": (["train", "--image", "{good}", "--vector-labels", "{labels_nan}",
                                      "--class-field", "class", "-o", "{out}/m.pt", "--val-split", "0", *TRAIN], "ok",
                                     "skipped 1 polygon(s) with NaN or infinite coordinates"),
    "evaluate_nan_coordinate_polygon": (["evaluate", "{classes}", "{labels_nan}", "--class-field", "id", "-o",
                                         "{out}/ev"], "ok", "skipped 1 polygon(s) with NaN"),
    # a VRT whose bands have different types: read one by one into their common type
    "infer_vrt_mixed_types": (["infer", "{mixed_types}", "-m", "{model}", "-o", "{out}"], "ok", ""),
    "preview_vrt_mixed_types": (["preview", "{classes}", "--image", "{mixed_types}", "-o", "{out}/p.png"], "ok", ""),
    "train_vrt_mixed_types": (["train", "--image", "{mixed_types}", "--vector-labels", "{labels}", "--class-field",
                               "class", "-o", "{out}/m.pt", "--val-split", "0", *TRAIN], "ok", ""),
    # formats that cannot hold the data: a clear error, never empty or misplaced geometries
    "vectorize_geojson_without_crs": (["vectorize", "{classes_nocrs}", "-o", "{out}/v.geojson"], "error",
                                      "no CRS to convert from"),
    "vectorize_gpkg_without_crs": (["vectorize", "{classes_nocrs}", "-o", "{out}/v.gpkg"], "ok", "no CRS"),
    "vectorize_beyond_the_earth": (["vectorize", "{classes_far}", "-o", "{out}/v.geojson"], "error",
                                   "maps to the Earth"),
    # model metadata of odd shapes, configs in other encodings
    "model_info_text_version": (["model", "info", "{odd_version_model}"], "error", "format_version 'abc'"),
    "infer_zero_version": (["infer", "{good}", "-m", "{zero_version_model}", "-o", "{out}"], "error",
                           "format_version 0"),
    "infer_list_version": (["infer", "{good}", "-m", "{list_version_model}", "-o", "{out}"], "error",
                           "format_version [1]"),
    "train_latin1_config": (["train", "--config", "{latin1_config}", "--image", "{good}", "--vector-labels",
                             "{labels}", "--class-field", "class", "-o", "{out}/m.pt"], "error", "not UTF-8"),
    # ONNX models
    "infer_onnx": (["infer", "{good}", "-m", "{model_onnx}", "-o", "{out}"], "ok", ""),
    "infer_onnx_with_tta": (["infer", "{good}", "-m", "{model_onnx}", "-o", "{out}", "--tta", "flips"], "error",
                            "--tta"),
    "infer_onnx_on_gpu_only_options": (["infer", "{good}", "-m", "{model_onnx}", "-o", "{out}", "--compile"],
                                       "error", "--compile"),
    "infer_onnx_tile_too_big": (["infer", "{good}", "-m", "{model_onnx}", "-o", "{out}", "--tile-size", "48"],
                                "error", "at most 32"),
    "infer_onnx_in_ensemble": (["infer", "{good}", "-m", "{model_onnx}", "-m", "{model}", "-o", "{out}"], "error",
                               "ensemble"),
    "infer_text_onnx": (["infer", "{good}", "-m", "{text_onnx}", "-o", "{out}"], "error", "not a loadable ONNX"),
    "model_info_onnx": (["model", "info", "{model_onnx}"], "ok", ""),
    "model_info_text_onnx": (["model", "info", "{text_onnx}"], "error", "not a loadable ONNX"),
    "model_export_needs_onnx_name": (["model", "export", "{model}", "-o", "{out}/m.pt"], "error", ".onnx suffix"),
    "model_export_truncated": (["model", "export", "{truncated_model}", "-o", "{out}/m.onnx"], "error",
                               "truncated.pt"),
    "model_export_bad_resolution": (["model", "export", "{model}", "-o", "{out}/m.onnx", "--resolution", "-5"],
                                    "error", "--resolution"),
    # importing checkpoints
    "model_import_lightning": (["model", "import", "{lightning}", "-o", "{out}/m.pt", "--scale", "3000"], "ok", ""),
    "model_import_lightning_no_scaling": (["model", "import", "{lightning}", "-o", "{out}/m.pt"], "error",
                                          "--scale"),
    "model_import_preset_of_other_bands": (["model", "import", "{lightning}", "-o", "{out}/m.pt", "--preset", "ftw"],
                                           "error", "8 band names for a model with 3 input bands"),
    "model_import_unknown_preset": (["model", "import", "{lightning}", "-o", "{out}/m.pt", "--preset", "nope"],
                                    "error", "--preset 'nope'"),
    "model_import_arch_disagrees": (["model", "import", "{lightning}", "-o", "{out}/m.pt", "--scale", "1",
                                     "--arch", "smp-fpn"], "error", "disagrees"),
    "model_import_unsupported_torchgeo_model": (["model", "import", "{lightning_fcn}", "-o", "{out}/m.pt", "--scale",
                                                 "1"], "error", "'fcn' has no geoseg architecture"),
    "model_import_crafted_pickle": (["model", "import", "{evil_model}", "-o", "{out}/m.pt", "--scale", "1"], "error",
                                    "refused"),
    "model_import_geoseg_checkpoint": (["model", "import", "{model}", "-o", "{out}/m.pt"], "error",
                                       "already a geoseg checkpoint"),
    "model_import_text": (["model", "import", "{text}", "-o", "{out}/m.pt"], "error", "not a torch checkpoint"),
    "model_import_state_dict_without_arch": (["model", "import", "{tiny_state}", "-o", "{out}/m.pt", "--scale", "1"],
                                             "error", "pass --arch"),
    "model_import_state_dict_of_another_net": (["model", "import", "{tiny_state}", "-o", "{out}/m.pt", "--scale", "1",
                                                "--arch", "smp-unet"], "error", "not those of smp-unet"),
    # architecture options
    "model_init_encoder_for_unet": (["model", "init", "-o", "{out}/m.pt", "--encoder", "resnet34"], "error",
                                    "applies to the smp-* architectures, not --arch unet"),
    "model_init_bad_encoder_depth": (["model", "init", "-o", "{out}/m.pt", "--arch", "smp-unet", "--encoder-depth",
                                      "3"], "error", "supports --encoder-depth 5"),
    "model_init_unknown_encoder": (["model", "init", "-o", "{out}/m.pt", "--arch", "smp-fpn", "--encoder",
                                    "resnet9000"], "error", "cannot build encoder 'resnet9000'"),
    "train_encoder_weights_missing": (["train", "--image", "{good}", "--vector-labels", "{labels}", "--class-field",
                                       "class", "-o", "{out}/m.pt", "--arch", "smp-unet", "--encoder-weights",
                                       "{out}/none.pth"], "error", "file not found"),
    "train_encoder_weights_not_weights": (["train", "--image", "{good}", "--vector-labels", "{labels}",
                                           "--class-field", "class", "-o", "{out}/m.pt", "--arch", "smp-unet",
                                           "--encoder-weights", "{text}", "--tile-size", "32", "--epochs", "1", "-q"],
                                          "error", "not a torch weights file"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from make_corpus import make

    return make(tmp_path_factory.mktemp("corpus"))


def _digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def test_corpus_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", sorted(CASES))
def test_corpus_case(case, corpus, tmp_path, capsys, monkeypatch):
    argv, outcome, text = CASES[case]
    if any("{endmembers_nocrs}" in a for a in argv) and "endmembers_nocrs" not in corpus:
        pytest.skip("../shared/data/scikit_eo_l8 is absent")
    out = tmp_path / "out"
    out.mkdir()
    if case == "infer_huge_sparse_no_disk":  # deterministic: pretend the disk has 50 GB free
        import shutil
        from collections import namedtuple

        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 50 * 10**9, 50 * 10**9))
    args = [a.format(out=out, **{k: str(v) for k, v in corpus.items()}) for a in argv]
    inputs = [Path(a) for a in args if Path(a).is_file() and out not in Path(a).parents]
    before = _digest(inputs)
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _digest(inputs) == before, "an input was modified"
    assert not (corpus["evil_model"].parent / "PWNED").exists(), "code from a model file ran"
    leftovers = [p for p in out.rglob("*") if "geoseg-tmp" in p.name]
    if outcome == "ok":
        assert code == 0, err
        assert text in err
        assert not leftovers
    else:
        assert code != 0
        lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]
        assert len(lines) == 1, err
        assert lines[0].startswith("error:") and text in lines[0], err
        assert not list(out.iterdir()), f"files left at the destination: {list(out.iterdir())}"
