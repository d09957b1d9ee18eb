"""The small per-row columns dedup needs (ids, hashes, keep-policy inputs), read from the embeddings files
without their vectors: ~100 bytes a row, so millions of rows fit in memory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmembed.index.reader import EmbeddingFiles, iter_columns, read_error

DEDUP_COLUMNS = ("key", "shard", "sha256", "phash", "similarity", "width", "height")


def read_columns(files: EmbeddingFiles, columns: tuple[str, ...] = DEDUP_COLUMNS, batch_size: int = 65_536) -> pa.Table:
    """``columns`` of every row in global row-id order (the order ``iter_vectors`` streams vectors in); a
    corrupt file is an ``EmbeddingsReadError`` naming it, like every other read of the index reader."""
    tables = list(iter_columns(files, columns, batch_size))
    if not tables:
        return pa.table({c: pa.array([], type=pa.string()) for c in columns})
    table = pa.concat_tables(tables)
    if table.num_rows != files.count:
        raise read_error(files.paths[-1], ValueError(f"read {table.num_rows} rows, footers say {files.count}"))
    return table


def numeric(table: pa.Table, column: str, dtype: type = np.float64) -> np.ndarray:
    """One numeric column as a numpy array; nulls (an image-only sample's similarity) read as NaN."""
    return table.column(column).to_numpy().astype(dtype, copy=False)
