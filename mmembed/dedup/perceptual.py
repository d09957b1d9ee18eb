"""Near-duplicate images by 64-bit pHash: pairs within a Hamming threshold, found by multi-index hashing.

Split the 64 bits into ``threshold + 1`` bands: two hashes at most ``threshold`` bits apart agree exactly on
at least one band (pigeonhole), so only rows sharing a (band, value) bucket are compared. Each verified pair is
kept only in the bucket of the FIRST band where the two agree, so no pair is reported twice (no global
dedup step in a Beam job). faiss' IndexBinaryMultiHash does the same search but verifies through a hash set
per query: 50x slower than these vectorised buckets on 200k hashes (232 s vs 4.5 s, one core).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from mmembed.dedup.links import Links, links_from_labels, reduce_links
from mmembed.schema import PHASH_BYTES

METHOD = "perceptual"
BITS = PHASH_BYTES * 8


def phash_codes(phash: pa.Array | pa.ChunkedArray | Sequence[bytes]) -> np.ndarray:
    """The ``phash`` column (8 bytes per row, as ``mmembed.decode.perceptual_hash`` packs them) as uint64."""
    if not isinstance(phash, (pa.Array, pa.ChunkedArray)):
        phash = pa.array(list(phash), type=pa.binary(PHASH_BYTES))
    chunks = phash.chunks if isinstance(phash, pa.ChunkedArray) else [phash]
    parts = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            raise ValueError("phash has null values; every embedded row carries one")
        data = np.frombuffer(chunk.buffers()[1], dtype=np.uint8)
        parts.append(data[chunk.offset * PHASH_BYTES : (chunk.offset + len(chunk)) * PHASH_BYTES])
    raw = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    return raw.view(">u8").astype(np.uint64)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64, as uint8."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    as_bytes = np.ascontiguousarray(x, dtype=np.uint64)
    return _POP8[as_bytes.view(np.uint8)].reshape(*as_bytes.shape, 8).sum(axis=-1, dtype=np.uint8)


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between uint64 hashes, elementwise."""
    return popcount(np.bitwise_xor(a, b))


def band_layout(threshold: int) -> tuple[tuple[int, int], ...]:
    """(shift, width) of the ``threshold + 1`` bands covering all 64 bits, widths differing by at most one."""
    if not 0 <= threshold < BITS:
        raise ValueError(f"threshold must be in [0, {BITS}), got {threshold}")
    count = threshold + 1
    widths = [BITS // count + (1 if i < BITS % count else 0) for i in range(count)]
    shifts = np.cumsum([0, *widths[:-1]])
    return tuple((BITS - int(s) - w, w) for s, w in zip(shifts, widths, strict=True))


def band_values(codes: np.ndarray, threshold: int, band: int) -> np.ndarray:
    """The value of ``band`` of each hash: the bucket key (with the band id) of a Beam GroupByKey."""
    shift, width = band_layout(threshold)[band]
    return (codes >> np.uint64(shift)) & np.uint64((1 << width) - 1)


def band_keys(code: int, threshold: int) -> Iterator[tuple[int, int]]:
    """(band, value) keys one hash is grouped under; a Beam job emits the row once per key."""
    for band, (shift, width) in enumerate(band_layout(threshold)):
        yield band, (int(code) >> shift) & ((1 << width) - 1)


def first_shared_band(a: np.ndarray, b: np.ndarray, threshold: int) -> np.ndarray:
    """Index of the first band where each pair of hashes agrees exactly (``threshold + 1`` when none does)."""
    first = np.full(len(a), threshold + 1, dtype=np.int64)
    for band in range(threshold, -1, -1):
        equal = band_values(a, threshold, band) == band_values(b, threshold, band)
        first[equal] = band
    return first


def bucket_pairs(
    row_ids: np.ndarray, codes: np.ndarray, band: int, threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (band, value) bucket: pairs within ``threshold`` whose first shared band is ``band``, as
    (left, right, distance) with left < right. Cost is quadratic in the bucket, memory linear."""
    rows = np.asarray(row_ids, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.uint64)
    order = np.argsort(rows, kind="stable")
    keys = np.zeros(len(rows), dtype=np.uint64)
    return _verified(keys, rows[order], codes[order], band, threshold)


def bucket_links(
    row_ids: np.ndarray, codes: np.ndarray, band: int, threshold: int, counts: np.ndarray | None = None
) -> Links:
    """Per (band, value) bucket, as links: ``bucket_pairs`` verified, each pair in its first shared band only.
    With ``counts``, each row stands for that many rows holding the same hash (identical hashes collapsed first,
    as ``perceptual_links`` does; a Beam job groups by hash value, then by band), and ``pairs`` counts the row
    pairs the links stand for."""
    rows = np.asarray(row_ids, dtype=np.int64)
    left, right, _ = bucket_pairs(rows, codes, band, threshold)
    pairs = len(left)
    if counts is not None and len(left):
        order = np.argsort(rows, kind="stable")
        weight = np.asarray(counts, dtype=np.int64)[order]
        at = rows[order]
        pairs = int((weight[np.searchsorted(at, left)] * weight[np.searchsorted(at, right)]).sum())
    return Links(METHOD, left, right, pairs)


def hamming_pairs(
    codes: np.ndarray, threshold: int, row_ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows whose hashes are at most ``threshold`` bits apart, as (left, right, distance) with
    left < right, sorted; exactly the brute-force all-pairs answer, found bucket by bucket."""
    codes = np.asarray(codes, dtype=np.uint64)
    rows = np.arange(len(codes), dtype=np.int64) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    found = []
    for band in range(threshold + 1):
        keys = band_values(codes, threshold, band)
        order = np.lexsort((rows, keys))
        found.append(_verified(keys[order], rows[order], codes[order], band, threshold))
    left, right, distance = (np.concatenate(parts) for parts in zip(*found, strict=True))
    order = np.lexsort((right, left))
    return left[order], right[order], distance[order]


def perceptual_links(codes: np.ndarray, threshold: int, row_ids: np.ndarray | None = None) -> Links:
    """Links between rows whose pHashes are within ``threshold`` bits. Identical hashes (blank or placeholder
    images, thousands alike) are collapsed first, so buckets only hold distinct hashes."""
    codes = np.asarray(codes, dtype=np.uint64)
    rows = np.arange(len(codes), dtype=np.int64) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    unique, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    identical = links_from_labels(METHOD, inverse, rows)
    first = np.full(len(unique), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, rows)
    p, q, _ = hamming_pairs(unique, threshold)
    pairs = identical.pairs + int((counts[p] * counts[q]).sum())
    left, right = np.concatenate([identical.left, first[p]]), np.concatenate([identical.right, first[q]])
    return reduce_links(Links(METHOD, left, right, pairs))


def _verified(
    keys: np.ndarray, rows: np.ndarray, codes: np.ndarray, band: int, threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified pairs among rows sorted by bucket key (rows ascending inside a bucket), owned by ``band``."""
    found: list[tuple[np.ndarray, np.ndarray]] = []  # (positions a, positions b) within the sorted arrays
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, len(keys)])
    for start, size in zip(starts[sizes > _SMALL_BUCKET], sizes[sizes > _SMALL_BUCKET], strict=True):
        found.extend(_tiled(codes, int(start), int(size), threshold))
    small = np.repeat(sizes <= _SMALL_BUCKET, sizes)
    found.extend(_offsets(keys, codes, np.flatnonzero(small[:-1] & (keys[:-1] == keys[1:])), threshold))
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    a, b = (np.concatenate(parts) for parts in zip(*found, strict=True))
    own = first_shared_band(codes[a], codes[b], threshold) == band
    a, b = a[own], b[own]
    return rows[a], rows[b], hamming(codes[a], codes[b]).astype(np.int64)


_SMALL_BUCKET = 256  # smaller buckets: position offsets across all buckets at once; larger: dense tiles
_TILE = 1024


def _offsets(
    keys: np.ndarray, codes: np.ndarray, active: np.ndarray, threshold: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Compare each position with the one ``k`` ahead for k = 1, 2, ... while any still shares its key
    (keys are sorted, so a partner k + 1 ahead implies one k ahead): one vectorised pass per k."""
    k = 1
    while len(active):
        partner = active + k
        hit = hamming(codes[active], codes[partner]) <= threshold
        yield active[hit], partner[hit]
        k += 1
        active = active[active + k < len(keys)]
        active = active[keys[active] == keys[active + k]]


def _tiled(codes: np.ndarray, start: int, size: int, threshold: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All pairs of one large bucket in dense row tiles (memory: tile x bucket distances)."""
    block = codes[start : start + size]
    for i0 in range(0, size, _TILE):
        flat = np.flatnonzero(popcount(block[i0 : i0 + _TILE, None] ^ block[None, i0:]) <= threshold)
        a, b = np.divmod(flat, size - i0)  # flatnonzero: 40x faster than a 2-d nonzero
        upper = b > a  # the tile starts at its own diagonal; hits are rare, so mask them, not the tile
        yield start + i0 + a[upper], start + i0 + b[upper]
