"""Build the QGIS plugin zip and install it into a QGIS user profile. Needs no QGIS and no torch.

The plugin's files live in ``geoseg/qgis_plugin/`` (shipped with the package); in the zip and in a
profile they sit in a folder named :data:`PLUGIN_DIR`, which is the plugin's id in QGIS.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

from geoseg.errors import UsageError
from geoseg.io.atomic import atomic_output, check_destination

#: the plugin's folder name, its id in QGIS (not ``geoseg``: that would shadow the package in QGIS's Python)
PLUGIN_DIR = "geoseg_qgis"

#: where the plugin's source files are
SOURCE = Path(__file__).resolve().parent / "qgis_plugin"

#: the provider setting holding the geoseg command (QGIS's settings key; see qgis_plugin/provider.py)
COMMAND_KEY = ("Processing", "Configuration\\GEOSEG_COMMAND")

_LICENSE = Path(__file__).resolve().parents[1] / "LICENSE"


def plugin_files() -> list[tuple[Path, str]]:
    """``(file, name in the zip)`` for every file of the plugin (no caches)."""
    files = [(p, f"{PLUGIN_DIR}/{p.relative_to(SOURCE).as_posix()}") for p in sorted(SOURCE.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    if _LICENSE.is_file():
        files.append((_LICENSE, f"{PLUGIN_DIR}/LICENSE"))
    return files


def file_bytes(path: Path) -> bytes:
    """A plugin file's content; ``metadata.txt`` gets this geoseg's version (the one place it is kept)."""
    from geoseg import __version__

    data = path.read_bytes()
    if path.name == "metadata.txt" and path.parent == SOURCE:
        lines = [f"version={__version__}" if line.startswith("version=") else line
                 for line in data.decode("utf-8").splitlines()]
        data = ("\n".join(lines) + "\n").encode("utf-8")
    return data


def build_zip(dest: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the plugin zip (installable with QGIS's 'Install from ZIP') atomically to ``dest``."""
    dest = Path(dest)
    if dest.suffix.lower() != ".zip":
        raise UsageError(f"{dest}: the plugin file must end in .zip")
    with atomic_output(dest, overwrite=overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for path, name in plugin_files():
                z.writestr(name, file_bytes(path))
    return dest


def default_profiles_path() -> Path:
    """Where QGIS 3 keeps user profiles on this system."""
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "QGIS" / "QGIS3" / "profiles"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "QGIS" / "QGIS3" / "profiles"
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "QGIS" / "QGIS3" / "profiles"


def default_command() -> Path:
    """The geoseg command of the environment running this code (its ``geoseg`` script, else its python)."""
    bindir = Path(sys.executable).parent
    for name in ("geoseg", "geoseg.exe"):
        if (bindir / name).is_file():
            return bindir / name
    return Path(sys.executable)


def install(*, profile: str = "default", profiles_path: str | os.PathLike[str] | None = None,
            command: str | os.PathLike[str] | None = None, zip_path: str | os.PathLike[str] | None = None) -> Path:
    """Install the plugin into a QGIS profile, enable it and point it at a geoseg command.

    Args:
        profile: QGIS user profile name (created when missing, as QGIS would).
        profiles_path: the profiles folder (default: :func:`default_profiles_path`).
        command: geoseg executable the plugin runs (default: :func:`default_command`); an empty
            string leaves the profile's current setting alone.
        zip_path: install from this plugin zip instead of the package's own files.

    Returns:
        The installed plugin folder. A previous install of the plugin there is replaced.
    """
    root = Path(profiles_path) if profiles_path is not None else default_profiles_path()
    if profiles_path is not None and not root.is_dir():
        raise UsageError(f"{root}: profiles folder does not exist; pass QGIS's profiles folder or create it")
    prof = root / profile
    plugins = prof / "python" / "plugins"
    target = plugins / PLUGIN_DIR
    staging = plugins / f".{PLUGIN_DIR}.geoseg-tmp"  # the new plugin folder, renamed into place at the end
    unpacked = plugins / f".{PLUGIN_DIR}.geoseg-tmp-zip"
    try:
        plugins.mkdir(parents=True, exist_ok=True)
        for d in (staging, unpacked):
            shutil.rmtree(d, ignore_errors=True)
        if zip_path is not None:
            with zipfile.ZipFile(zip_path) as z:
                names = z.namelist()
                if not names or any(not n.startswith(PLUGIN_DIR + "/") or ".." in Path(n).parts for n in names):
                    raise UsageError(f"{zip_path}: not a geoseg plugin zip (its files must be in {PLUGIN_DIR}/)")
                z.extractall(unpacked)
            (unpacked / PLUGIN_DIR).rename(staging)
            shutil.rmtree(unpacked)
        else:
            staging.mkdir()
            for path, name in plugin_files():
                dest = staging / Path(name).relative_to(PLUGIN_DIR)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(file_bytes(path))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        ini = prof / "QGIS" / "QGIS3.ini"
        ini.parent.mkdir(parents=True, exist_ok=True)
        ini_set(ini, "PythonPlugins", PLUGIN_DIR, "true")
        cmd = default_command() if command is None else command
        if str(cmd):
            ini_set(ini, *COMMAND_KEY, str(Path(cmd).absolute()))
    except (OSError, zipfile.BadZipFile) as e:
        raise UsageError(f"{root}: cannot install the plugin: {e}") from None
    finally:
        for d in (staging, unpacked):  # gone already after a success
            shutil.rmtree(d, ignore_errors=True)
    return target


def _quote(value: str) -> str:
    """A value as Qt's INI format reads it back unchanged (quoted, C-style escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ini_set(path: Path, section: str, key: str, value: str) -> None:
    """Set ``key`` in ``[section]`` of the Qt INI file ``path`` (QGIS's settings), keeping every other line."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    line = f"{key}={value if value in ('true', 'false') else _quote(value)}"
    start = next((i for i, t in enumerate(lines) if t.strip() == f"[{section}]"), None)
    if start is None:
        lines += ([""] if lines and lines[-1].strip() else []) + [f"[{section}]", line]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        hit = next((i for i in range(start + 1, end) if lines[i].split("=", 1)[0].strip() == key), None)
        if hit is None:
            lines.insert(start + 1, line)
        else:
            lines[hit] = line
    check_destination(path, overwrite=True)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
