"""``geoseg qgis build`` and ``geoseg qgis install``: the QGIS plugin (a Processing provider)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geoseg.cli import app
from geoseg.cli._options import OverwriteOpt

qgis_app = typer.Typer(help="Build the QGIS plugin zip or install it into a QGIS profile.", no_args_is_help=True)
app.add_typer(qgis_app, name="qgis")


@qgis_app.command("build")
def build(
    output: Annotated[Path, typer.Option("-o", "--output", help="Plugin zip to write.")] = Path("geoseg_qgis.zip"),
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the plugin zip (QGIS: Plugins > Manage and Install Plugins > Install from ZIP)."""
    from geoseg.cli._console import out
    from geoseg.qgis_package import build_zip

    out.print(f"plugin: {build_zip(output, overwrite=overwrite)}")


@qgis_app.command("install")
def install(
    profile: Annotated[str, typer.Option(help="QGIS user profile.")] = "default",
    profiles_path: Annotated[Optional[Path], typer.Option(help="QGIS profiles folder (default: this system's, e.g. ~/.local/share/QGIS/QGIS3/profiles).")] = None,
    command: Annotated[Optional[str], typer.Option(help="geoseg executable the plugin runs (default: this environment's; '' keeps the profile's setting).")] = None,
    zip_file: Annotated[Optional[Path], typer.Option("--zip", help="Install this plugin zip instead of the plugin of this installation.")] = None,
) -> None:
    """Install the plugin into a QGIS profile, enable it and set its geoseg command (restart QGIS after)."""
    from geoseg.cli._console import out
    from geoseg.qgis_package import install as run

    target = run(profile=profile, profiles_path=profiles_path, command=command, zip_path=zip_file)
    out.print(f"installed: {target}")
