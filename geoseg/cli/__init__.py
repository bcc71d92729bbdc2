"""The ``geoseg`` command line. Only this package imports typer and rich.

Modules here import torch, torchgeo, geopandas only inside command bodies, so
``geoseg --help`` stays fast. Errors are handled once, in :func:`main`. The library's errors and
warnings name parameters (``tile_size`` in backticks); what the CLI shows of them goes through
:func:`geoseg.errors.for_cli`, which names their flags (``--tile-size``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import warnings
from typing import Any

import typer

from geoseg import __version__
from geoseg.errors import GeosegError, Interrupted, for_cli


def _plain_type(self: Any, ctx: Any) -> str | None:
    """The type column of ``--help``, short: none for on/off flags (typer showed ``<bool>``, which reads
    like a value to type), ``<path>`` for a repeatable path (not ``<list[Path]>``), ``<int>`` for a
    bounded int (the bounds follow in brackets). Narrow terminals keep room for the descriptions."""
    if getattr(self, "is_bool_flag", False):
        return None
    text = _typer_display_type(self, ctx)
    if text is None:
        return None
    inner = text[1:-1] if text.startswith("<") and text.endswith(">") else text
    if inner.startswith("list[") and inner.endswith("]"):
        inner = inner[5:-1]
    inner = inner.replace(" range", "").replace("Path", "path")
    return f"<{inner}>"


_typer_display_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _plain_type  # type: ignore[method-assign]
_typer_argument_type = typer.core.TyperArgument.display_type_rich


def _argument_type(self: Any, ctx: Any) -> str | None:
    """Arguments' type column: none for the lists of inputs (``{IMAGE}...`` says it; not ``<list[str]>``)."""
    text = _typer_argument_type(self, ctx)
    return None if text is not None and "list[" in text else text


typer.core.TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign]

app = typer.Typer(
    name="geoseg",
    help="Segment large satellite and aerial GeoTIFFs into crop and land-cover maps and polygons.\n\n"
         "Add --debug anywhere (or set GEOSEG_DEBUG=1) to see full tracebacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geoseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Segment large satellite and aerial GeoTIFFs into crop and land-cover maps and polygons."""


# Each command module adds its commands to ``app`` on import.
from geoseg.cli import model as _model  # noqa: E402,F401
from geoseg.cli import infer as _infer  # noqa: E402,F401
from geoseg.cli import vectorize as _vectorize  # noqa: E402,F401
from geoseg.cli import train as _train  # noqa: E402,F401
from geoseg.cli import tune as _tune  # noqa: E402,F401
from geoseg.cli import evaluate as _evaluate  # noqa: E402,F401
from geoseg.cli import preview as _preview  # noqa: E402,F401
from geoseg.cli import qgis as _qgis  # noqa: E402,F401


def _stopping() -> None:
    """After the first Ctrl-C or SIGTERM, later ones are ignored: the cleanup they would cut short (waiting
    for threads that are inside GDAL, removing partial files) then runs to its end and the exit is 130.
    (A second Ctrl-C used to kill the process by SIGINT mid-cleanup in 24 of 30 trials.)"""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _on_sigint(signum: int, frame: Any) -> None:
    _stopping()
    raise KeyboardInterrupt


def _on_sigterm(signum: int, frame: Any) -> None:
    _stopping()
    raise Interrupted("terminated (SIGTERM)")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one 'warning: ...' line on stderr (no file/line noise unless --debug)."""
    from geoseg.cli._console import SafeConsole, styled

    if issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
        return
    SafeConsole(stderr=True, soft_wrap=True).print(styled("warning:", "yellow", f" {for_cli(message)}"))


def _err(msg: str) -> None:
    from geoseg.cli._console import SafeConsole, styled

    SafeConsole(stderr=True, soft_wrap=True).print(styled("error:", "bold red", f" {msg}"))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turn known errors into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("GEOSEG_DEBUG", "") not in ("", "0")
    if "--debug" in args:
        debug = True
        args = [a for a in args if a != "--debug"]
    if not debug:
        warnings.showwarning = _show_warning
    with contextlib.suppress(Exception):  # sys.stderr may be no file (redirected in-process)
        faulthandler.enable()  # a crash (SIGSEGV) names where it happened
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored
                signal.signal(signal.SIGINT, _on_sigint)
        except ValueError:  # not in the main thread
            pass
        try:
            rc = app(args=args, prog_name="geoseg", standalone_mode=False)
        except GeosegError as e:
            if debug:
                raise
            _err(for_cli(e))  # shown literally: the console parses no markup
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            if debug:
                raise
            _err("interrupted; partial outputs were removed")
            sys.exit(130)
        except SystemExit:
            raise
        except Exception as e:  # usage errors from typer/click carry exit codes
            code = getattr(e, "exit_code", None)
            if code is not None and hasattr(e, "show"):
                e.show()  # click-style usage error: already one clear line
                sys.exit(code)
            if debug:
                raise
            from geoseg.errors import error_text, is_disk_full

            if is_disk_full(e):
                _err(f"the disk is full ({error_text(e, 120)}); free space or write the outputs elsewhere")
                sys.exit(1)
            _err(f"unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                 "(rerun with --debug for the traceback and report it)")
            sys.exit(1)
        # standalone_mode=False returns the code of typer.Exit instead of raising it; typer turns Ctrl-C in a
        # command into Exit(130) without a word, so say it here (infer and train say more themselves)
        if rc == 130:
            _err("interrupted; partial outputs were removed; run the command again to redo it")
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    finally:
        if argv is not None:  # called as a function (tests, other programs): their handlers as they were
            for sig, handler in handlers.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, handler)
