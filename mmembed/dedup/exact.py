"""Exact duplicates: rows whose image bytes hash to the same sha256 (a re-upload of the very same file)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from mmembed.dedup.links import Links, links_from_labels, star_links

METHOD = "exact"


def hash_codes(hashes: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """One int code per row, equal exactly when the hashes are equal (Arrow dictionary encoding, no Python
    strings per row, so millions of sha256 values stay cheap)."""
    array = hashes if isinstance(hashes, (pa.Array, pa.ChunkedArray)) else pa.array(list(hashes), type=pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if len(array) == 0:
        return np.zeros(0, dtype=np.int64)
    return array.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)


def exact_links(hashes: pa.Array | pa.ChunkedArray | Sequence[str], row_ids: np.ndarray | None = None) -> Links:
    """Links between rows with identical hashes: a star per hash value held by >= 2 rows."""
    return links_from_labels(METHOD, hash_codes(hashes), row_ids)


def bucket_links(row_ids: np.ndarray) -> Links:
    """Per hash bucket (a Beam GroupByKey on sha256): all rows are exact duplicates of each other."""
    return star_links(METHOD, row_ids)
