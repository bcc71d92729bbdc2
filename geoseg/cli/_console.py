"""Shared rich consoles and small rendering helpers for the CLI."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def warn_line(msg: str) -> None:
    err.print(f"[yellow]warning:[/] {msg}", markup=True)
