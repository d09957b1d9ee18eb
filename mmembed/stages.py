"""The stages: each name maps to its config dataclass, its run function and its command-line handler, as module
paths imported on use. ``mmembed CMD``, ``mmembed run`` (job files) and ``python -m pipelines.X`` all read this
one table, so a new stage is one entry here plus its config and code.

A stage's options are its config's fields (``mmembed.options``); a command's own switches that are not part of
the config (``dedup --beam``) are a small dataclass too (``command_options``), so ``--help``, the unknown-option
hints and the parsers all come from declarations. Light on purpose: ``mmembed --help`` imports it.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mmembed.options import ConfigError, Parser, add_options, config_from_args, flag_names, suggestion


@dataclass(frozen=True)
class Stage:
    """One stage of the data flow. ``run`` is ``run(config)``, or ``run(config, beam_args, test_pipeline)`` for a
    Beam stage (options it does not know go to Beam); ``handler`` is the CLI's ``handler(args, extra) -> status``."""

    name: str
    help: str
    config: str  # "module:Class", the config dataclass (a module light enough for --help)
    run: str  # "module:function"
    handler: str  # "module:function"
    beam: bool = False
    command_options: str | None = None  # "module:Class": the command's switches beside the config's fields
    skip: tuple[str, ...] = ()  # config fields (dotted paths) the command line leaves to their defaults
    status: str | None = None  # "module:function": the run's summary -> exit status (0 when absent)

    def config_class(self) -> type:
        return _load(self.config)

    def run_function(self) -> Callable[..., Any]:
        return _load(self.run)

    def options_class(self) -> type | None:
        return _load(self.command_options) if self.command_options else None

    def exit_status(self, summary: Any) -> int:
        """The exit status a run with this summary ends with (0 done, 3 finished with failed units, 2 refused)."""
        return _load(self.status)(summary) if self.status else 0

    def handle(self, args: argparse.Namespace, extra: list[str]) -> int:
        """The CLI handler, imported now that this command runs."""
        return _load(self.handler)(args, extra)


STAGES = {
    stage.name: stage
    for stage in (
        Stage(
            "make-shards",
            "write WebDataset shards from images + captions",
            config="mmembed.config:MakeShardsConfig",
            run="mmembed.commands.embed:run_make_shards",
            handler="mmembed.commands.embed:make_shards",
            status="mmembed.commands.embed:make_shards_status",
        ),
        Stage(
            "embed",
            "embed WebDataset shards with OpenCLIP (Beam job; unknown options go to Beam)",
            config="mmembed.config:EmbedJobConfig",
            run="mmembed.embed.job:run_job",
            handler="mmembed.commands.embed:embed",
            status="mmembed.embed.summary:exit_status",
            beam=True,
        ),
        Stage(
            "train",
            "train or fine-tune an OpenCLIP model on image-text shards (writes <out>/model.pt for embed)",
            config="mmembed.train.config:TrainConfig",
            run="mmembed.train.loop:train",
            handler="mmembed.commands.train:train",
            skip=("init.batch_size", "decode.captions", "decode.metadata_key", "decode.exact_decode", "decode.decoder"),
        ),
        Stage(
            "index",
            "build image and text FAISS indexes from an embed job's output",
            config="mmembed.index.config:ShardedBuildConfig",
            run="pipelines.build_index:run_config",
            handler="mmembed.commands.index:index",
            beam=True,
            command_options="mmembed.commands.index:IndexCommand",
        ),
        Stage(
            "eval-index",
            "recall@1/10/100 and queries/s of an index vs exact search",
            config="mmembed.index.config:EvalIndexConfig",
            run="mmembed.commands.index:run_eval_index",
            handler="mmembed.commands.index:eval_index",
            command_options="mmembed.commands.index:EvalIndexCommand",
        ),
        Stage(
            "dedup",
            "find duplicate groups in an embed job's output and write a keep list",
            config="mmembed.dedup.config:DedupConfig",
            run="pipelines.dedup:run_config",
            handler="mmembed.commands.dedup:dedup_command",
            beam=True,
            command_options="mmembed.commands.dedup:DedupCommand",
        ),
        Stage(
            "search",
            "search an index with text or image queries",
            config="mmembed.search_config:SearchConfig",
            run="mmembed.commands.search:run_search",
            handler="mmembed.commands.search:search_command",
            command_options="mmembed.commands.search:SearchCommand",
        ),
        Stage(
            "export",
            "write the samples a query and/or --where select as new WebDataset shards plus a manifest",
            config="mmembed.export.config:ExportConfig",
            run="mmembed.export.run:run",
            handler="mmembed.commands.export:export_command",
            status="mmembed.commands.export:export_status",
        ),
        Stage(
            "serve",
            "HTTP search API and web page over an index",
            config="mmembed.serve.config:ServeConfig",
            run="mmembed.commands.serve:run_serve",
            handler="mmembed.commands.serve:serve_command",
        ),
    )
}


def stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"no stage {name!r}; the stages are {', '.join(STAGES)}")
    return STAGES[name]


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def add_stage_options(parser: argparse.ArgumentParser, stage: Stage, command: bool = True) -> None:
    """The stage's config options on ``parser``, and with ``command`` the CLI command's own switches."""
    add_options(parser, stage.config_class(), stage.skip)
    extra = stage.options_class() if command else None
    if extra is not None:
        add_options(parser, extra)


def stage_flags(stage: Stage, command: bool = True) -> list[str]:
    """Every flag (aliases included) the stage's parser takes."""
    extra = stage.options_class() if command else None
    return flag_names(stage.config_class(), stage.skip) + (flag_names(extra) if extra is not None else [])


def config_of(stage: Stage, args: argparse.Namespace) -> Any:
    """The stage's config that parsed options describe."""
    return config_from_args(stage.config_class(), args)


def command_options(stage: Stage, args: argparse.Namespace) -> Any:
    """The command's own switches (``stage.command_options``) that parsed options describe."""
    return config_from_args(stage.options_class(), args)


def check_unknown(stage: Stage, extra: Sequence[str], command: bool = True) -> None:
    """Refuse arguments the stage does not know and, for a Beam stage, Beam does not know either (Beam would drop
    them with a log line); the error names the right flag: other tools' spelling of one of ours, or the closest
    option of either."""
    beam: dict[str, Any] = {}
    if stage.beam:
        from mmembed.beam.options import beam_option_actions  # Beam only when there are extra arguments

        beam = beam_option_actions()
    ours = stage_flags(stage, command)
    for arg in extra:
        if not arg.startswith("--"):
            if stage.beam:
                continue  # a value of the option before it
            raise ConfigError(f"unrecognized argument {arg!r}")
        name = arg[2:].split("=", 1)[0]
        if name in beam or (name.startswith("no_") and name[3:] in beam):
            continue
        close = difflib.get_close_matches(name, list(beam), n=1, cutoff=0.8)
        hint = suggestion(f"--{name}", ours) or (f"did you mean --{close[0]}?" if close else None)
        has_it = f"neither mmembed {stage.name} nor Beam has it" if stage.beam else f"mmembed {stage.name} has none"
        raise ConfigError(f"unknown option --{name} ({has_it})" + (f"; {hint}" if hint else ""))


def parse_pipeline_args(
    name: str, argv: Sequence[str] | None, prog: str, description: str | None
) -> tuple[Any, list[str]]:
    """``python -m pipelines.X`` arguments -> (the stage's config, the Beam arguments): the same options as
    ``mmembed CMD`` (the config's; not the command's own switches), unknown ones checked as there."""
    found = stage(name)
    parser = Parser(prog=prog, description=description)
    add_stage_options(parser, found, command=False)
    args, beam_args = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    check_unknown(found, beam_args, command=False)
    return config_of(found, args), beam_args
