"""Regenerate docs/cli.md from the commands' --help (tests/test_docs.py checks it is current).

    python docs/make_cli_docs.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands() -> list[list[str]]:
    """Every command and subcommand of the CLI, in its --help order (a new one is documented by itself)."""
    import typer  # noqa: TID251 (a docs tool reads the CLI itself)

    sys.path.insert(0, str(ROOT))
    from geoseg.cli import app

    def walk(group: object, prefix: list[str]) -> list[list[str]]:
        out = []
        for name, cmd in getattr(group, "commands", {}).items():
            sub = getattr(cmd, "commands", None)
            out += walk(cmd, [*prefix, name]) if sub else [[*prefix, name]]
        return out

    return [[], *walk(typer.main.get_command(app), [])]


def _help(cmd: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "110", "NO_COLOR": "1", "TERM": "dumb"}
    r = subprocess.run([sys.executable, "-m", "geoseg", *cmd, "--help"], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    return "\n".join(line.rstrip() for line in r.stdout.strip("\n").splitlines())


def render() -> str:
    parts = ["# CLI reference", "",
             "Generated from `--help` by `python docs/make_cli_docs.py`. `tests/test_docs.py` fails when this",
             "page and the code disagree. Every command also accepts `--debug`, which shows full tracebacks",
             "(or set `GEOSEG_DEBUG=1`).", ""]
    for cmd in commands():
        parts += [f"## `{' '.join(['geoseg', *cmd])}`", "", "```text", _help(cmd), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(render())
    print(ROOT / "docs" / "cli.md")
