"""Helpers the tests share: a real HTTP server on loopback, and a run's outcome."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio

from bridge import SpellError


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threading HTTP server on 127.0.0.1 (a free port) answering with ``handler``,
    for the block: its base URL (``http://127.0.0.1:PORT``)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_outcome(host: Any, source: str, language: str) -> tuple[Any, Any]:
    """``(result or the SpellError it failed with, the run)`` of ``source`` on ``host``."""
    run = host.new_run_source(source, language)
    try:
        return anyio.run(run.execute), run
    except SpellError as err:
        return err, run
