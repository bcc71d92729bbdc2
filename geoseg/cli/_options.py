"""Option aliases shared by several commands (typer ``Annotated`` types)."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]

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
