"""The sharded index build: embeddings Parquet -> IVF indexes filled part by part on Beam, merged on disk.

Run it with ``python -m pipelines.build_index --embeddings EMB --out EMB/index``; options not listed here are
standard Beam pipeline options (``--runner DataflowRunner ...``) and pass through. Without ``--runner`` the job
runs on Beam's in-process FnApiRunner, which needs no download. ``--embeddings`` and ``--out`` are local paths
or object-store URLs (``s3://``, ``gs://``). The launcher trains the index and merges the parts; the workers
read the trained indexes from ``<out>/_parts`` and write their parts there, so ``--out`` must be a place the
launcher and every worker reach: a bucket for a distributed runner, local disk for the local one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import apache_beam as beam

from mmembed.beam.index import AddParts
from mmembed.beam.runner import make_pipeline
from mmembed.index.sharded import Part, PartJob, ShardedBuildConfig, build_sharded
from mmembed.stages import parse_pipeline_args

log = logging.getLogger(__name__)


def beam_runner(beam_args: list[str], test_pipeline: Any = None) -> Callable[[PartJob, list[Part]], None]:
    """A ``run_parts`` for ``build_sharded`` that adds the parts in one Beam job and waits for it."""

    def run_parts(job: PartJob, parts: list[Part]) -> None:
        pipeline = test_pipeline if test_pipeline is not None else make_pipeline(beam_args)
        _ = pipeline | "Parts" >> beam.Create(parts) | "AddParts" >> AddParts(job)
        pipeline.run().wait_until_finish()

    return run_parts


def run_config(
    config: ShardedBuildConfig, beam_args: list[str] | None = None, test_pipeline: Any = None
) -> dict[str, Any]:
    """The index stage's run: the sharded build with its parts added in a Beam job; returns infos.json."""
    return build_sharded(config, beam_runner(list(beam_args or []), test_pipeline))


def run(argv: list[str] | None = None, test_pipeline: Any = None) -> dict[str, Any]:
    """Entry point: parse the index stage's options (``mmembed index``'s), pass the rest to Beam, build, print a
    summary; returns infos.json."""
    config, beam_args = parse_pipeline_args("index", argv, "python -m pipelines.build_index", __doc__)
    infos = run_config(config, beam_args, test_pipeline)
    summary = {k: infos[k] for k in ("count", "dim", "index_key", "parts", "build_seconds")}
    summary["indexes"] = {m: {k: v[k] for k in ("search_params", "recall")} for m, v in infos["indexes"].items()}
    print(json.dumps(summary, indent=2))
    return infos


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()
