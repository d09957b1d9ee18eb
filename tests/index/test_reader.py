"""reader.py: file listing, footer counts, one-provenance check, corrupt files named, bounded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.config import ConfigError
from mmembed.index.reader import (
    EmbeddingsReadError,
    gather_rows,
    iter_ids,
    iter_vectors,
    open_embeddings,
    open_files,
)
from tests.index.synth import blobs, encoder_provenance, write_embed_dir, write_shard

DIM = 16


@pytest.fixture
def embed_dir(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    image, text = blobs(250, DIM, seed=1), blobs(250, DIM, seed=2)
    write_embed_dir(tmp_path / "emb", image, text, per_shard=100)
    return tmp_path / "emb", image, text


def test_counts_come_from_footers(embed_dir) -> None:
    folder, image, _ = embed_dir
    files = open_embeddings(str(folder))
    assert [Path(p).name for p in files.paths] == [f"shard-0000{i}.parquet" for i in range(3)]
    assert files.counts == (100, 100, 50) and files.count == 250
    assert files.dim == DIM
    assert files.provenance["model"] == "mmembed-tiny" and files.provenance["dim"] == DIM


def test_streams_float32_in_bounded_batches_with_ids(embed_dir) -> None:
    folder, image, text = embed_dir
    files = open_embeddings(str(folder))
    batches = list(iter_vectors(files, "image_embedding", batch_size=40, with_ids=True))
    assert max(len(b.vectors) for b in batches) <= 40
    assert [b.start for b in batches] == list(np.cumsum([0] + [len(b.vectors) for b in batches[:-1]]))
    vectors = np.concatenate([b.vectors for b in batches])
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_array_equal(vectors, image)
    keys = [k for b in batches for k in b.ids.column("key").to_pylist()]
    assert keys[:2] == ["shard-00000-000000", "shard-00000-000001"] and keys[-1] == "shard-00002-000049"
    assert sum(t.num_rows for t in iter_ids(files, batch_size=64)) == 250
    text_vectors = np.concatenate([b.vectors for b in iter_vectors(files, "text_embedding")])
    np.testing.assert_array_equal(text_vectors, text)


def test_float16_files_come_out_as_float32(tmp_path: Path) -> None:
    image = blobs(30, DIM, seed=3)
    write_embed_dir(tmp_path, image, image, per_shard=30, dtype="float16")
    files = open_embeddings(str(tmp_path))
    (batch,) = iter_vectors(files, "image_embedding")
    assert batch.vectors.dtype == np.float32
    np.testing.assert_allclose(batch.vectors, image, atol=1e-3)


def test_gather_rows_picks_a_sorted_sample_across_files(embed_dir) -> None:
    folder, image, _ = embed_dir
    files = open_embeddings(str(folder))
    rows = np.array([0, 99, 100, 180, 249])
    np.testing.assert_array_equal(gather_rows(files, "image_embedding", rows, batch_size=30), image[rows])
    with pytest.raises(ValueError, match="sorted"):
        gather_rows(files, "image_embedding", np.array([5, 3]))


def test_mixed_provenance_is_refused_naming_the_files(tmp_path: Path) -> None:
    image = blobs(20, DIM, seed=4)
    a = write_shard(tmp_path / "embeddings" / "a.parquet", "a", image, image, encoder_provenance(DIM))
    b = write_shard(tmp_path / "embeddings" / "b.parquet", "b", image, image, encoder_provenance(DIM, model="other"))
    with pytest.raises(ConfigError, match="different models") as info:
        open_embeddings(str(tmp_path))
    assert str(a) in str(info.value) and str(b) in str(info.value)
    assert 'model="other"' in str(info.value)


def test_other_seed_is_other_weights(tmp_path: Path) -> None:
    image = blobs(20, DIM, seed=4)
    a = write_shard(tmp_path / "a.parquet", "a", image, image, encoder_provenance(DIM, seed=0))
    b = write_shard(tmp_path / "b.parquet", "b", image, image, encoder_provenance(DIM, seed=1))
    with pytest.raises(ConfigError, match="different models"):
        open_files([str(a), str(b)])


def test_float16_and_float32_files_may_share_an_index(tmp_path: Path) -> None:
    image = blobs(20, DIM, seed=4)
    a = write_shard(tmp_path / "a.parquet", "a", image, image, encoder_provenance(DIM), dtype="float32")
    b = write_shard(tmp_path / "b.parquet", "b", image, image, encoder_provenance(DIM), dtype="float16")
    assert open_files([str(a), str(b)]).count == 40


def test_truncated_file_is_named(embed_dir) -> None:
    folder, _, _ = embed_dir
    victim = folder / "embeddings" / "shard-00001.parquet"
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(EmbeddingsReadError, match="shard-00001.parquet") as info:
        open_embeddings(str(folder))
    assert "--overwrite" in str(info.value)


def test_corrupt_data_pages_are_named_while_streaming(embed_dir) -> None:
    folder, _, _ = embed_dir
    victim = folder / "embeddings" / "shard-00002.parquet"
    files = open_embeddings(str(folder))  # footer still fine
    group = pq.ParquetFile(victim).metadata.row_group(0)
    chunk = next(
        group.column(i)
        for i in range(group.num_columns)
        if group.column(i).path_in_schema.startswith("image_embedding")
    )
    start, size = chunk.data_page_offset, chunk.total_compressed_size
    data = bytearray(victim.read_bytes())
    data[start : start + size] = b"\xff" * size  # smash the vectors' pages, keep the footer
    victim.write_bytes(bytes(data))
    with pytest.raises(EmbeddingsReadError, match="shard-00002.parquet"):
        for _ in iter_vectors(files, "image_embedding"):
            pass


def test_file_without_provenance_or_embeddings_is_refused(tmp_path: Path) -> None:
    image = blobs(5, DIM, seed=5)
    path = write_shard(tmp_path / "a.parquet", "a", image, image, encoder_provenance(DIM))
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "bare.parquet")
    with pytest.raises(ConfigError, match="no mmembed provenance"):
        open_files([str(tmp_path / "bare.parquet")])
    pq.write_table(table.drop_columns(["text_embedding"]), tmp_path / "half.parquet")
    with pytest.raises(ConfigError, match="text_embedding"):
        open_files([str(tmp_path / "half.parquet")])


def test_empty_dir_says_run_the_embed_job(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run the embed job first"):
        open_embeddings(str(tmp_path))
