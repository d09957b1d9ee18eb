"""Run the app under uvicorn: ``serve(config)`` blocks; ``running(config)`` serves from a thread (tests, benches)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from mmembed.serve.app import create_app
from mmembed.serve.config import ServeConfig

log = logging.getLogger(__name__)


def serve(config: ServeConfig) -> None:
    """Open the index and model, then serve HTTP on ``config.host:config.port`` until interrupted."""
    app = create_app(config)
    if not _is_loopback(config.host):
        log.warning(
            "listening on %s: reachable from other machines; the API has no authentication, "
            "so put it behind a proxy that has",
            config.host,
        )
    log.info("serving %s on http://%s:%d/", config.index_dir, config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5)


@contextlib.contextmanager
def running(config: ServeConfig, startup_timeout: float = 60.0) -> Iterator[str]:
    """Serve ``config`` from a background thread; yields the base URL (``port=0`` picks a free port)."""
    port = config.port or free_port(config.host)
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="mmembed-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server on {config.host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{config.host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
