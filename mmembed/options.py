"""Options declared once, in the fields of a stage's config dataclass; everything else is generated from them.

A field's name, type and default are the option's; ``option(...)`` adds its help text, flag, aliases and
choices in the field's metadata. From that one declaration come the parser of ``mmembed CMD`` and of
``python -m pipelines.X`` (``add_options``, ``config_from_args``) and the reader of job files
(``config_from_dict``), so the command line and a YAML job give equal configs for the same values.

Nested config fields (``EmbedJobConfig.encoder``) are groups of options on the command line and mappings in a
job file (or keys beside the parent's with ``flatten``). Light on purpose: ``mmembed --help`` imports it.
"""

from __future__ import annotations

import argparse
import difflib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any

OPTION = "mmembed.option"  # the field metadata key that holds an Option


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


@dataclass(frozen=True)
class Option:
    """How a config field appears on the command line; its name, type and default are the field's own."""

    help: str = ""
    flag: str | None = None  # default: --field-name (--no-field-name for a flag that defaults to True)
    aliases: tuple[str, ...] = ()  # other tools' spellings of the same option, accepted too
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    split: bool = False  # a list that may also come as one comma-separated value ("exact,semantic")
    exclusive: str | None = None  # options naming the same group cannot be given together
    cli: bool = True  # False: set in job files and Python only
    flatten: bool = False  # a nested config whose keys sit beside this config's own (job files, namespaces)
    positional: bool = False  # an argument without a flag (``mmembed search "a cat"``), optional on the command line


def option(default: Any = MISSING, *, factory: Any = MISSING, **declared: Any) -> Any:
    """A dataclass field with its command-line declaration (see ``Option``); no default means required."""
    return field(default=default, default_factory=factory, metadata={OPTION: Option(**declared)})


@dataclass(frozen=True)
class Declared:
    """One command-line option of a config: where its value goes and how argparse reads it."""

    path: tuple[str, ...]  # field names from the top config down, flattened ones included
    dest: str  # the argparse destination: the path without flattened names, dot-joined
    field: Field
    kind: Any  # the field's type without None
    option: Option
    group: str | None  # the nested config's title in --help (its field's help, else its name)

    @property
    def flags(self) -> list[str]:
        if self.option.positional:
            return []
        name = self.path[-1].replace("_", "-")
        default = f"--no-{name}" if self.kind is bool and self.field.default is True else f"--{name}"
        return [self.option.flag or default, *self.option.aliases]


def declared(cls: type, skip: Sequence[str] = ()) -> list[Declared]:
    """Every command-line option of config class ``cls``, nested configs' included, minus the dotted ``skip``
    paths (``init.batch_size``)."""
    return [d for d in _walk(cls, (), (), None) if d.option.cli and ".".join(d.path) not in skip]


def _walk(cls: type, path: tuple[str, ...], dest: tuple[str, ...], group: str | None) -> Iterator[Declared]:
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind = _without_none(hints[f.name])
        opt = f.metadata.get(OPTION, Option())
        if is_dataclass(kind):
            inner_dest = dest if opt.flatten else (*dest, f.name)
            yield from _walk(kind, (*path, f.name), inner_dest, group if opt.flatten else opt.help or f.name)
        else:
            yield Declared((*path, f.name), ".".join((*dest, f.name)), f, kind, opt, group)


def _without_none(kind: Any) -> Any:
    """``int | None`` -> int; ``str | int`` -> str (the command line gives text; the config parses it)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def _nested_class(kind: Any) -> type | None:
    kind = _without_none(kind)
    return kind if is_dataclass(kind) else None


# -- argparse -----------------------------------------------------------------------------------------------------


class DefaultsHelp(argparse.HelpFormatter):
    """``--help`` lines end with the option's default, unless it has none (None, a flag's False) or the help
    text already says it; an option's other spellings stand beside it (``--batch-size, --batch_size N``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
        return f"{text} (default: %(default)s)" if shown and action.option_strings else text

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


class Parser(argparse.ArgumentParser):
    """Every mmembed parser: no abbreviated option names (``--mode`` must never mean ``--model``), and the
    defaults shown in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelp)
        super().__init__(*args, **kwargs)


def add_options(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add an option for every field of config class ``cls`` (see ``declared``). Options left out keep no value
    in the namespace, so ``config_from_args`` takes the dataclass's own default: the one ``--help`` shows."""
    groups: dict[str | None, Any] = {None: parser}
    exclusive: dict[tuple[str | None, str], Any] = {}
    for item in declared(cls, skip):
        if item.group not in groups:
            groups[item.group] = parser.add_argument_group(f"{item.group} options")
        container = groups[item.group]
        if item.option.exclusive:
            key = (item.group, item.option.exclusive)
            if key not in exclusive:
                exclusive[key] = container.add_mutually_exclusive_group()
            container = exclusive[key]
        container.add_argument(*(item.flags or [item.dest]), **_argparse_kwargs(item))


def _argparse_kwargs(item: Declared) -> dict[str, Any]:
    f, opt, kind = item.field, item.option, item.kind
    if opt.positional:  # argparse names a positional's destination after it; left out, it keeps no value
        return {"nargs": "?", "default": argparse.SUPPRESS, "help": _help(item), "metavar": opt.metavar}
    kwargs: dict[str, Any] = {"dest": item.dest, "default": argparse.SUPPRESS, "help": _help(item)}
    if kind is bool:
        kwargs["action"] = "store_false" if f.default is True else "store_true"
        return kwargs
    if f.default is MISSING and f.default_factory is MISSING:
        kwargs["required"] = True
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        variadic = len(args) == 2 and args[1] is Ellipsis
        kwargs["nargs"] = "+" if variadic else len(args)
        kwargs["action"] = "extend" if variadic else "store"
        kind = args[0]
    kwargs["type"] = kind
    if opt.choices is not None:
        kwargs["choices"] = opt.choices
    else:
        kwargs["metavar"] = opt.metavar or item.flags[0][2:].upper().replace("-", "_")
    return kwargs


def _help(item: Declared) -> str:
    text = item.option.help.replace("%", "%%")
    default = _default_text(item.field)
    if default is not None and "default" not in text:
        text = f"{text} (default: {default.replace('%', '%%')})".lstrip()
    return text


def _default_text(f: Field) -> str | None:
    """The default as ``--help`` shows it; None for none worth showing (no default, None, a flag's, ())."""
    value = f.default if f.default_factory is MISSING else f.default_factory()
    if value is MISSING or value is None or isinstance(value, bool) or value == ():
        return None
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The config of class ``cls`` that parsed options describe (the options given, the defaults for the rest),
    built as a job file's mapping of the same values is: a dotted destination is a path of nested keys."""
    given: dict[str, Any] = {}
    for item in declared(cls):
        if hasattr(args, item.dest):
            *parents, name = item.dest.split(".")
            node = given
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = getattr(args, item.dest)
    return config_from_dict(cls, given, "command-line")


# -- job files ----------------------------------------------------------------------------------------------------


def config_from_dict(cls: type, data: Mapping[str, Any], section: str) -> Any:
    """Build config class ``cls`` from a plain mapping (a job file's ``config``): nested configs from nested
    mappings, lists as tuples, numbers written as text parsed; an unknown key is an error naming it and
    ``section``, the known ones listed. A class may complete the given values first (``fill_unset``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{section} config must be a mapping of keys to values, got {data!r}")
    data = dict(data)
    fill = getattr(cls, "fill_unset", None)
    if fill is not None:
        data = fill(data)
    hints = typing.get_type_hints(cls)
    known = keys_of(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {section} config; known keys: {sorted(known)}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        kind, opt = hints[f.name], f.metadata.get(OPTION, Option())
        nested = _nested_class(kind)
        if nested is not None and opt.flatten:
            values[f.name] = config_from_dict(nested, {k: data[k] for k in keys_of(nested) if k in data}, section)
        elif f.name in data and nested is not None:
            values[f.name] = config_from_dict(nested, data[f.name] or {}, f.name)
        elif f.name in data:
            values[f.name] = _coerce(data[f.name], _without_none(kind), opt, f"{section} config key {f.name!r}")
    missing = [f.name for f in fields(cls) if f.name not in values and _required(f, hints[f.name])]
    if missing:
        raise ConfigError(f"{section} config needs key(s) {missing}")
    return cls(**values)


def keys_of(cls: type) -> list[str]:
    """The keys a job file's mapping for ``cls`` may hold: its fields, a flattened config's in its place."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in fields(cls):
        nested = _nested_class(hints[f.name])
        flat = nested is not None and f.metadata.get(OPTION, Option()).flatten
        keys.extend(keys_of(nested) if flat else [f.name])
    return keys


def _required(f: Field, kind: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING and not f.metadata.get(OPTION, Option()).flatten


def _coerce(value: Any, kind: Any, opt: Option, where: str) -> Any:
    """A job file's (or the command line's) value as the field's type: a list -> tuple (one text -> a 1-tuple,
    split at commas for ``split`` options), numbers written as text -> numbers."""
    if value is None:
        return None
    if typing.get_origin(kind) is tuple:
        items = [value] if isinstance(value, str) else list(value)
        if opt.split:
            items = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
        return tuple(items)
    try:
        if kind is float and isinstance(value, str | int) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, str):
            return int(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a{'n' if kind is int else ''} {kind.__name__}") from None
    return value


# -- unknown options ----------------------------------------------------------------------------------------------

# Options of clip-retrieval, autofaiss and img2dataset (and old mmembed spellings) that mean something else here,
# or nothing: (a flag of the commands the advice is for, the advice shown when the option is refused).
# Spellings that mean the same are aliases of their option instead (``Option.aliases``).
OTHER_TOOLS: dict[str, tuple[str, str]] = {
    "--enable_text": ("--captions", "use --captions none (images only) or --captions optional"),
    "--enable_image": ("--captions", "images are always embedded; leave it out"),
    "--enable_metadata": ("--metadata-key", "the json metadata is always kept; --metadata-key names its member"),
    "--clip_model": ("--model", "use --model with an open_clip name such as ViT-B-32, and --pretrained TAG"),
    "--use_gpu": ("--device", "use --device cuda"),
    "--input_format": ("--shards", "--shards reads WebDataset shards; make them with mmembed make-shards"),
    "--index_path": ("--max-index-memory", "use --out DIR: the index files and infos.json are written there"),
    "--index_infos_path": ("--max-index-memory", "use --out DIR: infos.json is written there"),
    "--max_index_query_time_ms": ("--recall-target", "use --recall-target: search parameters are tuned to a recall"),
    "--metric_type": ("--max-index-memory", "indexes are inner product over L2-normalised vectors; leave it out"),
    "--url_col": ("--image-column", "use --image-column (local image paths; make-shards downloads nothing)"),
    "--output_format": ("--samples-per-shard", "make-shards writes WebDataset .tar shards only; leave it out"),
    "--data-threads": ("--decode-threads", "did you mean --decode-threads?"),
}


def suggestion(flag: str, ours: Sequence[str]) -> str | None:
    """The hint for an option ``flag`` a command refused: other tools' spelling of one of ``ours``, else the
    closest of ``ours``."""
    if flag in OTHER_TOOLS and OTHER_TOOLS[flag][0] in ours:
        return OTHER_TOOLS[flag][1]
    close = difflib.get_close_matches("--" + flag[2:].replace("_", "-"), ours, n=1)
    return f"did you mean {close[0]}?" if close else None


def flag_names(cls: type, skip: Sequence[str] = ()) -> list[str]:
    """Every flag and alias ``add_options`` gives config class ``cls``."""
    return [flag for item in declared(cls, skip) for flag in item.flags]
