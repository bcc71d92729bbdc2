"""``geoseg preview``: a PNG quicklook of a class raster over its image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geoseg.cli import app
from geoseg.cli._options import OverwriteOpt


@app.command()
def preview(
    classes: Annotated[Path, typer.Argument(help="Class raster (from geoseg infer, or any integer class map).")],
    image: Annotated[Optional[Path], typer.Option("--image", "-i", help="The image the classes came from, shown underneath.")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="PNG to write (default: <classes stem>_preview.png beside it).")] = None,
    rgb: Annotated[Optional[str], typer.Option(help="Image bands for red,green,blue, 1-based (default: from colour interpretation or band names, else 1,2,3).")] = None,
    polygons: Annotated[Optional[Path], typer.Option(help="Polygon file whose outlines to draw (default: class boundaries of the raster).")] = None,
    alpha: Annotated[float, typer.Option(help="Opacity of the class overlay.", min=0, max=1)] = 0.45,
    max_side: Annotated[int, typer.Option(help="Longest side of the picture, pixels.", min=64)] = 1200,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a PNG: image in RGB (2-98% stretch), classes as a translucent overlay with a legend, outlines."""
    from geoseg.cli._console import out
    from geoseg.io.raster import parse_bands
    from geoseg.preview import write_preview

    dest = output or classes.with_name(f"{classes.stem}_preview.png")
    bands = parse_bands(rgb, "--rgb")
    if bands is not None and len(bands) != 3:
        from geoseg.errors import UsageError

        raise UsageError(f"--rgb needs three bands (red,green,blue), got {rgb!r}")
    write_preview(classes, dest, image=image, rgb=bands, polygons=polygons, alpha=alpha, max_side=max_side,
                  overwrite=overwrite)
    out.print(f"preview: {dest}")
