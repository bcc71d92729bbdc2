"""``geoseg vectorize``: class raster -> polygons (GeoPackage, Shapefile, GeoJSON, GeoParquet, FlatGeobuf)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geoseg.cli import app
from geoseg.cli._options import OverwriteOpt, ProgressMode, ProgressOpt


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
    raster: Annotated[Path, typer.Argument(help="Class raster (band 1 holds integer class ids; nodata is skipped).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file; format from the extension: .gpkg .shp .geojson .parquet .fgb.")],
    classes: Annotated[Optional[str], typer.Option(help="Keep only these classes, ids or names, e.g. 1,5 or corn,soy.")] = None,
    class_names: Annotated[Optional[str], typer.Option(help="Class names for rasters without a geoseg class table, e.g. 1=corn,5=soy.")] = None,
    min_area: Annotated[Optional[float], typer.Option(help="Drop polygons smaller than this, m² on the ground (in any CRS).", min=0)] = None,
    sieve: Annotated[Optional[int], typer.Option(help="Merge regions smaller than this many pixels into their largest neighbour first.", min=0)] = None,
    fill_holes: Annotated[Optional[float], typer.Option(help="Fill holes smaller than this, m², when no polygon lies in them.", min=0)] = None,
    simplify: Annotated[Optional[str], typer.Option(help="Coverage simplification tolerance: CRS units (15) or pixels (1.5px). Default: none.")] = None,
    boundary_class: Annotated[Optional[str], typer.Option(help="Field-boundary class of 3-class field models (id or name): not a polygon, separates fields.")] = None,
    probabilities: Annotated[Optional[Path], typer.Option(help="Probability raster from 'geoseg infer --probabilities': adds confidence_mean.")] = None,
    band_rows: Annotated[Optional[int], typer.Option(help="Rows per band (default: about 2 M pixels per band).", min=1)] = None,
    workers: Annotated[int, typer.Option(help="Processes polygonizing bands in parallel (0: 1 below 16 M pixels, else one per CPU beyond the two the merge and writer use, up to 4; 1 if fewer than 2).", min=0)] = 0,
    overwrite: OverwriteOpt = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    progress: ProgressOpt = ProgressMode.bar,
) -> None:
    """Turn RASTER into polygons, identical to a whole-raster polygonization, in bounded memory."""
    from geoseg.cli._console import err, out, warn_line
    from geoseg.cli._progress import progress_bar
    from geoseg.vector import vectorize as run

    boundary: int | str | None = None
    if boundary_class is not None:
        b = boundary_class.strip()
        boundary = int(b) if b.lstrip("-").isdigit() else b
    with progress_bar(quiet, description="rows", mode=progress) as on_progress:
        report = run(raster, output, classes=_ints_or_names(classes), class_names=class_names,
                     min_area=min_area, sieve=sieve, fill_holes=fill_holes, simplify=simplify,
                     boundary_class=boundary, probabilities=probabilities, overwrite=overwrite,
                     band_rows=band_rows, workers=workers, on_progress=on_progress)
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
