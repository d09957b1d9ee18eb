"""Job files: one YAML names a job, its config and its Beam options; ``mmembed run`` launches it.

    job: embed                  # a stage of mmembed.stages (embed, index, dedup, export, ...)
    config: {...}               # the stage's config dataclass, field by field
    beam_options: {...}         # Beam stages only: pipeline options by name (runner, project, ...); none: local
    description: free text      # optional, ignored

``config`` is the stage's config read by ``mmembed.options.config_from_dict``, the reader the command line's
options go through too: ``EmbedJobConfig`` for embed (nested ``encoder`` and ``decode``), ``ShardedBuildConfig``
for index (``IndexBuildConfig``'s keys beside ``files_per_part``; the sharded Beam build), ``DedupConfig`` for
dedup, and so on. ``beam_options`` become
``--name=value`` arguments: a list repeats the option, a mapping gives ``key=value`` items (resource hints),
``true`` on a flag option writes the bare flag. Unknown keys anywhere are an error naming them.
``--set config.encoder.device=cuda`` (a dotted path from the top, the value parsed as YAML) overrides
one value. Relative paths in a job file are relative to the directory ``mmembed run`` runs in.
"""

from __future__ import annotations

import argparse
import copy
import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from mmembed.config import ConfigError
from mmembed.options import config_from_dict
from mmembed.stages import STAGES

TOP_LEVEL_KEYS = ("job", "config", "beam_options", "description")


@dataclass(frozen=True)
class Job:
    """A parsed job file: which pipeline, its validated config, and the Beam arguments to run it with."""

    kind: str
    config: Any  # the stage's config: EmbedJobConfig, ShardedBuildConfig, DedupConfig ...
    beam_args: tuple[str, ...]
    source: str

    def describe(self) -> dict[str, Any]:
        """The resolved job as plain values (for ``mmembed run --show`` and logs)."""
        return {
            "job": self.kind,
            "source": self.source,
            "config": _plain(self.config),
            "beam_args": list(self.beam_args),
        }


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> Job:
    """Read a job file, apply ``--set KEY=VALUE`` overrides, validate everything."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"job file {str(path)!r} not found; the shipped ones are in jobs/*.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"job file {path}: not valid YAML ({exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"job file {path}: expected a mapping with keys {list(TOP_LEVEL_KEYS)}")
    return parse_job(apply_overrides(data, overrides), source=str(path))


def parse_job(data: Mapping[str, Any], source: str = "<job>") -> Job:
    """A job mapping (a parsed YAML file) -> ``Job``; every unknown key is reported with its place."""
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; known keys: {list(TOP_LEVEL_KEYS)}")
    kind = data.get("job")
    if kind not in STAGES:
        raise ConfigError(f"{source}: 'job' must be one of {list(STAGES)}, got {kind!r}")
    stage = STAGES[kind]
    config = _section(data, "config", source)
    options = _section(data, "beam_options", source)
    if options and not stage.beam:
        raise ConfigError(f"{source}: {kind} is not a Beam job; remove beam_options")
    try:
        parsed = config_from_dict(stage.config_class(), config, kind)
        args = beam_args(options) if options else []
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    except TypeError as exc:  # a value of the wrong shape, such as a list where a number belongs
        raise ConfigError(f"{source}: {kind} config: {exc}") from exc
    return Job(kind, parsed, tuple(args), source)


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``["config.out=/x", "beam_options.direct_num_workers=2"]`` applied to a copy of ``data``.

    The key is a dotted path from the top of the job file; the value is parsed as YAML (``2`` is a number,
    ``true`` a bool, ``[a, b]`` a list). Missing mappings along the path are created, so a misspelt key
    surfaces as an unknown key when the job is validated.
    """
    result = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set config.out=data/emb")
        path = key.strip().split(".")
        if path[0] not in TOP_LEVEL_KEYS:
            hint = f"; did you mean config.{key} or beam_options.{key}?" if path[0] not in ("", "job") else ""
            raise ConfigError(f"--set {item!r}: {path[0]!r} is not a top-level key {list(TOP_LEVEL_KEYS)}{hint}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} holds {child!r}, not a mapping")
            node = child
        node[path[-1]] = value
    return result


def beam_args(options: Mapping[str, Any]) -> list[str]:
    """Beam pipeline options by name -> ``--name=value`` arguments; unknown names are an error.

    A list repeats the option (``experiments``, ``dataflow_service_options``); a mapping becomes ``key=value``
    items (``resource_hints: {accelerator: ..., min_ram: 16GB}``); on a flag option (``--no_auth``), ``true``
    writes the flag, ``false`` leaves it out (or writes its ``--no_`` flag where Beam has one); ``null`` is Beam's
    default.
    """
    from mmembed.beam.options import beam_option_actions  # Beam only when a job file is resolved

    actions = beam_option_actions()
    unknown = sorted(k for k in options if k not in actions)
    if unknown:
        hints = {k: difflib.get_close_matches(k, list(actions), n=1) for k in unknown}
        named = ", ".join(f"{k!r}" + (f" (did you mean {v[0]!r}?)" if v else "") for k, v in hints.items())
        raise ConfigError(f"unknown Beam option(s) in beam_options: {named}")
    args: list[str] = []
    for name, value in options.items():
        args.extend(_option_args(name, value, actions[name]))
    _check_dataflow_gpu(options)
    return args


def run_job(job: Job, test_pipeline: Any = None) -> dict[str, Any]:
    """Run the job's stage; returns its summary (for index: the index's infos)."""
    stage = STAGES[job.kind]
    if stage.beam:
        return stage.run_function()(job.config, list(job.beam_args), test_pipeline)
    return stage.run_function()(job.config)


def _section(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {name!r} must be a mapping, got {type(value).__name__} {value!r}")
    return value


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# -- Beam options -------------------------------------------------------------------------------------------------


def _option_args(name: str, value: Any, candidates: list[argparse.Action]) -> list[str]:
    if value is None:  # null: Beam's default
        return []
    flags = [a for a in candidates if a.nargs == 0]  # store_true / store_false / store_const
    takes_value = [a for a in candidates if a.nargs != 0]
    if isinstance(value, bool) and flags:
        for action in flags:
            if action.const is value:
                return [_flag(action, name)]
        if not value:
            return []
        raise ConfigError(f"beam option {name!r} is a flag that cannot be set to {value!r}")
    if not takes_value:
        raise ConfigError(f"beam option {name!r} is a flag: give true or false, not {value!r}")
    action = takes_value[0]
    flag = _flag(action, name)
    if isinstance(value, Mapping):
        value = [f"{k}={v}" if v is not None else str(k) for k, v in value.items()]
    if isinstance(value, list | tuple):
        if not _repeatable(action):
            raise ConfigError(f"beam option {name!r} takes one value, not a list {list(value)!r}")
        return [f"{flag}={_text(v)}" for v in value]
    return [f"{flag}={_text(value)}"]


def _repeatable(action: argparse.Action) -> bool:
    """Append-style options: each occurrence adds to the list (Beam's comma-list options included)."""
    return isinstance(action, argparse._AppendAction) or type(action).__name__.endswith("ListAction")


def _flag(action: argparse.Action, name: str) -> str:
    long = [s for s in action.option_strings if s.startswith("--")]
    return f"--{name}" if f"--{name}" in long else long[0]


def _text(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        raise ConfigError(f"beam option value {value!r} must be a scalar here")
    return str(value)


def _check_dataflow_gpu(options: Mapping[str, Any]) -> None:
    """Dataflow: GPUs come from the worker_accelerator service option OR accelerator resource hints, not both."""
    service = options.get("dataflow_service_options") or []
    service = [service] if isinstance(service, str) else list(service)
    hints = options.get("resource_hints") or []
    if isinstance(hints, Mapping):
        hint_names = set(hints)
    else:
        hint_names = {str(h).split("=")[0] for h in ([hints] if isinstance(hints, str) else hints)}
    if any(str(s).startswith("worker_accelerator") for s in service) and hint_names:
        raise ConfigError(
            "beam_options sets both dataflow_service_options worker_accelerator and resource_hints "
            f"{sorted(hint_names)}: Dataflow's right fitting (resource hints) must not be combined with "
            "worker_accelerator; keep one of them"
        )
