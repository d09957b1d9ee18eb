"""The ``mmembed`` command line: one entry point. The stages' sub-commands come from ``mmembed.stages`` (their
options from their config dataclasses); the others (run, demo) register themselves from ``mmembed.commands``."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from typing import NoReturn

from mmembed import __version__
from mmembed.commands import demo, run
from mmembed.config import ConfigError
from mmembed.options import Parser
from mmembed.stages import STAGES, add_stage_options, check_unknown

COMMAND_MODULES = (run, demo)  # sub-commands that are not stages (after the stages)
GLOBAL_FLAGS = {"-v": "verbose", "--verbose": "verbose", "-q": "quiet", "--quiet": "quiet"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mmembed", description="Multimodal embedding at dataset scale.")
    parser.add_argument("--version", action="version", version=f"mmembed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and other libraries' INFO lines")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for stage in STAGES.values():
        command = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        add_stage_options(command, stage)
        command.set_defaults(handler=stage.handle, stage=stage, passes_unknown=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def split_global_flags(argv: list[str]) -> tuple[set[str], list[str]]:
    """``-v`` / ``-q`` wherever they stand (before or after the sub-command, up to a ``--``): which were
    given, and the other arguments in their order."""
    end = argv.index("--") if "--" in argv else len(argv)
    given = {GLOBAL_FLAGS[a] for a in argv[:end] if a in GLOBAL_FLAGS}
    return given, [a for i, a in enumerate(argv) if i >= end or a not in GLOBAL_FLAGS]


def configure_logging(verbose: bool, quiet: bool) -> None:
    """mmembed's own INFO lines by default; other libraries (open_clip, Beam, faiss) only warn unless -v."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    own = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("mmembed").setLevel(own)  # mmembed.progress too: -q silences progress lines and bars
    logging.getLogger("pipelines").setLevel(own)
    if verbose:  # huggingface_hub sets its own level (WARNING) when imported, from HF_HUB_VERBOSITY
        os.environ.setdefault("HF_HUB_VERBOSITY", "info")
        if "huggingface_hub" in sys.modules:
            logging.getLogger("huggingface_hub").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    flags, argv = split_global_flags(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    configure_logging("verbose" in flags, "quiet" in flags)
    if extra and not getattr(args, "passes_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if extra and getattr(args, "stage", None):  # Beam's options for a Beam stage; others refused, with a hint
            check_unknown(args.stage, extra)
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
