"""choose.py: the index family follows vector count, dim and the memory budget; memory strings parse."""

from __future__ import annotations

import pytest

from mmembed.config import ConfigError
from mmembed.index.choose import (
    MIN_POINTS_PER_LIST,
    choose_index,
    choose_nlist,
    estimate_memory,
    ivfpq_key,
    parse_memory,
)

G = 2**30


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4G", 4 * G), ("512M", 512 * 2**20), ("1.5GB", int(1.5 * G)), ("2GiB", 2 * G), ("64k", 65536), ("100", 100)],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "-1G", "0", "4 parsecs", 0, -5])
def test_parse_memory_rejects_nonsense(bad: str | int) -> None:
    with pytest.raises(ConfigError):
        parse_memory(bad)


def test_small_set_is_exact_flat() -> None:
    choice = choose_index(50_000, 512, 4 * G)
    assert (choice.key, choice.family) == ("Flat", "flat")
    assert choice.memory_bytes == 50_000 * 512 * 4


def test_medium_set_is_hnsw() -> None:
    choice = choose_index(1_000_000, 512, 8 * G)
    assert (choice.key, choice.family) == ("HNSW32", "hnsw")


def test_small_set_over_budget_falls_through_to_ivfpq() -> None:
    budget = parse_memory("100M")  # flat would need 200M, HNSW more
    choice = choose_index(100_000, 512, budget)
    assert choice.family == "ivfpq"
    assert choice.memory_bytes <= budget


def test_large_set_with_room_reranks_with_float_vectors() -> None:
    choice = choose_index(10_000_000, 512, 64 * G)
    assert choice.key == "IVF8192_HNSW32,PQ64x8np,RFlat"
    assert choice.memory_bytes <= 64 * G


def test_float_rerank_over_budget_falls_back_to_sq8_rerank() -> None:
    choice = choose_index(1_000_000, 512, parse_memory("1G"))  # RFlat needs ~2G; SQ8 vectors ~0.5G
    assert choice.key == "IVF2048_HNSW32,PQ64x8np,Refine(SQ8)" and choice.memory_bytes <= parse_memory("1G")
    assert estimate_memory(choice.key, 1_000_000, 512) == choice.memory_bytes


def test_large_set_on_tight_budget_uses_opq_codes_only() -> None:
    choice = choose_index(10_000_000, 512, 4 * G)
    assert choice.key == "OPQ64_512,IVF8192_HNSW32,PQ64x8np"
    assert choice.memory_bytes <= 4 * G


def test_smaller_budget_gives_smaller_codes() -> None:
    codes = [choose_index(10_000_000, 512, parse_memory(b)).key for b in ("4G", "700M", "400M")]
    assert codes == [
        "OPQ64_512,IVF8192_HNSW32,PQ64x8np",
        "OPQ48_480,IVF8192_HNSW32,PQ48x8np",
        "OPQ24_504,IVF8192_HNSW32,PQ24x8np",
    ]


def test_budget_too_small_says_how_to_fix() -> None:
    with pytest.raises(ConfigError, match="raise max_index_memory"):
        choose_index(10_000_000, 512, parse_memory("50M"))
    with pytest.raises(ConfigError, match="raise max_index_memory"):
        choose_index(500, 512, 1000)


def test_forced_family() -> None:
    assert choose_index(5_000_000, 64, 64 * G, family="flat").key == "Flat"
    assert choose_index(100, 64, 64 * G, family="hnsw").key == "HNSW32"
    assert choose_index(10_000, 64, 64 * G, family="ivfpq").key == "IVF256_HNSW32,PQ32x8np,RFlat"
    with pytest.raises(ConfigError, match="over the budget"):
        choose_index(1_000_000, 512, G, family="flat")
    with pytest.raises(ConfigError, match="training vectors"):
        choose_index(100, 64, G, family="ivfpq")
    with pytest.raises(ConfigError, match="not one of"):
        choose_index(100, 64, G, family="lsh")


def test_nlist_is_a_power_of_two_with_enough_training_points() -> None:
    assert choose_nlist(1_000_000, 500_000) == 2048  # 4 * sqrt(1e6) = 4000
    nlist = choose_nlist(10_000_000, 20_000)
    assert nlist * MIN_POINTS_PER_LIST <= 20_000 and nlist & (nlist - 1) == 0


def test_opq_reduces_dim_to_a_multiple_of_m() -> None:
    assert ivfpq_key(64, 48, 512, refine="RFlat") == ("OPQ48_480,IVF64_HNSW32,PQ48x8np,RFlat", 480)
    assert ivfpq_key(64, 32, 512, refine="RFlat") == ("IVF64_HNSW32,PQ32x8np,RFlat", None)


def test_estimate_memory_reads_back_the_chosen_keys() -> None:
    for count, dim, budget in [
        (50_000, 512, 4 * G),
        (1_000_000, 512, 8 * G),
        (10_000_000, 512, 64 * G),
        (10_000_000, 512, 4 * G),
    ]:
        choice = choose_index(count, dim, budget)
        assert estimate_memory(choice.key, count, dim) == choice.memory_bytes
    assert estimate_memory("IVF16,Flat", 1000, 8) > 1000 * 8 * 4
    with pytest.raises(ValueError, match="no memory model"):
        estimate_memory("LSH", 1000, 8)
