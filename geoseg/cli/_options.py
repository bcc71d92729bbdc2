"""Option aliases shared by several commands (typer ``Annotated`` types)."""

from __future__ import annotations

from typing import Annotated

import typer

OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
