"""HTTP search API and web page over a built index (``mmembed serve``); needs the ``serve`` extra.

``create_app(ServeConfig) -> FastAPI`` and ``serve(ServeConfig)`` are imported lazily, so importing this
package (or its ``cli`` module) works without FastAPI installed.
"""

from __future__ import annotations

from typing import Any

from mmembed.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from mmembed.serve.app import create_app

        return create_app
    if name == "serve":
        from mmembed.serve.server import serve

        return serve
    raise AttributeError(name)
