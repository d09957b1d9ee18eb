"""``dedup``: exact, perceptual and semantic duplicate groups, a keep list, and optionally clean shards; every
path may be a local one or an object-store URL (``s3://``, ``gs://``)."""

from __future__ import annotations

import argparse

from mmembed.commands.output import print_json


def register(sub: argparse._SubParsersAction) -> None:
    from mmembed.dedup.options import add_dedup_arguments

    dedup = sub.add_parser("dedup", help="find duplicate groups in an embed job's output and write a keep list")
    add_dedup_arguments(dedup)
    dedup.add_argument("--beam", action="store_true", help="run as a Beam job (group by hash / cluster)")
    dedup.add_argument("--write-shards", metavar="DIR", help="also write deduplicated WebDataset shards to DIR")
    dedup.add_argument("--shards", nargs="+", help="with --write-shards: the input shards (paths, globs, {a..b})")
    dedup.set_defaults(handler=dedup_command, passes_unknown=True)


def dedup_command(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed import storage
    from mmembed.dedup import run_dedup
    from mmembed.dedup.options import config_from_args
    from mmembed.shards import list_shards

    if args.write_shards and not args.shards:
        raise ValueError("--write-shards needs --shards: the input shards the embeddings came from")
    if extra and not args.beam:
        raise ValueError(f"unrecognized arguments: {' '.join(extra)} (Beam options apply with --beam only)")
    config = config_from_args(args)
    shards: list[str] = []
    if args.write_shards:  # a shard pattern matching nothing or an output that cannot be written fails before the run
        shards = list_shards(args.shards)
        storage.check_writable(args.write_shards)
    if args.beam:
        from pipelines.dedup import run_config

        summary = run_config(config, extra)
    else:
        summary = run_dedup(config)
    if args.write_shards:
        from mmembed.config import DecodeConfig
        from mmembed.dedup.outputs import KEEP_FILE
        from mmembed.dedup.write_shards import write_deduplicated_shards

        keep = storage.join(args.out, KEEP_FILE)
        written = write_deduplicated_shards(shards, keep, args.write_shards, DecodeConfig().image_extensions)
        summary["written_shards"] = {k: written[k] for k in ("shards", "samples")}
    print_json(summary)
    return 0
