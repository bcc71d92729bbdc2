"""Option aliases shared by several commands (typer ``Annotated`` types)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from geoseg.architectures import ARCHITECTURES

OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]

#: the --arch choices: the architecture table's names (torch-free, so --help stays fast)
Arch = Enum("Arch", [(name, name) for name in ARCHITECTURES], type=str)  # type: ignore[misc]
ARCH_HELP = ("Architecture: unet (geoseg's U-Net), smp-* (segmentation-models-pytorch decoders, any smp encoder) "
             "or tempcnn (per pixel, time series); the table with defaults is in docs/models.md.")
