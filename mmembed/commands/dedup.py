"""``dedup``: exact, perceptual and semantic duplicate groups, a keep list, and optionally clean shards."""

from __future__ import annotations

import argparse

from mmembed.commands.output import print_json
from mmembed.config import DEVICES


def register(sub: argparse._SubParsersAction) -> None:
    from mmembed.dedup.config import DEFAULT_EPS, DEFAULT_PHASH_THRESHOLD, KEEP_POLICIES

    dedup = sub.add_parser("dedup", help="find duplicate groups in an embed job's output and write a keep list")
    dedup.add_argument("--embeddings", required=True, help="the embed job's --out dir (holds embeddings/*.parquet)")
    dedup.add_argument("--out", required=True, help="where duplicates.parquet, keep.parquet, summary.json go")
    dedup.add_argument("--methods", default="exact,perceptual,semantic", help="comma list of exact,perceptual,semantic")
    dedup.add_argument("--eps", type=float, default=DEFAULT_EPS, help="semantic duplicates: cosine > 1 - eps")
    dedup.add_argument("--phash-threshold", type=int, default=DEFAULT_PHASH_THRESHOLD, help="max pHash bit distance")
    dedup.add_argument("--keep", default="similarity", choices=KEEP_POLICIES, help="which member of a group survives")
    dedup.add_argument("--n-clusters", type=int, help="k-means clusters (default ~sqrt(rows))")
    dedup.add_argument("--max-cluster-size", type=int, default=10_000, help="larger clusters are split again")
    dedup.add_argument("--device", default="auto", choices=DEVICES, help="faiss-gpu k-means when available")
    dedup.add_argument("--seed", type=int, default=0)
    dedup.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    dedup.add_argument("--beam", action="store_true", help="run as a Beam job (group by hash / cluster)")
    dedup.add_argument("--write-shards", metavar="DIR", help="also write deduplicated WebDataset shards to DIR")
    dedup.add_argument("--shards", nargs="+", help="with --write-shards: the input shards (paths, globs, {a..b})")
    dedup.set_defaults(handler=dedup_command, passes_unknown=True)


def dedup_command(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.dedup import DedupConfig, run_dedup

    if args.write_shards and not args.shards:
        raise ValueError("--write-shards needs --shards: the input shards the embeddings came from")
    if extra and not args.beam:
        raise ValueError(f"unrecognized arguments: {' '.join(extra)} (Beam options apply with --beam only)")
    config = DedupConfig(
        embeddings_dir=args.embeddings,
        out_dir=args.out,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        keep=args.keep,
        phash_threshold=args.phash_threshold,
        eps=args.eps,
        n_clusters=args.n_clusters,
        max_cluster_size=args.max_cluster_size,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
    )
    if args.beam:
        from pipelines.dedup import run_config

        summary = run_config(config, extra)
    else:
        summary = run_dedup(config)
    if args.write_shards:
        from mmembed.beam.filesystem import list_shards
        from mmembed.config import DecodeConfig
        from mmembed.dedup.outputs import KEEP_FILE
        from mmembed.dedup.write_shards import write_deduplicated_shards
        from mmembed.outputs import join

        written = write_deduplicated_shards(
            list_shards(args.shards), join(args.out, KEEP_FILE), args.write_shards, DecodeConfig().image_extensions
        )
        summary["written_shards"] = {k: written[k] for k in ("shards", "samples")}
    print_json(summary)
    return 0
