"""Running the app: ``serve`` (the command line's, blocking) and ``background_server`` (a real server on a
free loopback port in a thread, for tests and the load benchmark)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """Serve ``app`` until interrupted (one process; the app's own queue bounds the work)."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)


@contextmanager
def background_server(app, host: str = "127.0.0.1", log_level: str = "warning") -> Iterator[str]:
    """``app`` served by uvicorn on a free port of ``host`` in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server stopped while starting (see its log above)")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
