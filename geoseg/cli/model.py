"""``geoseg model init`` and ``geoseg model info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geoseg.cli import app
from geoseg.cli._options import ARCH_HELP, Arch

model_app = typer.Typer(help="Create and inspect model checkpoints.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("init")
def init(
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint file to write (.pt).")],
    arch: Annotated[Arch, typer.Option(help=ARCH_HELP)] = "unet",  # type: ignore[assignment]
    bands: Annotated[int, typer.Option(help="Number of input bands.", min=1)] = 3,
    classes: Annotated[int, typer.Option(help="Number of output classes.", min=1, max=255)] = 2,
    class_names: Annotated[Optional[str], typer.Option(help="Comma-separated class names, e.g. background,field,boundary.")] = None,
    band_names: Annotated[Optional[str], typer.Option(help="Comma-separated band names, e.g. B4,B3,B2,B8.")] = None,
    base_channels: Annotated[Optional[int], typer.Option(help="unet: channels of the first level [16].", min=1)] = None,
    depth: Annotated[Optional[int], typer.Option(help="unet: number of poolings [3].", min=1, max=8)] = None,
    encoder: Annotated[Optional[str], typer.Option(help="smp-*: encoder name, e.g. resnet34, efficientnet-b3 (random weights; nothing is downloaded) [resnet18].")] = None,
    encoder_depth: Annotated[Optional[int], typer.Option(help="smp-*: encoder depth (5; smp-fpn and smp-pspnet also 3 or 4) [5, smp-pspnet 3].", min=3, max=5)] = None,
    stats_from: Annotated[Optional[Path], typer.Option(help="Compute per-band normalization from this raster (nodata excluded).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-band means, comma-separated (default 0).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-band standard deviations, comma-separated (default 1).")] = None,
    tile_size: Annotated[int, typer.Option(help="Recommended tile size in pixels.", min=16)] = 256,
    overlap: Annotated[int, typer.Option(help="Recommended overlap in pixels.", min=0)] = 64,
    seed: Annotated[int, typer.Option(help="Random seed for the initial weights.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write an untrained checkpoint (for testing the pipeline, benchmarks, or as a starting point)."""
    from geoseg.cli._console import out
    from geoseg.modelinit import init_checkpoint

    path = init_checkpoint(
        output, arch=Arch(arch).value, bands=bands, classes=classes,
        class_names=_split(class_names), band_names=_split(band_names),
        base_channels=base_channels, depth=depth, encoder=encoder, encoder_depth=encoder_depth, stats_from=stats_from,
        mean=_floats(mean), std=_floats(std), tile_size=tile_size, overlap=overlap, seed=seed,
        overwrite=overwrite)
    out.print(f"wrote untrained {Arch(arch).value} checkpoint to {path}")


@model_app.command("info")
def info(path: Annotated[Path, typer.Argument(help="Checkpoint file (.pt).")],
         json_out: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False) -> None:
    """Print a checkpoint's metadata: architecture, bands, normalization, classes, tiling, training."""
    import json

    from rich.table import Table

    from rich.text import Text

    from geoseg.cli._console import out, safe_line, styled
    from geoseg.modelmeta import peek_meta

    meta = peek_meta(path)  # without torch: a few MB instead of 1.7 GB
    if meta is None:
        from geoseg.models import read_meta

        meta = read_meta(path)
    if json_out:
        typer.echo(json.dumps(meta.to_dict(), indent=2))
        return
    out.print(styled(safe_line(path), "bold", f": {meta.arch} {meta.arch_args}"))
    out.print(f"tile size {meta.tile_size}, overlap {meta.overlap}")
    t = Table("band", "name", "mean", "std", title="input bands")
    for i, (b, m, s) in enumerate(zip(meta.bands, meta.mean, meta.std), start=1):
        t.add_row(str(i), safe_line(b), f"{m:.4g}", f"{s:.4g}")
    out.print(t)
    c = Table("id", "name", "colour", title=f"classes (output nodata {meta.schema.nodata})")
    for ci in meta.schema.classes:
        hexc = "#%02x%02x%02x" % ci.colour
        c.add_row(str(ci.id), safe_line(ci.name), Text.assemble(("■", hexc), f" {hexc}"))
    out.print(c)
    if meta.training:
        for k, v in meta.training.items():
            out.print(f"training.{k}: {json.dumps(v) if not isinstance(v, str) else v}")


def _split(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [p.strip() for p in text.split(",") if p.strip()]


def _floats(text: str | None) -> list[float] | None:
    from geoseg.errors import UsageError

    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from None
