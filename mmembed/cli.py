"""The ``mmembed`` command line: one entry point; each sub-command lives in ``mmembed.commands``."""

from __future__ import annotations

import argparse
import atexit
import difflib
import logging
import os
import sys
from typing import NoReturn

from mmembed import __version__
from mmembed.commands import dedup, demo, embed, index, run, search, serve, train
from mmembed.config import ConfigError

COMMAND_MODULES = (embed, train, index, search, dedup, serve, run, demo)
GLOBAL_FLAGS = {"-v": "verbose", "--verbose": "verbose", "-q": "quiet", "--quiet": "quiet"}


class DefaultsHelp(argparse.HelpFormatter):
    """``--help`` lines end with the option's default, unless it has none (None, a flag's False) or the help
    text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
        return f"{text} (default: %(default)s)" if shown and action.option_strings else text


class Parser(argparse.ArgumentParser):
    """Every mmembed parser: no abbreviated option names (``--mode`` must never mean ``--model``), and the
    defaults shown in ``--help``."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - argparse's own signature
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelp)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mmembed", description="Multimodal embedding at dataset scale.")
    parser.add_argument("--version", action="version", version=f"mmembed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and other libraries' INFO lines")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
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
    logging.getLogger("mmembed").setLevel(own)
    logging.getLogger("pipelines").setLevel(own)


def check_beam_options(command: str, extra: list[str], parser: argparse.ArgumentParser) -> None:
    """Arguments the command does not know go to Beam: refuse those Beam does not know either (Beam would drop
    them with a log line), suggesting the closest option of either."""
    from mmembed.beam.options import beam_option_actions  # Beam only when there are extra arguments

    beam = beam_option_actions()
    ours = [s for a in parser._subparsers._group_actions[0].choices[command]._actions for s in a.option_strings]
    for arg in extra:
        if not arg.startswith("--"):
            continue  # a value of the option before it
        name = arg[2:].split("=", 1)[0]
        if name in beam or (name.startswith("no_") and name[3:] in beam):
            continue
        spelled = "--" + name.replace("_", "-")
        close = difflib.get_close_matches(spelled, ours, n=1) or difflib.get_close_matches(
            name, list(beam), n=1, cutoff=0.8
        )
        hint = f"; did you mean {close[0] if close[0].startswith('-') else '--' + close[0]}?" if close else ""
        raise ConfigError(f"unknown option --{name} (neither mmembed {command} nor Beam has it){hint}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    flags, argv = split_global_flags(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    configure_logging("verbose" in flags, "quiet" in flags)
    if extra and not getattr(args, "passes_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if extra:
            check_beam_options(args.command, extra, parser)
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
