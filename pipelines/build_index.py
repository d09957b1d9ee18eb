"""The sharded index build: embeddings Parquet -> IVF indexes filled part by part on Beam, merged on disk.

Run it with ``python -m pipelines.build_index --embeddings EMB --out EMB/index``; options not listed here are
standard Beam pipeline options (``--runner DataflowRunner ...``) and pass through. Without ``--runner`` the job
runs on Beam's in-process FnApiRunner, which needs no download. ``--embeddings`` and ``--out`` are local paths
or object-store URLs (``s3://``, ``gs://``). The launcher trains the index and merges the parts; the workers
read the trained indexes from ``<out>/_parts`` and write their parts there, so ``--out`` must be a place the
launcher and every worker reach: a bucket for a distributed runner, local disk for the local one.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import Any

import apache_beam as beam

from mmembed.beam.index import AddParts
from mmembed.beam.runner import make_pipeline
from mmembed.config import DEVICES
from mmembed.index.config import IndexBuildConfig
from mmembed.index.sharded import Part, PartJob, ShardedBuildConfig, build_sharded

log = logging.getLogger(__name__)


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


def beam_runner(beam_args: list[str], test_pipeline: Any = None) -> Callable[[PartJob, list[Part]], None]:
    """A ``run_parts`` for ``build_sharded`` that adds the parts in one Beam job and waits for it."""

    def run_parts(job: PartJob, parts: list[Part]) -> None:
        pipeline = test_pipeline if test_pipeline is not None else make_pipeline(beam_args)
        _ = pipeline | "Parts" >> beam.Create(parts) | "AddParts" >> AddParts(job)
        pipeline.run().wait_until_finish()

    return run_parts


def run(argv: list[str] | None = None, test_pipeline: Any = None) -> dict[str, Any]:
    """Entry point: parse our options, pass the rest to Beam, build, print a summary; returns infos.json."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.build_index", description=__doc__)
    add_build_index_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    infos = build_sharded(config_from_args(args), beam_runner(beam_args, test_pipeline))
    summary = {k: infos[k] for k in ("count", "dim", "index_key", "parts", "build_seconds")}
    summary["indexes"] = {m: {k: v[k] for k in ("search_params", "recall")} for m, v in infos["indexes"].items()}
    print(json.dumps(summary, indent=2))
    return infos


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()
