"""Previewing a built site on this machine."""

from __future__ import annotations

import functools
import http.server
from pathlib import Path

__all__ = ["make_server", "serve"]

def make_server(out: str | Path, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``out`` bound to 127.0.0.1 only: a preview is for this machine."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def serve(out: str | Path, port: int = 8000) -> None:
    """Serve the built site on http://127.0.0.1:PORT/ until Ctrl-C."""
    with make_server(out, port) as server:
        print(f"serving {out} at http://127.0.0.1:{server.server_address[1]}/ "
              "(Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)
