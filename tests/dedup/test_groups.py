"""groups.py: components across methods, split so that every removed row is near its kept row; ids that do
not depend on link order; every keep policy with deterministic tie-breaks; similarity to the kept row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mmembed.config import ConfigError
from mmembed.dedup.groups import (
    NearTests,
    build_groups,
    choose_kept,
    keep_score,
    kept_mask,
    method_counts,
    method_names,
    similarity_to_kept,
    sort_rank,
    split_chains,
)
from mmembed.dedup.links import Links, forest, links_from_labels

# 10 rows. exact: 1-4; perceptual: 4-7; semantic: 7-8 and 2-3 -> groups {1,4,7,8}, {2,3}; 0, 5, 6, 9 alone.
LINKS = [Links("exact", [1], [4]), Links("perceptual", [7], [4]), Links("semantic", [8, 3], [7, 2])]


def test_union_is_transitive_across_methods() -> None:
    groups = build_groups(10, LINKS)
    assert groups.count == 2
    assert groups.group.tolist() == [-1, 0, 1, 1, 0, -1, -1, 0, 0, -1]  # numbered by first member
    assert groups.members.tolist() == [1, 2, 3, 4, 7, 8]
    assert [method_names(int(b)) for b in groups.methods[[1, 4, 7, 8, 2]]] == [
        ["exact"],
        ["exact", "perceptual"],
        ["perceptual", "semantic"],
        ["semantic"],
        ["semantic"],
    ]


def test_group_ids_do_not_depend_on_link_order_and_follow_shard_key_order() -> None:
    reversed_links = [Links(x.method, x.right[::-1], x.left[::-1]) for x in reversed(LINKS)]
    np.testing.assert_array_equal(build_groups(10, LINKS).group, build_groups(10, reversed_links).group)
    rank = np.array([5, 6, 1, 0, 7, 2, 3, 8, 9, 4])  # row 3 first in (shard, key) order: its group is 0
    assert build_groups(10, LINKS, rank).group.tolist() == [-1, 1, 0, 0, 1, -1, -1, 1, 1, -1]


def test_sort_rank_orders_by_shard_then_key() -> None:
    shard = pa.array(["s1", "s0", "s1", "s0"])
    key = pa.array(["a", "z", "b", "c"])
    assert sort_rank(shard, key).tolist() == [2, 1, 3, 0]


def _kept(policy: str, **columns: np.ndarray) -> list[int]:
    groups = build_groups(10, LINKS)
    rank = columns.pop("rank", np.arange(10))
    return choose_kept(groups, keep_score(policy, rank=rank, **columns), rank).tolist()


def test_keep_policies() -> None:
    similarity = np.array([0.9, 0.1, 0.2, 0.3, 0.5, 0.9, 0.9, 0.4, 0.5, 0.9])
    assert _kept("similarity", similarity=similarity) == [4, 3]  # ties 4 / 8 at 0.5 -> smaller (shard, key)
    assert _kept("similarity", similarity=similarity, rank=np.arange(10)[::-1].copy()) == [8, 3]
    width, height = np.full(10, 100), np.full(10, 100)
    width[7], height[2] = 200, 300
    assert _kept("resolution", width=width, height=height) == [7, 2]
    assert _kept("first") == [1, 2]
    assert _kept("first", rank=np.array([0, 9, 8, 1, 7, 2, 3, 6, 5, 4])) == [8, 3]
    centroid = np.array([0.5, 0.8, 0.7, 0.6, 0.95, 0.5, 0.5, 0.3, 0.9, 0.5])
    assert _kept("semdedup-hard", centroid_similarity=centroid) == [7, 3]  # farthest from the centroid
    assert _kept("semdedup-easy", centroid_similarity=centroid) == [4, 2]  # closest to it
    with pytest.raises(ValueError, match="needs"):
        keep_score("semdedup-hard", rank=np.arange(10))
    with pytest.raises(ConfigError, match="keep policy"):
        keep_score("largest", rank=np.arange(10))


def test_keep_mask_removed_counts_and_similarity_to_kept() -> None:
    groups = build_groups(10, LINKS)
    kept = choose_kept(groups, keep_score("first", rank=np.arange(10)), np.arange(10))
    keep = kept_mask(groups, kept)
    assert np.flatnonzero(~keep).tolist() == [3, 4, 7, 8]
    counts = method_counts(groups, ~keep)
    assert counts == {
        "exact": {"rows": 2, "removed": 1},
        "perceptual": {"rows": 2, "removed": 2},
        "semantic": {"rows": 4, "removed": 3},
    }
    vectors = np.eye(10, dtype=np.float32)
    vectors[4, [1, 4]] = 0.8, 0.6  # cosine 0.8 to row 1, its group's kept row
    asked = []

    def vectors_of(rows: np.ndarray) -> np.ndarray:
        asked.append(rows.tolist())
        return vectors[rows]

    similarity = similarity_to_kept(groups, kept, vectors_of, chunk_rows=4)
    assert similarity.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.8, 0.0, 0.0])  # members 1, 2, 3, 4, 7, 8
    assert all(rows == sorted(set(rows)) for rows in asked) and len(asked) == 2


def test_empty_and_linkless_sets() -> None:
    groups = build_groups(0, [])
    assert groups.count == 0 and len(groups.members) == 0
    groups = build_groups(3, [Links("exact", [], [])])
    assert groups.count == 0 and kept_mask(groups, choose_kept(groups, np.zeros(3), np.arange(3))).all()
    with pytest.raises(ValueError, match="unknown method"):
        build_groups(3, [Links("fuzzy", [0], [1])])


def test_forest_and_labels_keep_components() -> None:
    left, right = forest(np.array([5, 3, 9, 3]), np.array([3, 9, 5, 1]))
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == [(1, 3), (1, 5), (1, 9)]
    links = links_from_labels("exact", np.array([2, 1, 2, 2, 0]), np.array([10, 11, 12, 13, 14]))
    assert sorted(zip(links.left.tolist(), links.right.tolist(), strict=True)) == [(10, 12), (10, 13)]
    assert links.pairs == 3


def test_split_chains_removes_a_row_only_for_its_own_similarity_to_the_kept_row() -> None:
    """A ~ B and B ~ C (cosine 0.96 > 0.95) but A and C far apart (0.84): one component, two groups."""
    angle = np.arccos(0.96)
    vectors = np.zeros((5, 2), dtype=np.float32)
    for row, turns in ((0, 0), (1, 1), (2, 2)):  # A, B, C along an arc, 0.96 between neighbours
        vectors[row] = np.cos(turns * angle), np.sin(turns * angle)
    vectors[3], vectors[4] = (0, -1), (-1, 0)  # unrelated
    links = [Links("semantic", [0, 1], [1, 2])]
    rank = np.arange(5)
    components = build_groups(5, links, rank)
    assert components.count == 1 and components.members.tolist() == [0, 1, 2]
    near = NearTests(vectors_of=lambda rows: vectors[rows], cosine_above=0.95)

    score = keep_score("first", rank=rank)  # A kept: B is near A and goes; C is near only B, so C stays
    groups = split_chains(components, score, rank, near)
    assert groups.group.tolist() == [0, 0, -1, -1, -1]
    kept = choose_kept(groups, score, rank)
    assert kept.tolist() == [0] and np.flatnonzero(~kept_mask(groups, kept)).tolist() == [1]
    assert float(vectors[0] @ vectors[2]) < 0.95  # what the old transitive union would have removed

    score = np.array([0.0, 1.0, 0.0, 0.0, 0.0])  # B kept: both neighbours are near it
    groups = split_chains(components, score, rank, near)
    assert groups.group.tolist() == [0, 0, 0, -1, -1]
    assert method_names(int(groups.methods[0])) == ["semantic"]
    assert choose_kept(groups, score, rank).tolist() == [1]


def test_split_chains_by_hash_distance_to_the_kept_row() -> None:
    """pHash chain 0 ~ 1 ~ 2, 4 bits a step, threshold 6: 2 is 8 bits from 0, so it is not 0's duplicate."""
    phash = np.array([0, 0b1111, 0b11111111], dtype=np.uint64)
    sha256 = np.array([0, 1, 2])
    components = build_groups(3, [Links("perceptual", [0, 1], [1, 2])])
    near = NearTests(sha256=sha256, phash=phash, phash_threshold=6)
    rank = np.arange(3)
    groups = split_chains(components, keep_score("first", rank=rank), rank, near)
    assert groups.group.tolist() == [0, 0, -1]


def test_split_chains_fetches_vectors_a_chunk_of_components_at_a_time() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[1::2] = vectors[0::2]  # rows 2i and 2i+1 identical: 20 components of two
    links = [Links("semantic", np.arange(0, 40, 2), np.arange(1, 40, 2))]
    rank = np.arange(40)
    components, score = build_groups(40, links, rank), keep_score("first", rank=rank)
    asked: list[list[int]] = []

    def vectors_of(rows: np.ndarray) -> np.ndarray:
        asked.append(rows.tolist())
        return vectors[rows]

    near = NearTests(vectors_of=vectors_of, cosine_above=0.95)
    chunked = split_chains(components, score, rank, near, chunk_rows=6)
    assert len(asked) == 7 and all(rows == sorted(rows) and len(rows) <= 6 for rows in asked)
    np.testing.assert_array_equal(chunked.group, split_chains(components, score, rank, near).group)
    assert chunked.count == 20
