"""Links: the duplicate edges one method found, as row-id arrays, reduced to star forests to stay linear in size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class Links:
    """Edges ``left[i] -- right[i]`` (global row ids) found by ``method``; ``pairs`` counts the duplicate pairs
    they stand for, which can be far more than the links (a star of m rows links m - 1 edges, m(m-1)/2 pairs)."""

    method: str
    left: np.ndarray
    right: np.ndarray
    pairs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "left", np.asarray(self.left, dtype=np.int64))
        object.__setattr__(self, "right", np.asarray(self.right, dtype=np.int64))
        if self.left.shape != self.right.shape or self.left.ndim != 1:
            raise ValueError("left and right must be 1-d arrays of the same length")

    def __len__(self) -> int:
        return len(self.left)

    def rows(self) -> np.ndarray:
        """The sorted distinct rows these links touch."""
        return np.unique(np.concatenate([self.left, self.right]))


def star_links(method: str, row_ids: np.ndarray, pairs: int | None = None) -> Links:
    """One group of rows that are all duplicates of each other (a hash bucket): each row linked to the smallest."""
    rows = np.unique(np.asarray(row_ids, dtype=np.int64))
    count = len(rows) * (len(rows) - 1) // 2 if pairs is None else pairs
    return Links(method, np.full(max(len(rows) - 1, 0), rows[0] if len(rows) else 0), rows[1:], count)


def forest(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduce any edge list to a star forest with the same connected components: each node -> its component's
    smallest node. At most one edge per node, so repeated reductions keep memory linear."""
    left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    if len(left) == 0:
        return left, right
    nodes, local = np.unique(np.concatenate([left, right]), return_inverse=True)
    m, e = len(nodes), len(left)
    graph = coo_matrix((np.ones(e, dtype=np.int8), (local[:e], local[e:])), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    root = np.full(labels.max() + 1, m, dtype=np.int64)
    np.minimum.at(root, labels, np.arange(m))  # nodes are sorted, so the smallest local index is the smallest row
    targets = root[labels]
    keep = targets != np.arange(m)
    return nodes[targets[keep]], nodes[keep]


def reduce_links(links: Links) -> Links:
    """The same components with at most one link per row."""
    left, right = forest(links.left, links.right)
    return Links(links.method, left, right, links.pairs)


def links_from_labels(method: str, labels: np.ndarray, row_ids: np.ndarray | None = None) -> Links:
    """Rows sharing a label (a hash code, a component id) are duplicates: a star per label with >= 2 rows."""
    labels = np.asarray(labels)
    rows = np.arange(len(labels), dtype=np.int64) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    if len(labels) == 0:
        return Links(method, rows[:0], rows[:0], 0)
    order = np.lexsort((rows, labels))
    sorted_labels, sorted_rows = labels[order], rows[order]
    starts = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    sizes = np.diff(np.r_[np.flatnonzero(starts), len(order)])
    member = ~starts
    return Links(method, sorted_rows[first[member]], sorted_rows[member], int((sizes * (sizes - 1) // 2).sum()))
