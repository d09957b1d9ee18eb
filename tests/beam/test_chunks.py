"""Embedded samples travel as per-shard chunks: a batch splits into one chunk per shard without losing or mixing
samples, and a shard's chunks become the same table, sorted by offset, as per-sample rows would."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mmembed.records import EmbeddedChunk, EmbeddedSample
from mmembed.schema import chunk_table, embeddings_schema, embeddings_table


def row(shard: str, offset: int) -> dict:
    return {
        "key": f"key-{offset}",
        "shard": shard,
        "offset": offset,
        "caption": f"caption {offset}",
        "metadata": None,
        "url": None,
        "width": 10,
        "height": 20,
        "sha256": "0" * 64,
        "phash": bytes(8),
    }


def batch_results(rows: list[dict], dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image, text = rng.normal(size=(2, len(rows), dim)).astype(np.float32)
    return image, text, rng.random(len(rows), dtype=np.float32)


def test_a_batch_splits_into_one_chunk_per_shard_keeping_every_sample() -> None:
    rows = [row("a", 0), row("a", 10), row("b", 0), row("a", 20), row("c", 5), row("b", 7)]  # shards interleaved
    image, text, similarity = batch_results(rows, 3, 0)
    chunks = EmbeddedChunk.per_shard(rows, image, text, similarity)
    assert [(c.shard, [r["offset"] for r in c.rows]) for c in chunks] == [("a", [0, 10, 20]), ("b", [0, 7]), ("c", [5])]
    for chunk in chunks:
        assert {r["shard"] for r in chunk.rows} == {chunk.shard}  # a chunk never mixes shards
        for i, r in enumerate(chunk.rows):  # every row keeps its own vectors
            at = rows.index(r)
            assert (chunk.image_embeddings[i] == image[at]).all() and (chunk.text_embeddings[i] == text[at]).all()
            assert chunk.similarity[i] == similarity[at]
    assert sum(len(c) for c in chunks) == len(rows)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_joined_chunks_equal_per_sample_rows_sorted_by_offset(dtype: str) -> None:
    schema = embeddings_schema(4, dtype, {"model": "m"})
    chunks = [
        EmbeddedChunk.per_shard(rows, *batch_results(rows, 4, seed))[0]
        for seed, rows in enumerate([[row("s", 700), row("s", 100)], [row("s", 300)], [row("s", o) for o in (50, 900)]])
    ]
    joined = EmbeddedChunk.join("s", chunks)
    assert [r["offset"] for r in joined.rows] == [50, 100, 300, 700, 900]
    samples = [
        EmbeddedSample(r, chunk.image_embeddings[i], chunk.text_embeddings[i], float(chunk.similarity[i]))
        for chunk in chunks
        for i, r in enumerate(chunk.rows)
    ]
    expected = embeddings_table(sorted(samples, key=lambda s: s.row["offset"]), schema)
    table = chunk_table(joined, schema)
    assert table.schema.equals(schema, check_metadata=True) and table.equals(expected)


def test_a_shard_without_rows_is_an_empty_table_of_the_schema() -> None:
    schema = embeddings_schema(4, "float16", {"model": "m"})
    table = chunk_table(EmbeddedChunk.join("s", []), schema)
    assert table.num_rows == 0 and table.schema.equals(schema, check_metadata=True)
    assert table.equals(embeddings_table([], schema))
    assert isinstance(table.column("image_embedding").type, pa.FixedSizeListType)
