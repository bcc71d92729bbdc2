"""Option aliases shared by several commands (typer ``Annotated`` types)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]


class ProgressMode(str, Enum):
    bar = "bar"
    json = "json"
    none = "none"


ProgressOpt = Annotated[ProgressMode, typer.Option(
    "--progress", help="Progress on stderr: bar, json (one JSON object a line: stage, done, total, fraction; "
                       "for tools such as the QGIS plugin) or none (as --quiet).")]
