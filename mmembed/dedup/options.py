"""The dedup job's options on the command line (``mmembed dedup``, ``python -m pipelines.dedup``).

Light on purpose: ``mmembed --help`` imports it, so it imports configs only.
"""

from __future__ import annotations

import argparse

from mmembed.config import DEVICES
from mmembed.dedup.config import DEFAULT_EPS, DEFAULT_PHASH_THRESHOLD, KEEP_POLICIES, DedupConfig


def add_dedup_arguments(parser: argparse.ArgumentParser) -> None:
    """The dedup job's own options (DedupConfig's fields)."""
    defaults = DedupConfig("-", "-")
    parser.add_argument("--embeddings", required=True, help="the embed job's --out dir (holds embeddings/*.parquet)")
    parser.add_argument("--out", required=True, help="where duplicates.parquet, keep.parquet, summary.json go")
    parser.add_argument(
        "--methods",
        help="comma list of exact,perceptual,semantic (default: all three; exact,perceptual for embeddings of a "
        "model with random weights)",
    )
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="run semantic dedup on embeddings of a random-weight model (smoke tests only)",
    )
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS, help="semantic duplicates: cosine > 1 - eps")
    parser.add_argument("--phash-threshold", type=int, default=DEFAULT_PHASH_THRESHOLD, help="max pHash bit distance")
    parser.add_argument("--keep", default=defaults.keep, choices=KEEP_POLICIES, help="which member of a group survives")
    parser.add_argument("--n-clusters", type=int, help="k-means clusters (default ~sqrt(rows))")
    parser.add_argument("--max-cluster-size", type=int, default=defaults.max_cluster_size, help="split larger ones")
    parser.add_argument("--sample-size", type=int, default=defaults.sample_size, help="rows k-means trains on")
    parser.add_argument("--kmeans-iterations", type=int, default=defaults.kmeans_iterations)
    parser.add_argument(
        "--recall-queries", type=int, default=defaults.recall_queries, help="rows of the pair-recall check (0: off)"
    )
    parser.add_argument("--block-size", type=int, default=defaults.block_size, help="in-cluster comparison tile")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rows per Parquet read batch")
    parser.add_argument("--device", default=defaults.device, choices=DEVICES, help="faiss-gpu k-means when available")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--work-dir", help="dir or URL every worker reaches, for the job's intermediate results (default: under --out)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def config_from_args(args: argparse.Namespace) -> DedupConfig:
    """The dedup config the parsed options describe."""
    return DedupConfig(
        embeddings_dir=args.embeddings,
        out_dir=args.out,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else None,
        allow_random_weights=args.allow_random_weights,
        keep=args.keep,
        phash_threshold=args.phash_threshold,
        eps=args.eps,
        n_clusters=args.n_clusters,
        max_cluster_size=args.max_cluster_size,
        sample_size=args.sample_size,
        kmeans_iterations=args.kmeans_iterations,
        recall_queries=args.recall_queries,
        block_size=args.block_size,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        work_dir=args.work_dir,
        overwrite=args.overwrite,
    )
