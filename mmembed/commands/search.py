"""``search``: text -> image, image -> image, image -> text and composed queries over an index dir."""

from __future__ import annotations

import argparse
from dataclasses import replace

from mmembed import storage
from mmembed.commands.output import format_table, print_json
from mmembed.config import DEVICES, EncoderConfig

COLUMNS = ["rank", "score", "key", "shard", "caption", "url"]


def register(sub: argparse._SubParsersAction) -> None:
    from mmembed.config import TARGETS

    search = sub.add_parser("search", help="search an index with text or image queries")
    search.add_argument("query", nargs="?", help="text query (or use --text, --image, --queries-file)")
    search.add_argument(
        "--index", required=True, help="index dir written by `mmembed index` (path or s3:// gs:// URL; cached locally)"
    )
    search.add_argument("-k", type=int, default=10, help="results per query")
    search.add_argument("--text", help="text query; with --image, the text modifier of a composed query")
    search.add_argument("--image", action="append", help="query image file or URL (repeatable)")
    search.add_argument("--text-weight", type=float, default=0.3, help="weight of --text in a composed query")
    search.add_argument("--queries-file", help="text queries, one per line, searched in one batch")
    search.add_argument(
        "--target",
        default="image",
        choices=TARGETS,
        help="search images (default; image-only samples included) or captions (samples that have one)",
    )
    search.add_argument("--model", help="override the recorded query model (checked against the index)")
    search.add_argument("--pretrained", help="with --model: its pretrained tag")
    search.add_argument("--checkpoint", help="local checkpoint of the recorded model (if moved)")
    search.add_argument("--device", default="auto", choices=DEVICES)
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.set_defaults(handler=run_search)


def run_search(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.search import Searcher

    text = args.text if args.text is not None else args.query
    if args.text is not None and args.query is not None:
        raise ValueError("give the text query once: as the positional argument or with --text")
    searcher = Searcher.from_dir(args.index, _override(args), args.device)
    if args.image:
        queries = [str(p) for p in args.image]
        weight = args.text_weight if text is not None else 0.0
        results = searcher.search_image(args.image, args.k, args.target, text=text, text_weight=weight)
    else:
        queries = _text_queries(text, args.queries_file)
        results = searcher.search_text(queries, args.k, args.target)
    _print(queries, results, args.json)
    return 0


def _override(args: argparse.Namespace) -> EncoderConfig | None:
    """--model (with --pretrained / --checkpoint) replaces the recorded model; --checkpoint alone relocates it."""
    from mmembed.index.store import read_infos
    from mmembed.query import encoder_config_from_provenance

    if args.model:
        return EncoderConfig(
            model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device
        )
    if args.checkpoint:
        recorded = encoder_config_from_provenance(read_infos(args.index)["provenance"], args.device)
        return replace(recorded, checkpoint=args.checkpoint, random_init=False)
    return None


def _text_queries(text: str | None, queries_file: str | None) -> list[str]:
    queries = [text] if text else []
    if queries_file:
        lines = storage.read_bytes(queries_file).decode("utf-8").splitlines()
        queries += [line.strip() for line in lines if line.strip()]
    if not queries:
        raise ValueError("no query: give a text, --image FILE or --queries-file FILE")
    return queries


def _print(queries: list[str], results: list, as_json: bool) -> None:
    rows = [[hit.to_dict() for hit in hits] for hits in results]
    if as_json:
        print_json(
            rows[0] if len(rows) == 1 else [{"query": q, "results": r} for q, r in zip(queries, rows, strict=True)]
        )
        return
    for query, hits in zip(queries, rows, strict=True):
        print(f"query: {query}")
        print(format_table(hits, COLUMNS) if hits else "(no results)")
        print()
