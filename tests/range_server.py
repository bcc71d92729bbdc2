"""A static HTTP server with range requests (what GDAL's /vsicurl/ asks for), for the remote-input tests.

Run as its own process (``python tests/range_server.py ROOT``: it prints its port, then serves until
killed). As a thread of the test process it answered too late while pyogrio read a GeoPackage page by
page over /vsicurl/ (SQLite's "database disk image is malformed" after the 20 s HTTP timeout, which
looked like a GDAL limitation); the same reads from a server in another process give the local result.
"""

from __future__ import annotations

import http.server
import sys
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` support."""

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        a, _, b = rng.replace("bytes=", "").partition("-")
        start, end = int(a or 0), min(int(b) if b else size - 1, size - 1)
        if start >= size:
            self.send_error(416)
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by the base class after copyfile
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):  # type: ignore[no-untyped-def]
        n = getattr(self, "_remaining", None)
        if n is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(n))


def main() -> None:
    root = sys.argv[1]

    def handler(*args, **kwargs):  # type: ignore[no-untyped-def]
        return RangeHandler(*args, directory=root, **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
