"""Run the ``geoseg`` command of a configured Python environment as a subprocess.

QGIS's own Python usually lacks torch, so the plugin never imports geoseg: it runs the command
line, reads its ``--progress json`` lines from stderr for the progress bar, passes other lines
on as messages, and stops the process (SIGTERM: geoseg keeps what ``--resume`` needs) when the
user cancels. This module imports nothing from QGIS, so it also runs (and is tested) outside it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

#: the oldest geoseg whose command line the plugin speaks (it needs ``--progress json``)
MIN_VERSION = (0, 1, 0)

#: environment variables of QGIS's own Python, GDAL and PROJ that must not leak into the
#: geoseg environment (its rasterio/pyproj bring their own GDAL and PROJ data)
_QGIS_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONEXECUTABLE", "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB",
             "PROJ_DATA", "GDAL_PLUGINS")

#: seconds between checks of the Cancel button, and the grace period after SIGTERM
POLL_SECONDS = 0.2
STOP_SECONDS = 30.0


class GeosegCommandError(Exception):
    """The geoseg command is missing, too old, or failed (the message says which and what to do)."""


def resolve_command(setting: str | None) -> list[str]:
    """The command line prefix that runs geoseg.

    ``setting`` (the provider's setting) is the ``geoseg`` executable of an environment, or a
    Python interpreter of one (then ``python -m geoseg`` runs); empty means the ``GEOSEG_COMMAND``
    environment variable, else ``geoseg`` on the PATH.
    """
    value = (setting or "").strip() or os.environ.get("GEOSEG_COMMAND", "").strip()
    if not value:
        found = shutil.which("geoseg")
        if found is None:
            raise GeosegCommandError(
                "geoseg command not found: install geoseg in a Python environment (pip install geoseg) and set "
                "its 'geoseg' executable under Settings > Options > Processing > Providers > geoseg")
        return [found]
    if not (os.path.isfile(value) and os.access(value, os.X_OK)):
        raise GeosegCommandError(f"geoseg command {value!r} does not exist or is not executable: set the 'geoseg' "
                                 "executable of an environment under Settings > Options > Processing > Providers > "
                                 "geoseg")
    name = os.path.basename(value).lower()
    # -P: the working directory (a QGIS project folder) is not put first on sys.path, so nothing there
    # (a folder named geoseg, a json.py) shadows the installed package
    return [value, "-P", "-m", "geoseg"] if name.startswith("python") else [value]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for geoseg: QGIS's own Python/GDAL/PROJ variables removed."""
    env = {k: v for k, v in os.environ.items() if k not in _QGIS_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


_checked: dict[tuple[str, ...], str] = {}


def check_version(command: Sequence[str]) -> str:
    """``geoseg --version`` of ``command`` (cached); GeosegCommandError when it cannot run or is too old."""
    key = tuple(command)
    if key in _checked:
        return _checked[key]
    try:
        r = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120, env=clean_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GeosegCommandError(f"cannot run {' '.join(command)}: {e}") from None
    m = re.search(r"geoseg (\d+)\.(\d+)\.(\d+)", r.stdout)
    if r.returncode != 0 or m is None:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        raise GeosegCommandError(f"{' '.join(command)} --version failed ({tail[0][:200]}): is it geoseg's command?")
    version = tuple(int(g) for g in m.groups())
    help_text = subprocess.run([*command, "infer", "--help"], capture_output=True, text=True, timeout=120,
                               env=clean_env()).stdout
    if version < MIN_VERSION or "--progress" not in help_text:
        raise GeosegCommandError(f"geoseg {'.'.join(map(str, version))} at {command[0]} is too old for this plugin: "
                                 f"upgrade it (pip install -U geoseg) to {'.'.join(map(str, MIN_VERSION))} or newer "
                                 "with --progress json")
    _checked[key] = ".".join(map(str, version))
    return _checked[key]


def _pump(stream: Any, q: "queue.Queue[str | None]") -> None:
    for line in iter(stream.readline, ""):
        q.put(line)
    q.put(None)


def run(command: Sequence[str], args: Sequence[str], *, on_progress: Callable[[float | None, str], None],
        on_message: Callable[[str], None], is_canceled: Callable[[], bool],
        cwd: str | None = None, progress: bool = True) -> tuple[int, bool]:
    """Run ``command args --progress json`` (without ``--progress`` when ``progress`` is false: a
    command without progress); returns ``(exit code, canceled)``.

    ``on_progress(fraction or None, stage)`` gets every progress line, ``on_message`` every other
    line of stdout and stderr. When ``is_canceled()`` turns true the process gets SIGTERM (geoseg
    removes partial outputs and keeps what ``--resume`` needs), then a kill after
    :data:`STOP_SECONDS`.
    """
    full = [*command, *args, *(["--progress", "json"] if progress else [])]
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace", env=clean_env(), cwd=cwd, creationflags=flags)
    q: "queue.Queue[str | None]" = queue.Queue()
    pumps = [threading.Thread(target=_pump, args=(s, q), daemon=True) for s in (proc.stdout, proc.stderr)]
    for t in pumps:
        t.start()
    open_streams, canceled, stop_at = len(pumps), False, None
    while open_streams:
        if not canceled and is_canceled():
            canceled = True
            proc.terminate()
            stop_at = time.monotonic() + STOP_SECONDS
        if stop_at is not None and time.monotonic() > stop_at and proc.poll() is None:
            proc.kill()
        try:
            line = q.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
            continue
        line = line.rstrip("\n")
        event = _progress_event(line)
        if event is not None:
            on_progress(event.get("fraction"), str(event.get("stage", "")))
        elif line.strip():
            on_message(line)
    for s in (proc.stdout, proc.stderr):
        if s is not None:
            s.close()
    return proc.wait(), canceled


def _progress_event(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        d = json.loads(line)
    except ValueError:
        return None
    return d if isinstance(d, dict) and d.get("event") == "progress" else None
