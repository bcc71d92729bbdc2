"""Option aliases shared by several commands (typer ``Annotated`` types)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, List, Optional

import typer

from geoseg.architectures import ARCHITECTURES

OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]

#: the --arch choices: the architecture table's names (torch-free, so --help stays fast)
Arch = Enum("Arch", [(name, name) for name in ARCHITECTURES], type=str)  # type: ignore[misc]
ARCH_HELP = ("Architecture: unet (geoseg's U-Net), smp-* (segmentation-models-pytorch decoders, any smp encoder) "
             "or tempcnn (per pixel, time series); the table with defaults is in docs/models.md.")


def _default(arch: str, key: str) -> object:
    return ARCHITECTURES[arch].defaults[key]


def _depths() -> str:
    """The encoder depths and defaults, from the table."""
    smp = [a for a in ARCHITECTURES.values() if a.family == "smp"]
    others = [f"{a.name} {'-'.join(map(str, (min(a.encoder_depths), max(a.encoder_depths))))}"
              for a in smp if len(a.encoder_depths) > 1]
    odd = [f"{a.name} {a.defaults['encoder_depth']}" for a in smp if a.defaults["encoder_depth"] != 5]
    return f"5; {', '.join(others)} [5; {', '.join(odd)}]"


# the architecture options every command that builds a network shares; defaults shown from the table
BaseChannelsOpt = Annotated[Optional[int], typer.Option(
    help=f"unet: channels of the first level [{_default('unet', 'base_channels')}].", min=1)]
DepthOpt = Annotated[Optional[int], typer.Option(
    help=f"unet: number of poolings [{_default('unet', 'depth')}].", min=1, max=8)]
EncoderOpt = Annotated[Optional[str], typer.Option(
    help=f"smp-*: encoder, e.g. resnet34, efficientnet-b3 [{_default('smp-unet', 'encoder')}].")]
EncoderDepthOpt = Annotated[Optional[int], typer.Option(help=f"smp-*: encoder depth: {_depths()}.", min=3, max=5)]


class ProgressMode(str, Enum):
    bar = "bar"
    json = "json"
    none = "none"


ProgressOpt = Annotated[ProgressMode, typer.Option(
    "--progress", help="Progress on stderr: bar, json (one JSON object a line: stage, done, total, fraction; "
                       "for tools such as the QGIS plugin) or none (as --quiet).")]


# --- many inputs and Dask clusters (geoseg.batch, geoseg.distributed) ---
InputsArg = Annotated[List[str], typer.Argument(
    help="Inputs: files, directories (their .tif/.tiff files), glob patterns, or @list.txt (one path a line).",
    show_default=False, metavar="IMAGE")]
SchedulerOpt = Annotated[Optional[str], typer.Option(
    help="Run on this existing Dask cluster, e.g. tcp://10.0.0.5:8786 (inputs and outputs on storage all its "
         "workers see; see docs/distributed.md).")]
BlockRowsOpt = Annotated[Optional[int], typer.Option(
    help="On a cluster: split each input into blocks of about this many rows, computed by different workers "
         "(default: blocks of about 64 M pixels; inputs smaller than that run whole).", min=1)]


# ---------------------------------------------------------------------- training inputs (train, tune)
TrainImageOpt = Annotated[Optional[list[str]], typer.Option("--image", "-i", help="Input raster (a file, URL or GDAL /vsi path); repeat to stack single-band files in order.", metavar="PATH")]
TrainLabelsOpt = Annotated[Optional[str], typer.Option("--labels", help="Label raster (integer class values; 0 = unlabelled by default); a file, URL or GDAL /vsi path.", metavar="PATH")]
VectorLabelsOpt = Annotated[Optional[str], typer.Option("--vector-labels", help="Training polygons or points (GPKG, GeoJSON, Shapefile, GeoParquet...), any CRS; a file, URL or GDAL /vsi path.", metavar="PATH")]
ClassFieldOpt = Annotated[Optional[str], typer.Option("--class-field", help="Attribute of the polygons holding the class (name or number).")]
TrainDeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N [auto].")]
