"""``geoseg vectorize``: class raster -> polygons (GeoPackage, Shapefile, GeoJSON, GeoParquet, FlatGeobuf)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from geoseg.cli import app
from geoseg.cli._options import OverwriteOpt, ProgressMode, ProgressOpt, SchedulerOpt
from geoseg.cli.infer import VectorFormat


def _ints_or_names(text: str | None) -> list[int | str] | None:
    if text is None or not text.strip():
        return None
    out: list[int | str] = []
    for p in text.split(","):
        p = p.strip()
        if p:
            out.append(int(p) if p.lstrip("-").isdigit() else p)
    return out or None


@app.command()
def vectorize(
    rasters: Annotated[List[str], typer.Argument(help="Class rasters (band 1 holds integer class ids; nodata is skipped): files, directories, glob patterns or @list.txt.", show_default=False, metavar="RASTER")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file; format from the extension: .gpkg .shp .geojson .parquet .fgb. With several inputs (or an existing directory): a directory receiving <stem>.<format> for each.")],
    format: Annotated[VectorFormat, typer.Option("--format", help="Polygon format when -o is a directory.")] = VectorFormat.gpkg,
    classes: Annotated[Optional[str], typer.Option(help="Keep only these classes, ids or names, e.g. 1,5 or corn,soy.")] = None,
    class_names: Annotated[Optional[str], typer.Option(help="Class names for rasters without a geoseg class table, e.g. 1=corn,5=soy.")] = None,
    min_area: Annotated[Optional[float], typer.Option(help="Drop polygons smaller than this, m² on the ground (in any CRS).", min=0)] = None,
    sieve: Annotated[Optional[int], typer.Option(help="Merge regions smaller than this many pixels into their largest neighbour first.", min=0)] = None,
    fill_holes: Annotated[Optional[float], typer.Option(help="Fill holes smaller than this, m², when no polygon lies in them.", min=0)] = None,
    simplify: Annotated[Optional[str], typer.Option(help="Coverage simplification tolerance: CRS units (15) or pixels (1.5px). Default: none.")] = None,
    boundary_class: Annotated[Optional[str], typer.Option(help="Field-boundary class of 3-class field models (id or name): not a polygon, separates fields.")] = None,
    probabilities: Annotated[Optional[Path], typer.Option(help="Probability raster from 'geoseg infer --probabilities': adds confidence_mean.")] = None,
    nodata: Annotated[Optional[float], typer.Option(help="Class value to treat as nodata beside the raster's own (an undeclared collar, e.g. 0): no polygons there.")] = None,
    band_rows: Annotated[Optional[int], typer.Option(help="Rows per band (default: about 2 M pixels per band).", min=1)] = None,
    workers: Annotated[int, typer.Option(help="Processes polygonizing bands in parallel (0: 1 below 16 M pixels, else one per CPU beyond the two the merge and writer use, up to 4; 1 if fewer than 2). With several inputs and N > 1: a local Dask cluster of N workers.", min=0)] = 0,
    overwrite: OverwriteOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Skip inputs whose output is already complete (an output appears only once complete); the others are redone.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    progress: ProgressOpt = ProgressMode.bar,
    scheduler: SchedulerOpt = None,
) -> None:
    """Turn each RASTER into polygons, identical to a whole-raster polygonization, in bounded memory.

    On a cluster (--scheduler, or --workers N with several inputs) each input is one task; a single input
    has its row bands (--band-rows) polygonized by the workers and merged here."""
    from geoseg.batch import BatchItem, expand_inputs, plan_outputs
    from geoseg.errors import UsageError
    from geoseg.export import EXTENSIONS
    from geoseg.io.atomic import local_output, output_directory

    local_output(output)  # before the format is read from a URL's extension
    inputs = expand_inputs(rasters)
    if probabilities is not None and len(inputs) > 1:
        raise UsageError("--probabilities names one raster but there are several inputs; vectorize them one by one")
    boundary: int | str | None = None
    if boundary_class is not None:
        b = boundary_class.strip()
        boundary = int(b) if b.lstrip("-").isdigit() else b
    options = dict(classes=_ints_or_names(classes), class_names=class_names, min_area=min_area, sieve=sieve,
                   fill_holes=fill_holes, simplify=simplify, boundary_class=boundary, band_rows=band_rows,
                   nodata=nodata)
    many = len(inputs) > 1 or output.is_dir()
    cluster = scheduler is not None or (many and workers > 1)
    if not many and resume and output.exists() and not overwrite:
        from geoseg.cli._console import err

        # outputs are published by a rename once complete: an existing one is a finished run
        err.print(f"{output} is already complete; nothing to resume (--overwrite redoes it)", soft_wrap=True)
        return
    if not many and not cluster:
        _vectorize_one(inputs[0], output, options, probabilities, overwrite, workers, quiet, progress.value)
        return
    if not many:  # one input on a cluster: its bands are polygonized by the workers
        from geoseg.cli._cluster import vectorize_on_cluster

        vectorize_on_cluster([(inputs[0], output)], options, probabilities=probabilities, overwrite=overwrite,
                             scheduler=scheduler, workers=None, resume=resume, quiet=quiet, progress=progress.value)
        return
    with output_directory(output):
        items = plan_outputs(inputs, output)

        def dest(item: BatchItem) -> Path:
            return item.out_dir / f"{item.stem}{EXTENSIONS[format.value]}"

        if cluster:
            from geoseg.cli._cluster import vectorize_on_cluster

            vectorize_on_cluster([(i.source, dest(i)) for i in items], options, probabilities=None,
                                 overwrite=overwrite, scheduler=scheduler, workers=workers if workers > 1 else None,
                                 resume=resume, quiet=quiet, progress=progress.value)
            return
        from geoseg.cli._batch import run_sequential

        run_sequential(items, lambda i: _vectorize_one(i.source, dest(i), options, None, overwrite, workers, quiet,
                                                        progress.value),
                       (lambda i: dest(i).exists()) if resume else None)


def _vectorize_one(raster: str, output: Path, options: dict[str, Any], probabilities: Path | None,
                   overwrite: bool, workers: int, quiet: bool, progress: str = "bar") -> None:
    from geoseg.cli._progress import progress_bar
    from geoseg.vector import vectorize as run

    with progress_bar(quiet, description="rows", mode=progress) as on_progress:
        report = run(raster, output, probabilities=probabilities, overwrite=overwrite, workers=workers,
                     on_progress=on_progress, **options)
    print_report(report)


def print_report(report: Any) -> None:
    """The lines ``geoseg vectorize`` prints about one finished output."""
    from geoseg.cli._console import err, out, warn_line

    for w in report.warnings:
        warn_line(w)
    out.print(f"polygons: {report.path}", soft_wrap=True)
    extra = []
    if report.dropped_small:
        extra.append(f"{report.dropped_small} below --min-area dropped")
    if report.holes_filled:
        extra.append(f"{report.holes_filled} holes filled")
    err.print(f"{report.polygons} polygon{'' if report.polygons == 1 else 's'} ({report.format}, simplify {report.simplify}) from "
              f"{report.width}x{report.height} px in {report.seconds:.1f} s"
              + (f"; {', '.join(extra)}" if extra else ""), soft_wrap=True)
