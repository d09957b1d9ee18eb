"""HTTP search API and web page over a built index (``mmembed serve``); needs the ``serve`` extra.

``create_app(ServeConfig) -> FastAPI`` and ``serve(ServeConfig)`` are imported lazily, so importing this
package (or its ``cli`` module) works without FastAPI installed.
"""

from __future__ import annotations

from mmembed.lazy import lazy_exports
from mmembed.serve.config import ServeConfig

_HOMES = {"create_app": "mmembed.serve.app", "serve": "mmembed.serve.server"}
__all__ = ["ServeConfig", "create_app", "serve"]
__getattr__ = lazy_exports(__name__, _HOMES)
