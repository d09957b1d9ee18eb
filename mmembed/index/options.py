"""The index build's options on the command line (``mmembed index``, ``python -m pipelines.build_index``).

Light on purpose: ``mmembed --help`` imports it, so it names faiss and Beam only inside the functions that run
a build.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mmembed.config import DEVICES
from mmembed.index.config import IndexBuildConfig

if TYPE_CHECKING:
    from mmembed.index.sharded import ShardedBuildConfig


def add_build_index_arguments(parser: argparse.ArgumentParser) -> None:
    """The sharded build's own options."""
    parser.add_argument(
        "--embeddings", required=True, help="an embed job's --out dir (holds embeddings/*.parquet); path or s3:// gs://"
    )
    parser.add_argument("--out", required=True, help="index dir to write (e.g. EMB/index); path or s3:// gs:// URL")
    parser.add_argument(
        "--max-index-memory", default="4G", help="RAM budget of one index (e.g. 4G, 512M); drives the index choice"
    )
    parser.add_argument(
        "--index-key",
        help="a faiss factory string instead of the automatic choice (IVF for sharded builds), e.g. 'IVF4096,PQ32x8np'",
    )
    parser.add_argument(
        "--files-per-part", type=int, default=1, help="sharded build: embeddings files per parallel part"
    )
    parser.add_argument("--recall-target", type=float, default=0.95, help="10-recall@10 the search params reach")
    parser.add_argument("--tune-queries", type=int, default=IndexBuildConfig.tune_queries)
    parser.add_argument("--max-train-vectors", type=int, default=IndexBuildConfig.max_train_vectors)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the launcher trains and tunes")
    parser.add_argument("--overwrite", action="store_true", help="rebuild a complete index and discard old parts")


def config_from_args(args: argparse.Namespace) -> ShardedBuildConfig:
    """The sharded build config the parsed options describe."""
    from mmembed.index.sharded import ShardedBuildConfig  # faiss: only once a build really runs

    index = IndexBuildConfig(
        embeddings_dir=args.embeddings,
        out_dir=args.out,
        max_index_memory=args.max_index_memory,
        recall_target=args.recall_target,
        device=args.device,
        index_key=args.index_key,
        max_train_vectors=args.max_train_vectors,
        tune_queries=args.tune_queries,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    return ShardedBuildConfig(index, files_per_part=args.files_per_part)
