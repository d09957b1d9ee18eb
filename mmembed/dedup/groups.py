"""Duplicate groups: connected components of every method's links, one member kept per group by a policy.

Components are transitive (a~b and b~c put a, b, c in one group even when a and c are far apart), which is
what a keep list needs: each group keeps exactly one sample.
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
    group = np.full(count, -1, dtype=np.int64)
    rows = np.flatnonzero(in_group)
    if len(rows):
        rows = rows[np.argsort(rank[rows], kind="stable")]  # walk members in (shard, key) order
        comps, first_seen = np.unique(component[rows], return_index=True)
        number = np.empty(component.max() + 1, dtype=np.int64)
        number[comps[np.argsort(first_seen)]] = np.arange(len(comps))
        group[rows] = number[component[rows]]
    return Groups(group, methods, int(group.max() + 1) if count else 0)


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
    semdedup-hard / -easy: farthest from / closest to its cluster centroid (SemDeDup's 'hard' keeps outliers)."""
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
    return sign * np.asarray(columns[0], dtype=np.float64)


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
