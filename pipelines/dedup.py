"""The dedup job on Beam: exact, perceptual and semantic duplicate groups of an embed job's output, a keep list.

Run it with ``python -m pipelines.dedup --embeddings EMB --out EMB/dedup`` (or ``mmembed dedup --beam``);
options not listed here are standard Beam pipeline options and pass through. Without ``--runner`` the job runs
on Beam's in-process FnApiRunner, which needs no download.

The launcher reads the small per-row columns (key, shard, hashes, keep-policy inputs) and trains the k-means
centroids on a seeded sample; the job groups rows by sha256 (exact), by pHash band (perceptual) and by
centroid (semantic) and writes the links and per-row semantic results into a work dir; the launcher then unions
them into groups and writes duplicates.parquet, keep.parquet, summary.json and the histogram exactly as the
single-machine ``run_dedup`` does (the same ``finish``). ``--embeddings``, ``--out`` and ``--work-dir`` are local
paths or object-store URLs (``s3://``, ``gs://``; S3 configured by the AWS environment variables) that the
launcher and every worker reach: on a cluster, use an object store.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from mmembed.beam import runs_locally
from mmembed.beam.dedup import (
    NAMESPACE,
    VECTORS,
    SemanticPlan,
    add_dedup_job,
    read_links,
    read_recall_pairs,
    read_semantic,
    stage_job,
    work_folder,
)
from mmembed.beam.metrics import job_counters
from mmembed.beam.runner import make_pipeline
from mmembed.dedup import semantic
from mmembed.dedup.columns import read_columns
from mmembed.dedup.config import DedupConfig
from mmembed.dedup.links import Links
from mmembed.dedup.run import cluster_count, finish, prepare_out, recall_sample, recall_stats, train_sample
from mmembed.index.build import resolve_device
from mmembed.index.reader import EmbeddingFiles, gather_rows, open_embeddings
from mmembed.stages import parse_pipeline_args

log = logging.getLogger(__name__)


def semantic_plan(files: EmbeddingFiles, config: DedupConfig, device: str, worker_device: str) -> SemanticPlan:
    """Launcher side of the semantic method: centroids from the seeded training sample, and the recall query
    rows; both gathered from Parquet in one pass."""
    count = files.count
    k = cluster_count(config, count)
    train = train_sample(config, count, k)
    queries = recall_sample(config, count)
    needed = train if queries is None else np.union1d(train, queries)
    vectors = gather_rows(files, VECTORS, needed, config.batch_size)
    sample = vectors[np.searchsorted(needed, train)]
    centroids = semantic.train_centroids(sample, k, config.seed, config.kmeans_iterations, device)
    query_vectors = None if queries is None else vectors[np.searchsorted(needed, queries)]
    log.info("k-means: %d centroids from %d sampled rows on %s", len(centroids), len(train), device)
    return SemanticPlan(centroids, config.semantic(worker_device), queries, query_vectors)


def run_config(config: DedupConfig, beam_args: list[str] | None = None, test_pipeline: Any = None) -> dict[str, Any]:
    """Run the dedup job for ``config`` and write its outputs; returns the summary (``run_dedup``'s, plus the
    runner and the Beam counters)."""
    began = time.perf_counter()
    beam_args = list(beam_args or [])
    local = runs_locally(beam_args, test_pipeline)
    files = open_embeddings(config.embeddings_dir)
    config = config.for_embeddings(files.provenance)
    sem_on = "semantic" in config.methods
    device = resolve_device(config.device) if sem_on else "cpu"
    out = prepare_out(config)
    columns = read_columns(files, batch_size=config.batch_size)  # also checks every file's small columns
    count = files.count
    plan = semantic_plan(files, config, device, device if local else config.device) if sem_on and count else None
    counters: dict[str, int] = {}
    with work_folder(config.work_dir or out) as work:
        if count:
            pipeline = test_pipeline if test_pipeline is not None else make_pipeline(beam_args)
            add_dedup_job(pipeline, stage_job(work, files, config, plan))
            result = pipeline.run()
            result.wait_until_finish()
            counters = job_counters(result, NAMESPACE)
            found = read_links(work, config.methods)
        else:
            found = {m: Links(m, np.zeros(0), np.zeros(0)) for m in config.methods}
        links = [found[m] for m in ("exact", "perceptual") if m in config.methods]
        log.info(
            "dedup of %d rows: %s", count, ", ".join(f"{x.method} {x.pairs} pairs" for x in links) or "no hash pass"
        )
        sem = None
        if plan is not None:
            sem = read_semantic(work, count, plan, found["semantic"], found.get("exact"))
            recall = {"pair_recall": None}
            if plan.recall_rows is not None:
                recall = recall_stats(sem.clusters, plan.recall_rows, *read_recall_pairs(work))
            sem.stats.update(device=device, **recall)
            links.append(sem.links)

    def vectors_of(rows: np.ndarray) -> np.ndarray:
        return gather_rows(files, VECTORS, rows, config.batch_size)

    extra = {"runner": "beam", "beam_counters": counters}
    return finish(config, files, out, columns, links, sem, vectors_of, device, began, extra)


def run(argv: list[str] | None = None, test_pipeline: Any = None) -> dict[str, Any]:
    """Entry point: parse the dedup stage's options (``mmembed dedup``'s), pass the rest to Beam, run, print the
    summary."""
    config, beam_args = parse_pipeline_args("dedup", argv, "python -m pipelines.dedup", __doc__)
    summary = run_config(config, beam_args, test_pipeline)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()
