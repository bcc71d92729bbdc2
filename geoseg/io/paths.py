"""Where data lives: local files, URLs and GDAL's virtual file systems, as paths GDAL opens.

``https://host/x.tif`` and ``http://`` become ``/vsicurl/https://host/x.tif`` (HTTP range requests:
only the blocks read are fetched), ``s3://bucket/key`` ``/vsis3/bucket/key`` (credentials from the
usual AWS variables), ``gs://`` ``/vsigs/``, ``az://`` ``/vsiaz/``; ``/vsicurl/``, ``/vsizip/`` and
the other ``/vsi`` paths pass as they are. These strings must never go through :class:`pathlib.Path`,
which turns ``/vsicurl/http://host`` into ``/vsicurl/http:/host``.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

#: URL schemes and the GDAL virtual file system that reads them
SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "ftp": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/",
           "az": "/vsiaz/"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def gdal_path(path: str | os.PathLike[str]) -> str:
    """The path GDAL opens for ``path``: URLs mapped to their virtual file system, others unchanged."""
    text = os.fspath(path)
    m = _URL.match(text)
    if m is None:
        return text
    scheme = m.group(1).lower()
    if scheme == "file":
        return text[len("file://"):]
    prefix = SCHEMES.get(scheme)
    if prefix is None:
        return text  # GDAL says what it makes of it
    return prefix + (text if prefix == "/vsicurl/" else text[m.end():])


def is_virtual(path: str | os.PathLike[str]) -> bool:
    """A URL or a GDAL ``/vsi`` path: not a local file that :mod:`os` can stat."""
    return gdal_path(path).startswith("/vsi")


#: a URL or a GDAL virtual path, also after :class:`pathlib.Path` folded a URL's ``//`` (``s3:/bucket/key``)
_REMOTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]+:/|/vsi[a-z0-9_]+/)")


def as_typed(path: str | os.PathLike[str]) -> str:
    """``path`` as text, a URL's ``//`` put back where :class:`pathlib.Path` folded it (for messages)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", r"\1://", os.fspath(path))


def is_remote_path(path: str | os.PathLike[str]) -> bool:
    """``path`` names a URL or a GDAL ``/vsi`` path (even one that went through :class:`pathlib.Path`):
    not a place to write outputs, nor to read models from."""
    return bool(_REMOTE.match(os.fspath(path)))


def name_stem(path: str | os.PathLike[str]) -> str:
    """The stem of the last component of ``path`` (a URL's query string left out): output names."""
    text = gdal_path(path).split("?", 1)[0].rstrip("/")
    base = text.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base[1:] else base


def beside(path: str | os.PathLike[str]) -> "Path":
    """The folder outputs of ``path`` go to by default: its own, or the working directory for a URL."""
    from pathlib import Path

    return Path(".") if is_virtual(path) else Path(path).parent


def remote_fingerprint(path: str, ds: Any) -> dict[str, Any]:
    """What identifies a remote raster for resuming, without reading all of it: its path, size, grid
    and type, and a digest of its first block row (a replaced file changes it)."""
    import hashlib

    import numpy as np
    from rasterio.windows import Window

    bh = ds.block_shapes[0][0] if ds.block_shapes else 1
    first = ds.read(window=Window(0, 0, ds.width, min(bh, ds.height)))
    return {"path": path, "width": ds.width, "height": ds.height, "count": ds.count,
            "dtypes": list(ds.dtypes), "transform": list(ds.transform)[:6],
            "first_rows_sha256": hashlib.sha256(np.ascontiguousarray(first).tobytes()).hexdigest()}
