"""``search``: text -> image, image -> image, image -> text and composed queries over an index dir. Its options
are ``SearchConfig``'s fields and the switch below (``mmembed.stages``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from mmembed.commands.output import format_table, print_json
from mmembed.config import EncoderConfig
from mmembed.options import option
from mmembed.search_config import SearchConfig
from mmembed.stages import command_options, config_of, stage

COLUMNS = ["rank", "score", "key", "shard", "caption", "url"]


@dataclass(frozen=True)
class SearchCommand:
    """``mmembed search``'s switch beside the search config."""

    json: bool = option(False, help="print JSON instead of a table")


def run_search(config: SearchConfig) -> dict[str, Any]:
    """The queries searched and, for each, its hits as plain values (``mmembed run``'s summary too)."""
    from mmembed.search import Searcher

    searcher = Searcher.from_dir(config.index_dir, _override(config), config.device)
    if config.image:
        queries = list(config.image)
        text, weight, where = config.text_query, config.text_weight, config.where
        results = searcher.search_image(queries, config.k, config.target, text=text, text_weight=weight, where=where)
    else:
        queries = _text_queries(config.text_query, config.queries_file)
        results = searcher.search_text(queries, config.k, config.target, config.where, config.mode)
    return {"queries": queries, "results": [[hit.to_dict() for hit in hits] for hits in results]}


def search_command(args: argparse.Namespace, extra: list[str]) -> int:
    found = stage("search")
    summary = run_search(config_of(found, args))
    _print(summary["queries"], summary["results"], command_options(found, args).json)
    return 0


def _override(config: SearchConfig) -> EncoderConfig | None:
    """--model (with --pretrained / --checkpoint) replaces the recorded model; --checkpoint alone relocates it."""
    from mmembed.index.store import read_infos
    from mmembed.query import encoder_config_from_provenance

    if config.model:
        return EncoderConfig(
            model=config.model, pretrained=config.pretrained, checkpoint=config.checkpoint, device=config.device
        )
    if config.checkpoint:
        recorded = encoder_config_from_provenance(read_infos(config.index_dir)["provenance"], config.device)
        return replace(recorded, checkpoint=config.checkpoint, random_init=False)
    return None


def _text_queries(text: str | None, queries_file: str | None) -> list[str]:
    from mmembed import storage

    queries = [text] if text else []
    if queries_file:
        queries += storage.read_lines(queries_file)
    if not queries:
        raise ValueError("no query: give a text, --image FILE or --queries-file FILE")
    return queries


def _print(queries: list[str], rows: list[list[dict[str, Any]]], as_json: bool) -> None:
    if as_json:
        print_json(
            rows[0] if len(rows) == 1 else [{"query": q, "results": r} for q, r in zip(queries, rows, strict=True)]
        )
        return
    for query, hits in zip(queries, rows, strict=True):
        print(f"query: {query}")
        print(format_table(hits, COLUMNS) if hits else "(no results)")
        print()
