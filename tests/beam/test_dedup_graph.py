"""The Beam dedup job's graph does not grow with the data: translated for Dataflow (offline, ``--dry_run``) for a
10M-row, 512-d plan, no pickled transform reaches 1 MB, and the graph is as large as for a 10k-row plan.

The k-means centroids (~sqrt(rows) x dim: 6.5 MB at 10M rows), the recall query vectors and the work-item list
lie in the job's work dir; the graph holds their URLs and the workers load them in ``setup``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient", reason="needs apache-beam[gcp]")

from apache_beam.portability.api import beam_runner_api_pb2  # noqa: E402

from mmembed.beam.dedup import PLAN_FILE, SemanticPlan, add_dedup_job, stage_job  # noqa: E402
from mmembed.beam.runner import make_pipeline  # noqa: E402
from mmembed.dedup import DedupConfig  # noqa: E402
from mmembed.dedup.config import METHODS  # noqa: E402
from mmembed.dedup.run import cluster_count  # noqa: E402
from mmembed.index.reader import EmbeddingFiles  # noqa: E402
from tests.beam.test_dataflow_translate import offline  # noqa: E402, F401 - the fixture: no network, no credentials

pytestmark = pytest.mark.usefixtures("offline")
DIM = 512
ROWS_PER_FILE = 10_000
MB = 1 << 20
DATAFLOW_DRY_RUN = [
    "--runner=DataflowRunner",
    "--project=test-project",
    "--region=us-central1",
    "--temp_location=gs://mmembed-test/tmp",
    "--dry_run=true",
]


def planned_files(rows: int) -> EmbeddingFiles:
    """An embed output of ``rows`` rows in files of 10k rows, as the launcher would list it (nothing is read)."""
    count = math.ceil(rows / ROWS_PER_FILE)
    paths = tuple(f"s3://mmembed-data/emb/embeddings/shard-{i:06d}.parquet" for i in range(count))
    counts = tuple(min(ROWS_PER_FILE, rows - i * ROWS_PER_FILE) for i in range(count))
    return EmbeddingFiles(paths, counts, DIM, {})


def plan_for(config: DedupConfig, rows: int) -> SemanticPlan:
    """A plan of the launcher's shapes for ``rows`` rows: ~sqrt(rows) centroids, the default recall queries."""
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((cluster_count(config, rows), DIM), dtype=np.float32)
    queries = np.sort(rng.choice(rows, config.recall_queries, replace=False)).astype(np.int64)
    query_vectors = rng.standard_normal((len(queries), DIM), dtype=np.float32)
    return SemanticPlan(centroids, config.semantic("cuda"), queries, query_vectors)


def translate(rows: int, work: Path) -> beam_runner_api_pb2.Pipeline:
    """The Dataflow pipeline proto of the dedup job (all three methods) for ``rows`` rows; nothing runs."""
    config = DedupConfig("s3://mmembed-data/emb", "s3://mmembed-data/dedup", methods=METHODS)
    work.mkdir()
    pipeline = make_pipeline(DATAFLOW_DRY_RUN)
    add_dedup_job(pipeline, stage_job(str(work), planned_files(rows), config, plan_for(config, rows)))
    return pipeline.run().job.proto_pipeline  # a dry run returns the translated job unsubmitted


def payload_sizes(pipeline: beam_runner_api_pb2.Pipeline) -> dict[str, int]:
    """Bytes of each transform's payload (a ParDo's holds its pickled DoFn) by step name."""
    return {t.unique_name: len(t.spec.payload) for t in pipeline.components.transforms.values()}


def test_graph_of_a_10m_row_plan_is_small_and_as_large_as_a_small_one(tmp_path: Path) -> None:
    large = translate(10_000_000, tmp_path / "large")
    sizes = payload_sizes(large)
    for step in ("ReadFiles/ParDo(ReadFileFn)", "CompareClusters/ParDo(CompareClusterFn)"):
        assert f"FindDuplicates/{step}" in sizes, sorted(sizes)
    biggest = max(sizes, key=sizes.get)
    assert sizes[biggest] < MB, (biggest, sizes[biggest])
    assert large.ByteSize() < MB
    assert (tmp_path / "large" / PLAN_FILE).stat().st_size > 3162 * DIM * 4  # the centroids went there

    small = translate(10_000, tmp_path / "small")  # a work dir path of the same length: same-sized URLs
    assert abs(large.ByteSize() - small.ByteSize()) < 1024, (large.ByteSize(), small.ByteSize())
