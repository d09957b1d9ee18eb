"""The ``mmembed`` command line: one entry point; each sub-command lives in ``mmembed.commands``."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from typing import NoReturn

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


def entry(argv: list[str] | None = None) -> NoReturn:
    """The installed ``mmembed`` command: ``main``, then Python's exit work (atexit handlers, flushed output),
    then leave with ``main``'s status without running native libraries' static destructors.

    pyarrow's global thread pool can abort the process while it is torn down ("terminate called without an
    active exception", apache/arrow#34314): about 1 run in 12 of a local embed job that had written every
    shard and its summary then exited 134 instead of 0, a wrong status for scripts and schedulers.
    """
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    atexit._run_exitfuncs()  # logging flushes, multiprocessing joins its children, temporary dirs go
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
