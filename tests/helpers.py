"""Test helpers: run the embed job on Beam's offline in-process runner and read its outputs; measure an index's
recall over its own vectors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline

from mmembed.config import DecodeConfig, EmbedJobConfig, EncoderConfig
from mmembed.embed.job import run_job
from mmembed.index.evaluate import evaluate_index, exact_search, sample_rows
from mmembed.index.reader import EmbeddingFiles, gather_rows, iter_vectors, vector_rows
from mmembed.index.selection import NO_TEXT, RowFilter


def offline_test_pipeline() -> TestPipeline:
    """A TestPipeline on FnApiRunner: Beam's default local runner would try to download Prism."""
    return TestPipeline(runner=FnApiRunner(), options=None, blocking=True)


def embed(
    shards: list[str] | tuple[str, ...],
    out: Path,
    encoder: EncoderConfig,
    decode: DecodeConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the embed job through a TestPipeline and return its summary."""
    config = EmbedJobConfig(
        shards=tuple(shards), out=str(out), encoder=encoder, decode=decode or DecodeConfig(), overwrite=overwrite
    )
    return run_job(config, test_pipeline=offline_test_pipeline())


def read_dir(folder: Path) -> pa.Table:
    """All Parquet files of an output folder as one table, in file-name order."""
    files = sorted(folder.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def evaluate_recall(
    index: faiss.Index,
    files: EmbeddingFiles,
    column: str,
    n_queries: int = 1000,
    ks: Sequence[int] = (1, 10, 100),
    seed: int = 0,
    batch_size: int = 65_536,
) -> dict:
    """Recall of ``index`` over ``files``' ``column`` with a seeded sample of its own vectors as queries (rows
    that hold one; the index searched over those rows only)."""
    present = vector_rows(files, column, batch_size)
    if not len(present):
        return {"available": False, "reason": NO_TEXT}
    rows = sample_rows(files.count, n_queries, seed, within=present)
    queries = gather_rows(files, column, rows, batch_size)
    truth = exact_search(queries, iter_vectors(files, column, batch_size), min(max(ks), len(present)))
    mask = np.zeros(files.count, dtype=bool)
    mask[present] = True
    return evaluate_index(index, queries, truth, ks, RowFilter.of(mask))
