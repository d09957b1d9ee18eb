"""``mmembed serve``: the HTTP search API and web page over an index. Its options are ``ServeConfig``'s fields
(``mmembed.stages``); ``python -m mmembed.serve`` takes the same."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mmembed.config import ConfigError
from mmembed.options import Parser
from mmembed.serve.config import ServeConfig
from mmembed.stages import add_stage_options, config_of, stage

INSTALL_HINT = "mmembed serve needs the serve extra: pip install 'mmembed[serve]'"


def run_serve(config: ServeConfig) -> dict[str, Any]:
    """Serve until stopped (Ctrl+C, SIGTERM); then what was served (``mmembed run``'s summary)."""
    try:
        from mmembed.serve.server import serve
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
    serve(config)
    return {"index": config.index_dir, "host": config.host, "port": config.port}


def serve_command(args: argparse.Namespace, extra: list[str]) -> int:
    run_serve(config_of(stage("serve"), args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mmembed.serve --index DIR ...`` (the same as ``mmembed serve``)."""
    import logging

    found = stage("serve")
    parser = Parser(prog="python -m mmembed.serve", description="HTTP search over an mmembed index")
    add_stage_options(parser, found)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve_command(args, [])
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"mmembed serve: error: {exc}", file=sys.stderr)
        return 2
