"""``index`` and ``eval-index``: build FAISS indexes over embed outputs and measure their recall. Their options are
the fields of ``ShardedBuildConfig`` / ``EvalIndexConfig`` and of the switches below (``mmembed.stages``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from mmembed import storage
from mmembed.commands.output import format_table, print_json
from mmembed.index.config import EvalIndexConfig, IndexBuildConfig
from mmembed.options import config_from_args, option
from mmembed.stages import command_options, config_of, stage


@dataclass(frozen=True)
class IndexCommand:
    """``mmembed index``'s switches beside the build config."""

    append: bool = option(False, help="add new embeddings files to an existing index")
    sharded: bool = option(False, help="fill an IVF index part by part in a Beam job, then merge on disk")


@dataclass(frozen=True)
class EvalIndexCommand:
    """``mmembed eval-index``'s switches beside its config."""

    json: bool = option(False, help="print JSON instead of a table")


def index(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.index import append, build_index
    from mmembed.index.reader import list_embedding_files
    from mmembed.index.store import base_name, read_infos

    switches = command_options(stage("index"), args)
    if extra and not switches.sharded:
        raise ValueError(f"unrecognized arguments: {' '.join(extra)} (Beam options apply with --sharded only)")
    config: IndexBuildConfig = config_from_args(IndexBuildConfig, args)  # flat and hnsw too, unless --sharded
    if switches.append:
        indexed = {base_name(s["path"]) for s in read_infos(config.out_dir)["sources"]["files"]}
        new = [f for f in list_embedding_files(config.embeddings_dir) if base_name(f) not in indexed]
        if not new:
            print_json({"appended_rows": 0, "message": f"no new embeddings files under {config.embeddings_dir}"})
            return 0
        infos = append(config.out_dir, new)
    elif switches.sharded:
        from pipelines.build_index import run_config

        infos = run_config(config_of(stage("index"), args), extra)
    else:
        infos = build_index(config)
    keys = ("count", "text_rows", "text_index_skipped", "dim", "index_key", "build_seconds", "peak_memory_bytes")
    print_json({k: infos[k] for k in keys if k in infos})
    return 0


def run_eval_index(config: EvalIndexConfig) -> dict[str, Any]:
    """Recall and speed of ``config.index_dir`` per search direction (text -> image with a queries file)."""
    from mmembed.index import load_index
    from mmembed.index.evaluate import evaluate_directions
    from mmembed.index.reader import open_embeddings, open_files
    from mmembed.query import QueryEncoder

    loaded = load_index(config.index_dir)
    if config.embeddings_dir:
        files = open_embeddings(config.embeddings_dir)
    else:
        files = open_files([s["path"] for s in loaded.infos["sources"]["files"]])
    text_queries = None
    if config.queries_file:
        lines = storage.read_lines(config.queries_file)
        where = f"index {config.index_dir}"
        encoder = QueryEncoder.for_provenance(loaded.infos["provenance"], where, device=config.device)
        text_queries = encoder.encode_texts(lines)
    result = evaluate_directions(loaded.image.index, files, config.queries, seed=config.seed, text_queries=text_queries)
    result["index_key"] = loaded.infos["index_key"]
    result["count"] = loaded.infos["count"]
    return result


def eval_index(args: argparse.Namespace, extra: list[str]) -> int:
    found = stage("eval-index")
    result = run_eval_index(config_of(found, args))
    if command_options(found, args).json:
        print_json(result)
        return 0
    measured = {d: m for d, m in result.items() if isinstance(m, dict) and m.get("available", True)}
    rows = [{"direction": d, **m} for d, m in measured.items()]
    columns = ["direction", "recall@1", "recall@10", "recall@100", "queries", "queries_per_second"]
    print(f"{result['index_key']} over {result['count']} vectors")
    print(format_table(rows, columns))
    for direction, metrics in result.items():
        if isinstance(metrics, dict) and direction not in measured:
            print(f"{direction}: not available ({metrics['reason']})")
    return 0
