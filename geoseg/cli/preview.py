"""``geoseg preview``: a PNG quicklook of a class raster over its image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geoseg.cli import app
from geoseg.cli._options import OverwriteOpt


@app.command()
def preview(
    classes: Annotated[str, typer.Argument(help="Class raster (from geoseg infer, or any integer class map); a file, URL or GDAL /vsi path.")],
    image: Annotated[Optional[str], typer.Option("--image", "-i", help="The image the classes came from, shown underneath; a file, URL or GDAL /vsi path.")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="PNG to write (default: <classes stem>_preview.png beside it).")] = None,
    rgb: Annotated[Optional[str], typer.Option(help="Image bands for red,green,blue, 1-based (default: from colour interpretation or band names, else 1,2,3).")] = None,
    polygons: Annotated[Optional[Path], typer.Option(help="Polygon file whose outlines to draw (default: class boundaries of the raster).")] = None,
    alpha: Annotated[float, typer.Option(help="Opacity of the class overlay.", min=0, max=1)] = 0.45,
    max_side: Annotated[int, typer.Option(help="Longest side of the picture, pixels.", min=64)] = 1200,
    nodata: Annotated[Optional[float], typer.Option(help="Image value to show as nodata, beside the image's own (an undeclared collar, e.g. 0).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a PNG: image in RGB (2-98% stretch), classes as a translucent overlay with a legend, outlines."""
    from geoseg.cli._console import out
    from geoseg.io.raster import parse_bands
    from geoseg.preview import write_preview

    from geoseg.io.paths import beside, name_stem

    dest = output or beside(classes) / f"{name_stem(classes)}_preview.png"
    bands = parse_bands(rgb, "rgb")
    if bands is not None and len(bands) != 3:
        from geoseg.errors import UsageError

        raise UsageError(f"--rgb needs three bands (red,green,blue), got {rgb!r}")
    write_preview(classes, dest, image=image, rgb=bands, polygons=polygons, alpha=alpha, max_side=max_side,
                  overwrite=overwrite, image_nodata=nodata)
    out.print(f"preview: {dest}")
