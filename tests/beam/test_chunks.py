"""Embedded samples travel as per-shard chunks: a batch splits into one chunk per shard without losing or mixing
samples, and a shard's chunks become the same table, sorted by offset, as its rows built one by one would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmembed.records import EmbeddedChunk
from mmembed.schema import chunk_table, embeddings_schema, text_present


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


def batch_results(rows: list[dict], dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded image and text vectors, cosines, and which rows have a text vector (about half do not)."""
    rng = np.random.default_rng(seed)
    image, text = rng.normal(size=(2, len(rows), dim)).astype(np.float32)
    has_text = rng.random(len(rows)) > 0.5
    text[~has_text] = 0
    return image, text, np.where(has_text, rng.random(len(rows), dtype=np.float32), 0), has_text


def rows_table(samples: list[tuple[dict, np.ndarray, np.ndarray, float | None]], schema: pa.Schema) -> pa.Table:
    """(row, image vector, text vector, cosine or None for an image-only row) built into ``schema`` one row at a
    time, independently of ``chunk_table``: a zero text vector and a null cosine for an image-only row."""
    dtype = np.float16 if schema.field("image_embedding").type.value_type == pa.float16() else np.float32
    records = [
        {
            **row,
            "image_embedding": list(image.astype(dtype)),
            "text_embedding": list((text if cosine is not None else np.zeros_like(text)).astype(dtype)),
            "similarity": cosine,
        }
        for row, image, text, cosine in samples
    ]
    return pa.Table.from_pylist(records, schema=schema)


def test_a_batch_splits_into_one_chunk_per_shard_keeping_every_sample() -> None:
    rows = [row("a", 0), row("a", 10), row("b", 0), row("a", 20), row("c", 5), row("b", 7)]  # shards interleaved
    image, text, similarity, has_text = batch_results(rows, 3, 0)
    chunks = EmbeddedChunk.per_shard(rows, image, text, similarity, has_text)
    assert [(c.shard, [r["offset"] for r in c.rows]) for c in chunks] == [("a", [0, 10, 20]), ("b", [0, 7]), ("c", [5])]
    for chunk in chunks:
        assert {r["shard"] for r in chunk.rows} == {chunk.shard}  # a chunk never mixes shards
        for i, r in enumerate(chunk.rows):  # every row keeps its own vectors
            at = rows.index(r)
            assert (chunk.image_embeddings[i] == image[at]).all() and (chunk.text_embeddings[i] == text[at]).all()
            assert chunk.similarity[i] == similarity[at] and chunk.has_text[i] == has_text[at]
    assert sum(len(c) for c in chunks) == len(rows)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_joined_chunks_equal_per_sample_rows_sorted_by_offset(dtype: str) -> None:
    schema = embeddings_schema(4, dtype, {"model": "m"})
    chunks = [
        EmbeddedChunk.per_shard(rows, *batch_results(rows, 4, seed))[0]
        for seed, rows in enumerate(
            [[row("s", 700), row("s", 100)], [row("s", 300)], [row("s", o) for o in (50, 900)]], 3
        )
    ]
    joined = EmbeddedChunk.join("s", chunks)
    assert [r["offset"] for r in joined.rows] == [50, 100, 300, 700, 900]
    samples = [
        (
            r,
            chunk.image_embeddings[i],
            chunk.text_embeddings[i],
            float(chunk.similarity[i]) if chunk.has_text[i] else None,
        )
        for chunk in chunks
        for i, r in enumerate(chunk.rows)
    ]
    assert 0 < sum(s[3] is None for s in samples) < len(samples)  # both kinds of row
    expected = rows_table(sorted(samples, key=lambda s: s[0]["offset"]), schema)
    table = chunk_table(joined, schema)
    assert table.schema.equals(schema, check_metadata=True) and table.equals(expected)


def test_image_only_rows_read_back_from_parquet_as_zero_text_and_null_similarity(tmp_path: Path) -> None:
    rows = [row("s", offset) for offset in range(0, 90, 10)]
    chunk = EmbeddedChunk.per_shard(rows, *batch_results(rows, 4, 3))[0]
    pq.write_table(chunk_table(chunk, embeddings_schema(4, "float32", {"model": "m"})), tmp_path / "s.parquet")
    table = pq.read_table(tmp_path / "s.parquet")  # a null fixed_size_list slot would not read back (pyarrow 25)
    assert text_present(table.column("similarity")).tolist() == chunk.has_text.tolist()
    text = np.stack(table.column("text_embedding").to_numpy(zero_copy_only=False))
    assert (text[~chunk.has_text] == 0).all() and (text[chunk.has_text] == chunk.text_embeddings[chunk.has_text]).all()


def test_a_shard_without_rows_is_an_empty_table_of_the_schema() -> None:
    schema = embeddings_schema(4, "float16", {"model": "m"})
    table = chunk_table(EmbeddedChunk.join("s", []), schema)
    assert table.num_rows == 0 and table.schema.equals(schema, check_metadata=True)
    assert table.equals(rows_table([], schema))
    assert isinstance(table.column("image_embedding").type, pa.FixedSizeListType)
