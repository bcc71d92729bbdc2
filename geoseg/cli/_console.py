"""Shared rich consoles and small rendering helpers for the CLI.

User text (file names, class and band names from checkpoints or label files, messages that
quote them) is shown as it is: the consoles parse no markup, and control characters (escape
sequences, carriage returns, newlines in a name) are shown escaped, never sent to the terminal.
Styled parts are built as :class:`rich.text.Text`.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from geoseg.errors import for_cli

#: control characters other than tab and newline, shown as ``\\xNN``
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0, 9), *range(11, 32), 127]}


def safe(text: Any) -> str:
    """``text`` as a string whose control characters (but tab and newline) are escaped."""
    return str(text).translate(_CONTROL)


def safe_line(text: Any) -> str:
    """:func:`safe`, with newlines escaped too: one line whatever a file name holds."""
    return safe(text).replace("\n", "\\n")


class SafeConsole(Console):
    """A console that prints strings literally: no markup, control characters escaped."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("highlight", False)
        super().__init__(**kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs["markup"] = False
        super().print(*(safe(o) if isinstance(o, str) else o for o in objects), **kwargs)


out = SafeConsole()
err = SafeConsole(stderr=True)


def styled(label: str, style: str, rest: Any = "") -> Text:
    """``label`` in ``style`` followed by ``rest`` as plain, safe text."""
    return Text.assemble((label, style), safe_line(rest) if rest != "" else "")


def warn_line(msg: str) -> None:
    """A warning of the library (its parameter names shown as flags, :func:`geoseg.errors.for_cli`)."""
    err.print(styled("warning:", "yellow", f" {for_cli(msg)}"))


def say(msg: str) -> None:
    """A line of the library's progress messages on stderr, in the CLI's words (flags)."""
    err.print(for_cli(msg))
