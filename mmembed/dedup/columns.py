"""The small per-row columns dedup needs (ids, hashes, keep-policy inputs), read from the embeddings files
without their vectors: ~100 bytes a row, so millions of rows fit in memory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmembed.index.reader import EmbeddingFiles, read_error

DEDUP_COLUMNS = ("key", "shard", "sha256", "phash", "similarity", "width", "height")


def read_columns(files: EmbeddingFiles, columns: tuple[str, ...] = DEDUP_COLUMNS, batch_size: int = 65_536) -> pa.Table:
    """``columns`` of every row in global row-id order (the order ``iter_vectors`` streams vectors in); a
    corrupt file is an ``EmbeddingsReadError`` naming it, like every other read of the index reader."""
    tables = []
    for path, rows in zip(files.paths, files.counts, strict=True):
        if rows == 0:
            continue
        try:
            parquet = pq.ParquetFile(path)
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                raise pa.ArrowInvalid(f"columns {missing} missing; written by an older embed job?")
            tables.extend(
                pa.Table.from_batches([batch])
                for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns))
            )
        except (OSError, pa.ArrowException) as exc:
            raise read_error(path, exc) from exc
    if not tables:
        return pa.table({c: pa.array([], type=pa.string()) for c in columns})
    table = pa.concat_tables(tables)
    if table.num_rows != files.count:
        raise read_error(files.paths[-1], ValueError(f"read {table.num_rows} rows, footers say {files.count}"))
    return table


def numeric(table: pa.Table, column: str, dtype: type = np.float64) -> np.ndarray:
    """One numeric column as a numpy array."""
    return table.column(column).to_numpy().astype(dtype, copy=False)
