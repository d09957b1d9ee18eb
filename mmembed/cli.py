"""The ``mmembed`` command line: one entry point; each sub-command lives in ``mmembed.commands``."""

from __future__ import annotations

import argparse
import logging
import sys

from mmembed.commands import dedup, demo, embed, index, run, search, serve, train
from mmembed.config import ConfigError

COMMAND_MODULES = (embed, train, index, search, dedup, serve, run, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmembed", description="Multimodal embedding at dataset scale.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if not args.verbose:
        logging.getLogger("apache_beam").setLevel(logging.WARNING)  # Beam's INFO lines drown the job's own progress
    if extra and not getattr(args, "passes_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args, extra)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"mmembed {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
