"""``geoseg model init``, ``import``, ``export`` and ``info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geoseg.cli import app
from geoseg.cli._options import ARCH_HELP, Arch, BaseChannelsOpt, DepthOpt, EncoderDepthOpt, EncoderOpt, OverwriteOpt

model_app = typer.Typer(help="Create, import, export and inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("init")
def init(
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint file to write (.pt).")],
    arch: Annotated[Arch, typer.Option(help=ARCH_HELP)] = "unet",  # type: ignore[assignment]
    bands: Annotated[int, typer.Option(help="Number of input bands.", min=1)] = 3,
    classes: Annotated[int, typer.Option(help="Number of output classes.", min=1, max=255)] = 2,
    class_names: Annotated[Optional[str], typer.Option(help="Comma-separated class names, e.g. background,field,boundary.")] = None,
    band_names: Annotated[Optional[str], typer.Option(help="Comma-separated band names, e.g. B4,B3,B2,B8.")] = None,
    base_channels: BaseChannelsOpt = None,
    depth: DepthOpt = None,
    encoder: EncoderOpt = None,
    encoder_depth: EncoderDepthOpt = None,
    stats_from: Annotated[Optional[Path], typer.Option(help="Compute per-band normalization from this raster (nodata excluded).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-band means, comma-separated (default 0).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-band standard deviations, comma-separated (default 1).")] = None,
    tile_size: Annotated[int, typer.Option(help="Recommended tile size in pixels.", min=16)] = 256,
    overlap: Annotated[int, typer.Option(help="Recommended overlap in pixels.", min=0)] = 64,
    seed: Annotated[int, typer.Option(help="Random seed for the initial weights.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write an untrained checkpoint (for testing the pipeline, benchmarks, or as a starting point)."""
    from geoseg.cli._console import out
    from geoseg.models.init import init_checkpoint

    path = init_checkpoint(
        output, arch=Arch(arch).value, bands=bands, classes=classes,
        class_names=_split(class_names), band_names=_split(band_names),
        base_channels=base_channels, depth=depth, encoder=encoder, encoder_depth=encoder_depth, stats_from=stats_from,
        mean=_floats(mean), std=_floats(std), tile_size=tile_size, overlap=overlap, seed=seed,
        overwrite=overwrite)
    out.print(f"wrote untrained {Arch(arch).value} checkpoint to {path}")


@model_app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="External checkpoint: a Lightning .ckpt of torchgeo's SemanticSegmentationTask (Fields of The World's included) or a state dict (.pt/.pth) of an smp or geoseg network.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="geoseg checkpoint to write (.pt).")],
    preset: Annotated[Optional[str], typer.Option(help="Metadata of a known family: ftw (Fields of The World: 8 bands B4,B3,B2,B8 of two dates, image / 3000, background/field/boundary, tile 1024, overlap 128).")] = None,
    arch: Annotated[Optional[Arch], typer.Option(help="Architecture of a plain state dict (Lightning checkpoints name their own).")] = None,
    encoder: EncoderOpt = None,
    encoder_depth: EncoderDepthOpt = None,
    base_channels: BaseChannelsOpt = None,
    depth: DepthOpt = None,
    band_names: Annotated[Optional[str], typer.Option(help="Comma-separated input band names in model order [band_1...].")] = None,
    scale: Annotated[Optional[float], typer.Option(help="The model took image / SCALE (e.g. 3000 for Sentinel-2 L2A reflectance x 10000 in FTW).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-band means subtracted before the model, comma-separated (with --std).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-band standard deviations, comma-separated (with --mean).")] = None,
    class_names: Annotated[Optional[str], typer.Option(help="Comma-separated class names in output order [class_0...].")] = None,
    colours: Annotated[Optional[str], typer.Option(help="Comma-separated class colours as #rrggbb [by class name].")] = None,
    tile_size: Annotated[Optional[int], typer.Option(help="Recommended tile size in pixels [preset's, else 256].", min=16)] = None,
    overlap: Annotated[Optional[int], typer.Option(help="Recommended overlap in pixels [preset's, else 64].", min=0)] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Turn an external checkpoint into a self-describing geoseg checkpoint (reading it runs no code)."""
    from geoseg.cli._console import out, safe_line
    from geoseg.models.importer import ImportOptions, import_checkpoint

    opts = ImportOptions(preset=preset, arch=Arch(arch).value if arch else None, encoder=encoder,
                         encoder_depth=encoder_depth, base_channels=base_channels, depth=depth,
                         band_names=_split(band_names), mean=_floats(mean), std=_floats(std), scale=scale,
                         class_names=_split(class_names), colours=_colours(colours), tile_size=tile_size,
                         overlap=overlap)
    path, meta = import_checkpoint(source, output, opts, overwrite=overwrite)
    out.print(f"wrote {meta.arch} {meta.arch_args.get('encoder', '')} checkpoint to {safe_line(path)}: "
              f"{meta.num_bands} bands, classes {', '.join(safe_line(n) for n in meta.schema.names)}")


@model_app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="geoseg checkpoint (.pt).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ONNX file to write (.onnx).")],
    resolution: Annotated[Optional[float], typer.Option(help="Pixel size of the training imagery in cm, for the Deepness QGIS plugin (which rescales other imagery to it) [not recorded].")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export a checkpoint to ONNX: dynamic batch, the checkpoint's tile size, probabilities out, metadata inside (geoseg's and the Deepness plugin's keys)."""
    from geoseg.cli._console import out, safe_line
    from geoseg.models.onnx_export import export_onnx

    if output.suffix.lower() != ".onnx":
        from geoseg.errors import UsageError

        raise UsageError(f"{safe_line(output)}: name the ONNX file with a .onnx suffix (geoseg infer -m picks "
                         "onnxruntime by it)")
    path = export_onnx(checkpoint, output, resolution_cm=resolution, overwrite=overwrite)
    out.print(f"wrote {safe_line(path)} ({path.stat().st_size / 2**20:.1f} MiB); run it with geoseg infer -m "
              f"{safe_line(path)}, or open it in the Deepness QGIS plugin")


@model_app.command("info")
def info(path: Annotated[Path, typer.Argument(help="Checkpoint (.pt) or ONNX model (.onnx).")],
         json_out: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False) -> None:
    """Print a model's metadata: architecture, bands, normalization, classes, tiling, training."""
    import json

    from rich.table import Table

    from rich.text import Text

    from geoseg.cli._console import out, safe_line, styled
    from geoseg.models.meta import peek_meta

    from geoseg.predict.onnx import is_onnx

    meta = peek_meta(path) if not is_onnx(path) else None  # without torch: a few MB instead of 1.7 GB
    if meta is None and is_onnx(path):
        from geoseg.predict.onnx import read_onnx_meta

        meta = read_onnx_meta(path)
    elif meta is None:
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
            if k != "spatial_cv":
                out.print(f"training.{k}: {json.dumps(v) if not isinstance(v, str) else v}")
    cv = (meta.training or {}).get("spatial_cv")
    if isinstance(cv, dict):
        _print_cross_validation(cv)


def _print_cross_validation(cv: dict) -> None:
    """The accuracy estimate ``geoseg train --cv`` stored: scores with their 95% intervals, per-class F1."""
    from rich.table import Table

    from geoseg.cli._console import out, safe_line

    def ci(key: str) -> str:
        lo_hi = cv.get(key + "_ci95") or []
        return f" (95% CI {lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if len(lo_hi) == 2 else ""

    out.print(f"estimated accuracy (spatial {cv.get('folds')}-fold cross-validation over {cv.get('units')} "
              f"units: {safe_line(str(cv.get('method')))}):")
    out.print(f"  overall accuracy {cv.get('overall_accuracy', float('nan')):.3f}{ci('overall_accuracy')}, "
              f"macro F1 {cv.get('macro_f1', float('nan')):.3f}{ci('macro_f1')}")
    t = Table("class", "F1", "labelled pixels", title="per class (cross-validation)")
    support = cv.get("support") or {}
    for name, f1 in (cv.get("per_class_f1") or {}).items():
        t.add_row(safe_line(str(name)), "-" if f1 is None else f"{f1:.3f}", str(support.get(name, "")))
    out.print(t)


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


def _colours(text: str | None) -> list[tuple[int, int, int]] | None:
    from geoseg.errors import UsageError

    if not text:
        return None
    colours = []
    for item in text.split(","):
        h = item.strip().lstrip("#")
        if len(h) != 6:
            raise UsageError(f"--colours: {item.strip()!r} is not a #rrggbb colour")
        try:
            colours.append((int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)))
        except ValueError:
            raise UsageError(f"--colours: {item.strip()!r} is not a #rrggbb colour") from None
    return colours
