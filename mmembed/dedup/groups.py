"""Duplicate groups: every removed sample is a near-duplicate of the sample kept for its group.

Links (every method's, as star forests) give connected components, which are transitive: a~b and b~c put a,
b and c together even when a and c are far apart, and a chain can run brick -> grass -> clock -> camera.
``split_chains`` therefore regroups each component as SemDeDup drops items: walk its rows in keep order;
the best row not yet placed is kept, and every unplaced row within a method's threshold *of it* joins its
group. A row is only ever removed for its own similarity to a kept row, never through intermediates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mmembed.config import ConfigError
from mmembed.dedup.config import KEEP_POLICIES, METHODS
from mmembed.dedup.links import Links
from mmembed.dedup.perceptual import hamming

METHOD_BITS = {name: 1 << i for i, name in enumerate(METHODS)}


@dataclass(frozen=True)
class Groups:
    """Per row: ``group`` id (-1 when the row has no duplicate) and the bitmask of the methods that linked it.
    Group ids are 0..count-1, numbered by each group's smallest (shard, key), so they do not depend on the
    order links arrive in."""

    group: np.ndarray
    methods: np.ndarray
    count: int

    @property
    def members(self) -> np.ndarray:
        """Rows that belong to a group (duplicates, kept or not), ascending."""
        return np.flatnonzero(self.group >= 0)


def sort_rank(shard: pa.ChunkedArray | pa.Array, key: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Each row's position in (shard, key) order: the deterministic tie-break of every policy."""
    table = pa.table({"shard": shard, "key": key})
    order = pc.sort_indices(table, sort_keys=[("shard", "ascending"), ("key", "ascending")]).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank


def build_groups(count: int, links: Iterable[Links], rank: np.ndarray | None = None) -> Groups:
    """Union every method's links over ``count`` rows into groups (connected components)."""
    rank = np.arange(count, dtype=np.int64) if rank is None else np.asarray(rank, dtype=np.int64)
    methods = np.zeros(count, dtype=np.uint8)
    left, right = [], []
    for link in links:
        if link.method not in METHOD_BITS:
            raise ValueError(f"unknown method {link.method!r}; expected one of {METHODS}")
        methods[link.left] |= METHOD_BITS[link.method]
        methods[link.right] |= METHOD_BITS[link.method]
        left.append(link.left)
        right.append(link.right)
    a = np.concatenate(left) if left else np.zeros(0, dtype=np.int64)
    b = np.concatenate(right) if right else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component, minlength=1)
    in_group = sizes[component] > 1
    return _numbered(np.where(in_group, component, -1), methods, rank)


def _numbered(label: np.ndarray, methods: np.ndarray, rank: np.ndarray) -> Groups:
    """Groups from per-row labels (-1: no group), renumbered 0.. by each group's smallest (shard, key)."""
    group = np.full(len(label), -1, dtype=np.int64)
    rows = np.flatnonzero(label >= 0)
    if len(rows):
        rows = rows[np.argsort(rank[rows], kind="stable")]  # walk members in (shard, key) order
        labels, first_seen = np.unique(label[rows], return_index=True)
        number = np.empty(label.max() + 1, dtype=np.int64)
        number[labels[np.argsort(first_seen)]] = np.arange(len(labels))
        group[rows] = number[label[rows]]
    methods = np.where(group >= 0, methods, 0).astype(np.uint8)
    return Groups(group, methods, int(group.max() + 1) if len(group) else 0)


@dataclass(frozen=True)
class NearTests:
    """Per method in use, what makes a row a near-duplicate of a kept row: equal sha256 codes, pHashes within
    ``phash_threshold`` bits, image-embedding cosine above ``cosine_above`` (vectors via ``vectors_of``)."""

    sha256: np.ndarray | None = None
    phash: np.ndarray | None = None
    phash_threshold: int = 0
    vectors_of: Callable[[np.ndarray], np.ndarray] | None = None
    cosine_above: float = 1.0

    def against(self, kept: int, rows: np.ndarray, vectors: np.ndarray | None) -> np.ndarray:
        """The methods (bitmask per row) by which each of ``rows`` is a near-duplicate of row ``kept``;
        ``vectors`` holds the image vectors of ``[kept, *rows]`` when semantic is in use."""
        found = np.zeros(len(rows), dtype=np.uint8)
        if self.sha256 is not None:
            found |= np.where(self.sha256[rows] == self.sha256[kept], METHOD_BITS["exact"], 0).astype(np.uint8)
        if self.phash is not None:
            close = hamming(self.phash[rows], np.uint64(self.phash[kept])) <= self.phash_threshold
            found |= np.where(close, METHOD_BITS["perceptual"], 0).astype(np.uint8)
        if vectors is not None:
            close = vectors[1:] @ vectors[0] > np.float32(self.cosine_above)
            found |= np.where(close, METHOD_BITS["semantic"], 0).astype(np.uint8)
        return found


def split_chains(
    groups: Groups, score: np.ndarray, rank: np.ndarray, near: NearTests, chunk_rows: int = 65_536
) -> Groups:
    """Regroup each component so that every member is a near-duplicate of its group's kept row (the one
    ``choose_kept`` then picks: highest score, ties to the smallest (shard, key)); rows that are near no kept
    row become kept rows of groups of their own, or no group at all. Vectors are fetched for about
    ``chunk_rows`` members at a time (one ``vectors_of`` call per chunk of whole components)."""
    rows = groups.members
    order = rows[np.lexsort((rank[rows], -np.asarray(score, dtype=np.float64)[rows], groups.group[rows]))]
    label = np.full(len(groups.group), -1, dtype=np.int64)
    methods = np.zeros(len(groups.group), dtype=np.uint8)
    components = np.split(order, np.flatnonzero(np.diff(groups.group[order])) + 1) if len(order) else []
    for batch in _chunks(components, chunk_rows):
        vectors = [None] * len(batch)
        if near.vectors_of is not None:
            unique, inverse = np.unique(np.concatenate(batch), return_inverse=True)
            fetched = np.asarray(near.vectors_of(unique), dtype=np.float32)[inverse]
            vectors = np.split(fetched, np.cumsum([len(c) for c in batch])[:-1])
        for component, component_vectors in zip(batch, vectors, strict=True):
            _split_component(component, component_vectors, near, label, methods)
    return _numbered(label, methods, rank)


def _chunks(components: list[np.ndarray], chunk_rows: int) -> Iterable[list[np.ndarray]]:
    """Consecutive components, about ``chunk_rows`` rows a list (a larger component alone)."""
    batch: list[np.ndarray] = []
    size = 0
    for component in components:
        if batch and size + len(component) > chunk_rows:
            yield batch
            batch, size = [], 0
        batch.append(component)
        size += len(component)
    if batch:
        yield batch


def _split_component(
    rows: np.ndarray, vectors: np.ndarray | None, near: NearTests, label: np.ndarray, methods: np.ndarray
) -> None:
    """Greedy in keep order over one component's ``rows`` (``vectors`` aligned with them, for semantic): the
    first unplaced row is kept, the unplaced rows near it join it; fills ``label`` (a group's label is its
    kept row) and ``methods`` for those rows."""
    position = np.arange(len(rows))
    while len(position) > 1:
        kept, others = position[0], position[1:]
        found = near.against(rows[kept], rows[others], None if vectors is None else vectors[position])
        joined = others[found > 0]
        if len(joined):
            label[rows[[kept, *joined]]] = rows[kept]
            methods[rows[joined]] = found[found > 0]
            methods[rows[kept]] = np.bitwise_or.reduce(found[found > 0])
        position = others[found == 0]


def keep_score(
    policy: str,
    *,
    rank: np.ndarray,
    similarity: np.ndarray | None = None,
    width: np.ndarray | None = None,
    height: np.ndarray | None = None,
    centroid_similarity: np.ndarray | None = None,
) -> np.ndarray:
    """Higher is kept. similarity: image-text cosine; resolution: pixels; first: smallest (shard, key);
    semdedup-hard / -easy: farthest from / closest to its cluster centroid (SemDeDup's 'hard' keeps outliers).

    A missing value (NaN: an image-only sample's null similarity, a row without a centroid cosine) ranks
    lowest, below every real one: a captioned copy is kept over an image-only one, and among rows that all
    lack it the tie-break (smallest (shard, key)) decides."""
    if policy not in KEEP_POLICIES:
        raise ConfigError(f"keep policy {policy!r} is not one of {KEEP_POLICIES}")
    columns = {
        "similarity": (similarity,),
        "resolution": (width, height),
        "first": (rank,),
        "semdedup-hard": (centroid_similarity,),
        "semdedup-easy": (centroid_similarity,),
    }[policy]
    if any(column is None for column in columns):
        raise ValueError(f"keep policy {policy!r} needs its column(s); pass them to keep_score")
    if policy == "resolution":
        return np.asarray(width, dtype=np.float64) * np.asarray(height, dtype=np.float64)
    if policy == "first":
        return -np.asarray(rank, dtype=np.float64)
    sign = -1.0 if policy == "semdedup-hard" else 1.0
    score = sign * np.asarray(columns[0], dtype=np.float64)
    return np.where(np.isnan(score), -np.inf, score)


def choose_kept(groups: Groups, score: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The kept row of each group (indexed by group id): highest score, ties to the smallest (shard, key)."""
    rows = groups.members
    order = np.lexsort((rank[rows], -np.asarray(score, dtype=np.float64)[rows], groups.group[rows]))
    ordered = rows[order]
    first = np.r_[True, groups.group[ordered][1:] != groups.group[ordered][:-1]] if len(ordered) else []
    kept = ordered[first]
    return kept[np.argsort(groups.group[kept])] if len(kept) else np.zeros(0, dtype=np.int64)


def kept_mask(groups: Groups, kept: np.ndarray) -> np.ndarray:
    """True for every row that survives: rows without duplicates and each group's kept row."""
    mask = groups.group < 0
    mask[kept] = True
    return mask


def similarity_to_kept(
    groups: Groups, kept: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray], chunk_rows: int = 65_536
) -> np.ndarray:
    """Cosine between each group member's image embedding and its group's kept one (1 for the kept row),
    for members in order; vectors are fetched ``chunk_rows`` at a time by ``vectors_of(sorted unique rows)``."""
    members = groups.members
    partner = kept[groups.group[members]]
    out = np.empty(len(members), dtype=np.float32)
    for start in range(0, len(members), chunk_rows):
        rows, others = members[start : start + chunk_rows], partner[start : start + chunk_rows]
        needed, inverse = np.unique(np.concatenate([rows, others]), return_inverse=True)
        vectors = vectors_of(needed)
        a, b = vectors[inverse[: len(rows)]], vectors[inverse[len(rows) :]]
        out[start : start + len(rows)] = np.einsum("ij,ij->i", a, b)
    out[members == partner] = 1.0
    return out


def method_names(bits: int) -> list[str]:
    """The method names set in a bitmask, in METHODS order."""
    return [name for name in METHODS if bits & METHOD_BITS[name]]


def method_counts(groups: Groups, removed: np.ndarray, methods: Sequence[str] = METHODS) -> dict[str, dict[str, int]]:
    """Per method: rows it linked and removed rows it linked (a row linked by two methods counts in both)."""
    return {
        name: {
            "rows": int(np.count_nonzero(groups.methods & METHOD_BITS[name])),
            "removed": int(np.count_nonzero(groups.methods[removed] & METHOD_BITS[name])),
        }
        for name in methods
    }
