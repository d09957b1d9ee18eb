"""exact.py: rows with the same sha256 are linked; links are stars; Arrow columns are read without copies."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmembed.dedup.exact import bucket_links, exact_links, hash_codes

HASHES = ["aa", "bb", "aa", "cc", "bb", "aa", "dd"]


def test_links_are_stars_to_the_smallest_row() -> None:
    links = exact_links(pa.chunked_array([pa.array(HASHES[:3]), pa.array(HASHES[3:])]))
    assert links.method == "exact"
    assert sorted(zip(links.left.tolist(), links.right.tolist(), strict=True)) == [(0, 2), (0, 5), (1, 4)]
    assert links.pairs == 3 + 1  # 3 pairs among three copies, 1 among two
    rows = np.array([70, 60, 50, 40, 30, 20, 10])  # the rows' ids in the whole set
    links = exact_links(HASHES, rows)
    assert sorted(zip(links.left.tolist(), links.right.tolist(), strict=True)) == [(20, 50), (20, 70), (30, 60)]


def test_codes_equal_exactly_when_hashes_are_equal() -> None:
    codes = hash_codes(pa.array(HASHES))
    for i in range(len(HASHES)):
        for j in range(len(HASHES)):
            assert (codes[i] == codes[j]) == (HASHES[i] == HASHES[j])
    assert hash_codes([]).shape == (0,)
    assert len(exact_links([])) == 0


def test_bucket_links_for_one_hash_bucket() -> None:
    """A Beam job groups rows by sha256 and calls this per bucket."""
    links = bucket_links(np.array([9, 3, 7]))
    assert links.left.tolist() == [3, 3] and links.right.tolist() == [7, 9] and links.pairs == 3
    assert len(bucket_links(np.array([4]))) == 0
