"""``geoseg infer``: class raster (+ probabilities, polygons) from a GeoTIFF."""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Iterator, List, Optional

import typer

from geoseg.blend import BLEND_WINDOWS, DEFAULT_BLEND
from geoseg.cli import app
from geoseg.cli._options import BlockRowsOpt, InputsArg, OverwriteOpt, ProgressMode, ProgressOpt, SchedulerOpt
from geoseg.models.demo import DEMO_MODEL

Blend = Enum("Blend", {k: k for k in BLEND_WINDOWS}, type=str)  # type: ignore[misc]


class ProbDtype(str, Enum):
    uint8 = "uint8"
    float32 = "float32"


class Tta(str, Enum):
    none = "none"
    flips = "flips"
    d4 = "d4"




# polygon formats for --vector-format (geoseg.vector; helpers at the end of this file)
class VectorFormat(str, Enum):
    gpkg = "gpkg"
    shp = "shp"
    geojson = "geojson"
    parquet = "parquet"
    fgb = "fgb"


@app.command()
def infer(
    images: InputsArg,
    model: Annotated[Optional[List[Path]], typer.Option("-m", "--model", help="Checkpoint (.pt), or an ONNX model (.onnx, run by onnxruntime); repeat .pt files to average several models' probabilities (an ensemble, e.g. seeds of one training). Default: the demo model shipped with geoseg (docs/demo_model.md).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("-o", "--out-dir", help="Output directory (default: beside each input). Outputs are <stem>_classes.tif etc.; inputs sharing a stem get distinct names.")] = None,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write per-class probabilities and a confidence band.")] = False,
    classes_out: Annotated[Optional[Path], typer.Option(help="Class raster path (default: <stem>_classes.tif in the output directory).")] = None,
    probabilities_out: Annotated[Optional[Path], typer.Option(help="Probability raster path (implies --probabilities; default: <stem>_probabilities.tif beside the class raster's default).")] = None,
    probability_dtype: Annotated[ProbDtype, typer.Option(help="Probability raster type: uint8 (0-255) or float32 (0-1).")] = ProbDtype.uint8,
    bands: Annotated[Optional[str], typer.Option(help="Input bands in model order, 1-based, e.g. 4,3,2,8.")] = None,
    nodata: Annotated[Optional[float], typer.Option(help="Input value to treat as nodata in every band, beside the raster's own nodata and masks (an undeclared collar, e.g. 0); such pixels get the output nodata.")] = None,
    tile_size: Annotated[Optional[int], typer.Option(help="Tile side in pixels (default: the model's).", min=16)] = None,
    overlap: Annotated[Optional[int], typer.Option(help="Overlap between tiles in pixels (default: the model's).", min=0)] = None,
    blend: Annotated[Blend, typer.Option(help="Blend window for overlapping tiles.")] = Blend(DEFAULT_BLEND),
    batch_size: Annotated[int, typer.Option(help="Tiles per model call.", min=1)] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    tta: Annotated[Tta, typer.Option(help="Test-time augmentation averaged in probability space.")] = Tta.none,
    max_strip_width: Annotated[int, typer.Option(help="Widest column strip held in memory, pixels (bounds memory for very wide rasters).", min=256)] = 8192,
    read_threads: Annotated[Optional[int], typer.Option(help="Threads reading each row band of the input in parallel; a compressed tiled GeoTIFF is decoded by GDAL on that many threads (default: on CPU 2 for such a file, else 1; with a GPU all cores but two, at most 16).", min=1)] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for the model (default: every core; on a cluster, each worker's own). Runs with the same number give the same bytes; on some CPUs another number can move a probability by one step (docs/reliability.md).", min=1)] = None,
    compile: Annotated[bool, typer.Option("--compile", help="Compile the model with torch.compile for the fixed tile shape (a GPU: faster after a warm-up of about a minute; see docs/gpu.md).")] = False,
    max_memory: Annotated[Optional[float], typer.Option(help="Keep inference buffers under about this many MB (narrows column strips; the model itself is extra).", min=1)] = None,
    overwrite: OverwriteOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run with the same inputs, model and options (rows already written are kept; inputs, blocks and outputs already complete are skipped: interrupted while polygons or the preview were made, only those are made).")] = False,
    checkpoint_seconds: Annotated[float, typer.Option(help="How often finished rows are flushed and recorded for --resume, seconds.", min=0)] = 30.0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    progress: ProgressOpt = ProgressMode.bar,
    preview: Annotated[bool, typer.Option("--preview", help="Also write <stem>_preview.png: the image, the classes as an overlay with a legend, polygon outlines.")] = False,
    rgb: Annotated[Optional[str], typer.Option(help="Preview bands for red,green,blue, 1-based (default: from band names/colour interpretation).")] = None,
    # --- polygons (geoseg.vector) ---
    vector_format: Annotated[VectorFormat, typer.Option(help="Polygon format written after inference (ignored with --vector-out, whose extension decides).")] = VectorFormat.gpkg,
    vector_out: Annotated[Optional[Path], typer.Option(help="Polygon output path (default: <stem>_polygons.<format> beside the class raster; one input only).")] = None,
    no_vector: Annotated[bool, typer.Option("--no-vector", help="Do not write polygons.")] = False,
    # --- a Dask cluster (geoseg.distributed) ---
    scheduler: SchedulerOpt = None,
    workers: Annotated[Optional[int], typer.Option(help="Start a local Dask cluster of this many worker processes, one thread each (one per GPU on GPU machines).", min=1)] = None,
    block_rows: BlockRowsOpt = None,
) -> None:
    """Segment each IMAGE: write <stem>_classes.tif (a COG with colour table) and optionally probabilities."""
    from geoseg.batch import BatchItem, expand_inputs, plan_outputs
    from geoseg.cli._console import err, out
    from geoseg.cli._progress import progress_bar
    from geoseg.errors import UsageError
    from geoseg.io.atomic import check_destination, output_directory
    from geoseg.io.raster import parse_bands
    from geoseg.pipeline import default_output_paths, predict_raster
    from geoseg.predict.load import shared_predictor

    models = list(model or [DEMO_MODEL])
    model_path = models[0] if len(models) == 1 else models
    if not model and not DEMO_MODEL.exists():
        raise UsageError("no model given and the demo model is missing; pass -m model.pt "
                         "(create one with 'geoseg model init' or 'geoseg train')")
    inputs = expand_inputs(images)
    if len(inputs) > 1:
        given = [n for n, v in (("--vector-out", vector_out), ("--classes-out", classes_out),
                                ("--probabilities-out", probabilities_out)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} name{'s' if len(given) == 1 else ''} one file but there are several "
                             "inputs; use -o DIR (and --vector-format)")
    if block_rows is not None and scheduler is None and workers is None:
        raise UsageError("--block-rows splits an input into tasks for a cluster; add --workers N or --scheduler "
                         "ADDRESS (one process reads any raster in bounded memory without it)")
    probabilities = probabilities or probabilities_out is not None
    options = dict(probability_dtype=probability_dtype.value, bands=parse_bands(bands), nodata=nodata, tile_size=tile_size,
                   overlap=overlap, blend=blend.value, batch_size=batch_size, device=device, tta=tta.value,
                   max_strip_width=max_strip_width, max_memory_mb=max_memory, read_threads=read_threads,
                   compile=compile, threads=threads)
    with output_directory(out_dir):  # created if missing; removed again if the run fails before writing
        items = plan_outputs(inputs, out_dir)

        def outputs(item: BatchItem) -> dict[str, Path]:
            paths = default_output_paths(item.source, item.out_dir, item.stem)
            if classes_out is not None:  # one input only (checked above); its polygons go beside it
                paths["classes"] = classes_out
                paths["polygons"] = classes_out.parent / paths["polygons"].name
            paths["probabilities"] = probabilities_out or paths["probabilities"]
            return paths

        def complete(item: BatchItem) -> bool:  # --resume: every output this command writes is there
            paths = outputs(item)
            want = [paths["classes"]] + ([paths["probabilities"]] if probabilities else []) + (
                [paths["preview"]] if preview else []) + (
                [_vector_path(paths, vector_format, vector_out)] if not no_vector else [])
            return all(p.exists() for p in want)

        if scheduler is not None or workers is not None:
            from geoseg.cli._cluster import infer_on_cluster

            infer_on_cluster(items, outputs, model_path, options, scheduler=scheduler, workers=workers,
                             block_rows=block_rows, probabilities=probabilities, overwrite=overwrite, resume=resume,
                             complete=complete if resume else None, quiet=quiet, progress=progress.value,
                             polygons=None if no_vector else lambda paths: _vector_path(paths, vector_format, vector_out),
                             preview=(lambda item, paths: _write_preview(
                                 item.source, paths, rgb, overwrite,
                                 None if no_vector else _vector_path(paths, vector_format, vector_out)))
                             if preview else None)
            return

        def load_model(paths: list[str], **kwargs: Any) -> Any:  # many inputs: the model is loaded once
            return shared_predictor(paths, **kwargs)[0]

        def run_one(item: BatchItem) -> None:
            image = item.source
            paths = outputs(item)
            prob_path = paths["probabilities"] if probabilities else None
            # --resume after an interruption while the polygons or the preview were made: the rasters are
            # complete (they are published together, at the end of inference), so only what is missing is made
            rasters_done = resume and all(p.exists() for p in (paths["classes"], prob_path) if p is not None)
            make_preview = preview and not (rasters_done and paths["preview"].exists())
            if make_preview:
                check_destination(paths["preview"], overwrite=overwrite, inputs=[image])
            vector_path = _vector_destination(paths, vector_format, vector_out, no_vector,
                                              overwrite, image, keep_existing=rasters_done)
            if rasters_done:
                err.print(f"{paths['classes']}{' and its probabilities' if prob_path else ''} already complete; "
                          "making the missing outputs")
            else:
                with progress_bar(quiet, mode=progress) as on_progress, _resumable():
                    report = predict_raster(
                        image, model_path, paths["classes"], probabilities=prob_path, overwrite=overwrite,
                        resume=resume, checkpoint_seconds=checkpoint_seconds, on_progress=on_progress,
                        load_model=load_model, **options)
                if report.resumed_from is not None:
                    err.print(f"resumed: strip {report.resumed_from[0] + 1}, rows 0..{report.resumed_from[1]} "
                              "were already done")
                out.print(f"classes: {report.classes_path}")
                if report.probabilities_path:
                    out.print(f"probabilities: {report.probabilities_path}")
                err.print(f"{report.width}x{report.height} px, {report.tiles_run} tiles run "
                          f"({report.tiles_skipped} all-nodata skipped) on {report.device} {report.precision} "
                          f"in {report.seconds:.1f} s ({report.megapixels_per_second:.2f} Mpx/s)")
            with _after_inference(paths["classes"]):
                if vector_path is not None:
                    _write_polygons(paths["classes"], prob_path, vector_path, overwrite, quiet, progress)
                if make_preview:
                    _write_preview(image, paths, rgb, overwrite, vector_path)

        if len(items) == 1 and resume and complete(items[0]):
            # a finished run: nothing to resume (it used to fail on its own outputs: "file exists")
            err.print(f"{outputs(items[0])['classes']} and its other outputs are already complete; nothing to "
                      "resume (--overwrite redoes them)")
        elif len(items) == 1:
            run_one(items[0])  # one input: exactly as always, its error is the command's
        else:
            from geoseg.cli._batch import run_sequential

            run_sequential(items, run_one, complete if resume else None)


def _write_preview(image: str, paths: dict[str, Path], rgb: str | None, overwrite: bool,
                   polygons: Path | None = None) -> None:
    from geoseg.cli._console import out
    from geoseg.io.raster import parse_bands
    from geoseg.preview import write_preview

    write_preview(paths["classes"], paths["preview"], image=image, rgb=parse_bands(rgb, "rgb"),
                  polygons=polygons, overwrite=overwrite)
    out.print(f"preview: {paths['preview']}")


# --- polygons after inference (geoseg.vector); kept apart from the inference code above ---
def _vector_destination(paths: dict[str, Path], fmt: "VectorFormat", vector_out: Path | None, no_vector: bool,
                        overwrite: bool, image: str, keep_existing: bool = False) -> Path | None:
    """The polygon path, checked before the long inference starts (None with --no-vector, or when
    ``keep_existing`` and it exists: a resumed command keeps its complete outputs)."""
    if no_vector:
        return None
    from geoseg.export import check_output

    path = _vector_path(paths, fmt, vector_out)
    if keep_existing and path.exists():
        return None
    if path.resolve() == paths["classes"].resolve():
        from geoseg.errors import UsageError

        raise UsageError(f"{path}: the polygons and the class raster would be the same file; name them apart")
    check_output(path, overwrite=overwrite, inputs=[image, paths["classes"]])
    return path


def _vector_path(paths: dict[str, Path], fmt: "VectorFormat", vector_out: Path | None) -> Path:
    from geoseg.export import EXTENSIONS

    return vector_out or paths["polygons"].with_suffix(EXTENSIONS[fmt.value])


def _write_polygons(classes: Path, probabilities: Path | None, path: Path, overwrite: bool, quiet: bool,
                    progress: str) -> None:
    from geoseg.cli._console import err, out, warn_line
    from geoseg.cli._progress import progress_bar
    from geoseg.vector import vectorize

    with progress_bar(quiet, description="polygons", mode=progress) as on_progress:
        vrep = vectorize(classes, path, probabilities=probabilities, overwrite=overwrite, workers=0,
                         on_progress=on_progress)
    for w in vrep.warnings:
        warn_line(w)
    out.print(f"polygons: {vrep.path}", soft_wrap=True)
    err.print(f"{vrep.polygons} polygon{'' if vrep.polygons == 1 else 's'} in {vrep.seconds:.1f} s", soft_wrap=True)


@contextlib.contextmanager
def _after_inference(classes: Path) -> Iterator[None]:
    """Ctrl-C / SIGTERM while the polygons or the preview are made: the rasters are complete and stay;
    say so, and how to make the rest (the polygon or preview file being written is removed)."""
    from geoseg.errors import Interrupted

    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"interrupted after inference; {classes} (and any probabilities) are complete and kept: "
                          "run the same command with --resume to make the polygons and preview") from None


@contextlib.contextmanager
def _resumable() -> Iterator[None]:
    """Turn Ctrl-C / SIGTERM during inference into one line that says how to continue."""
    from geoseg.errors import Interrupted

    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted("interrupted; finished rows are kept: run the same command with --resume to continue, "
                          "or without it to start over") from None
