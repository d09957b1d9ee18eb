"""``index`` and ``eval-index``: build FAISS indexes over embed outputs and measure their recall."""

from __future__ import annotations

import argparse
from dataclasses import replace

from mmembed import storage
from mmembed.commands.output import format_table, print_json
from mmembed.config import DEVICES


def register(sub: argparse._SubParsersAction) -> None:
    from mmembed.index.choose import FAMILIES
    from mmembed.index.options import add_build_index_arguments

    build = sub.add_parser("index", help="build image and text FAISS indexes from an embed job's output")
    add_build_index_arguments(build)
    build.add_argument("--family", default="auto", choices=FAMILIES, help="force an index family")
    build.add_argument("--append", action="store_true", help="add new embeddings files to an existing index")
    build.add_argument(
        "--sharded", action="store_true", help="fill an IVF index part by part in a Beam job, then merge on disk"
    )
    build.set_defaults(handler=index, passes_unknown=True)

    evaluate = sub.add_parser("eval-index", help="recall@1/10/100 and queries/s of an index vs exact search")
    evaluate.add_argument("--index", required=True, help="index dir (path or s3:// gs:// URL)")
    evaluate.add_argument("--embeddings", help="embed output dir (default: the files recorded in infos.json)")
    evaluate.add_argument("--queries", type=int, default=1000, help="how many of the set's own vectors to query")
    evaluate.add_argument("--queries-file", help="text queries, one per line, for text -> image (path or URL)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", default="auto", choices=DEVICES, help="query encoder device")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=eval_index)


def index(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.index import append, build_index
    from mmembed.index.options import config_from_args
    from mmembed.index.reader import list_embedding_files
    from mmembed.index.store import base_name, read_infos

    if extra and not args.sharded:
        raise ValueError(f"unrecognized arguments: {' '.join(extra)} (Beam options apply with --sharded only)")
    if args.append:
        indexed = {base_name(s["path"]) for s in read_infos(args.out)["sources"]["files"]}
        new = [f for f in list_embedding_files(args.embeddings) if base_name(f) not in indexed]
        if not new:
            print_json({"appended_rows": 0, "message": f"no new embeddings files under {args.embeddings}"})
            return 0
        infos = append(args.out, new)
    else:
        sharded = config_from_args(args)
        config = replace(sharded.index, family=args.family)
        if args.sharded:
            from mmembed.index.sharded import build_sharded
            from pipelines.build_index import beam_runner

            infos = build_sharded(replace(sharded, index=config), beam_runner(extra))
        else:
            infos = build_index(config)
    keys = ("count", "text_rows", "text_index_skipped", "dim", "index_key", "build_seconds", "peak_memory_bytes")
    print_json({k: infos[k] for k in keys if k in infos})
    return 0


def eval_index(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.index import load_index
    from mmembed.index.evaluate import evaluate_directions
    from mmembed.index.reader import open_embeddings, open_files
    from mmembed.query import QueryEncoder

    loaded = load_index(args.index)
    if args.embeddings:
        files = open_embeddings(args.embeddings)
    else:
        files = open_files([s["path"] for s in loaded.infos["sources"]["files"]])
    text_queries = None
    if args.queries_file:
        lines = [line.strip() for line in storage.read_bytes(args.queries_file).decode("utf-8").splitlines()]
        where = f"index {args.index}"
        encoder = QueryEncoder.for_provenance(loaded.infos["provenance"], where, device=args.device)
        text_queries = encoder.encode_texts([line for line in lines if line])
    result = evaluate_directions(loaded.image.index, files, args.queries, seed=args.seed, text_queries=text_queries)
    result["index_key"] = loaded.infos["index_key"]
    result["count"] = loaded.infos["count"]
    if args.json:
        print_json(result)
    else:
        measured = {d: m for d, m in result.items() if isinstance(m, dict) and m.get("available", True)}
        rows = [{"direction": d, **m} for d, m in measured.items()]
        columns = ["direction", "recall@1", "recall@10", "recall@100", "queries", "queries_per_second"]
        print(f"{result['index_key']} over {result['count']} vectors")
        print(format_table(rows, columns))
        for direction, metrics in result.items():
            if isinstance(metrics, dict) and direction not in measured:
                print(f"{direction}: not available ({metrics['reason']})")
    return 0
