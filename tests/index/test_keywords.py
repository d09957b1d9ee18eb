"""Keyword search over captions (SQLite FTS5, BM25) and hybrid ranking: built beside the vector indexes, grown
by ``append`` as a new generation, fetched with a remote index; words, phrases and prefixes match as a reader
expects, bad syntax is named, ``where`` holds, and no model is loaded for it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.index import IndexBuildConfig, append, build_index, load_index
from mmembed.index.keywords import fts_query
from mmembed.index.store import KEYWORDS_FILE
from mmembed.search import HYBRID_DEPTH, RRF_K, Searcher, rrf
from tests.index.filtered import write_filter_dir
from tests.index.synth import blobs
from tests.objectstore import create_bucket

N, DIM, PER_SHARD = 2000, 16, 500


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, dict]:
    """The samples' embed dir (4 files), a flat index over all of them, image vectors and fields."""
    root = tmp_path_factory.mktemp("keywords")
    image, text = blobs(N, DIM, seed=91), blobs(N, DIM, seed=92)
    _, fields = write_filter_dir(root / "emb", image, text, PER_SHARD, seed=93)
    build_index(IndexBuildConfig(str(root / "emb"), str(root / "index"), family="flat"))
    return root / "emb", root / "index", image, fields


def words(caption: str | None) -> list[str]:
    return (caption or "").split()


def test_the_build_indexes_every_caption(data) -> None:
    _, index_dir, _, fields = data
    loaded = load_index(index_dir)
    with_text = sum(c is not None for c in fields["caption"])
    assert loaded.infos["keywords_file"] == KEYWORDS_FILE and loaded.infos["keyword_rows"] == with_text
    assert loaded.keywords.count == with_text < N  # image-only samples have nothing to find


def test_plain_words_must_all_appear_ranked_by_bm25(data) -> None:
    _, index_dir, _, fields = data
    searcher = Searcher.from_dir(index_dir)
    hits = searcher.search_text("horse bicycle", k=1000, mode="keyword")[0]
    expected = {i for i, c in enumerate(fields["caption"]) if {"horse", "bicycle"} <= set(words(c))}
    assert {h.row_id for h in hits} == expected and expected
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.caption == fields["caption"][h.row_id] for h in hits)  # row ids line up with the ids table
    either = searcher.search_text("horse OR bicycle", k=1000, mode="keyword")[0]
    assert {h.row_id for h in either} == {
        i for i, c in enumerate(fields["caption"]) if {"horse", "bicycle"} & set(words(c))
    }
    top = either[: len(expected)]  # BM25: captions with both words outrank those with one
    assert len({h.row_id for h in top} & expected) >= 0.8 * len(expected)
    assert searcher._encoder is None  # keyword search loads no model


def test_phrases_prefixes_and_operators(data) -> None:
    _, index_dir, _, fields = data
    searcher = Searcher.from_dir(index_dir)
    phrase = searcher.search_text('"red car"', k=1000, mode="keyword")[0]
    expected = {i for i, c in enumerate(fields["caption"]) if c and re.search(r"\bred cars?\b", c)}  # stems match
    assert {h.row_id for h in phrase} == expected and expected
    prefix = searcher.search_text("bicyc*", k=1000, mode="keyword")[0]
    assert {h.row_id for h in prefix} == {i for i, c in enumerate(fields["caption"]) if "bicycle" in words(c)}
    both = searcher.search_text("(horse OR cat) NOT dog", k=1000, mode="keyword")[0]
    assert both and all({"horse", "cat"} & set(words(h.caption)) and "dog" not in words(h.caption) for h in both)


def test_punctuation_in_plain_words_is_harmless_and_bad_syntax_is_named(data) -> None:
    searcher = Searcher.from_dir(data[1])
    assert searcher.search_text("horse, bicycle!?", k=5, mode="keyword")[0]
    assert fts_query("it's") == '"it\'s"'
    with pytest.raises(ConfigError, match=r"keyword query 'horse AND' is not valid .*\"an exact phrase\""):
        searcher.search_text("horse AND", k=5, mode="keyword")
    with pytest.raises(ConfigError, match="keyword query is empty"):
        searcher.search_text("   ", k=5, mode="keyword")


def test_keyword_search_honours_where(data) -> None:
    _, index_dir, _, fields = data
    searcher = Searcher.from_dir(index_dir)
    expr = "metadata->>'src' = 'coco' AND width > 1000"
    hits = searcher.search_text("dog", k=20, mode="keyword", where=expr)[0]
    expected = [
        i
        for i, c in enumerate(fields["caption"])
        if "dog" in words(c) and json.loads(fields["metadata"][i])["src"] == "coco" and fields["width"][i] > 1000
    ]
    assert len(hits) == min(20, len(expected)) and {h.row_id for h in hits} <= set(expected)
    assert all(h.metadata["src"] == "coco" and h.width > 1000 for h in hits)


def test_reciprocal_rank_fusion() -> None:
    scores, ids = rrf([np.array([5, 7, 9]), np.array([9, 5, 11])], k=3)
    assert ids.tolist() == [5, 9, 7]  # 5: ranks 1 and 2; 9: ranks 3 and 1; 7: rank 2 only
    assert scores[0] == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 2))
    assert rrf([np.array([1, 2]), np.array([2, 1])], k=5)[1].tolist() == [1, 2]  # a tie keeps the first order


def test_hybrid_fuses_both_rankings_under_where(data) -> None:
    """Hybrid = reciprocal rank fusion of the exact filtered vector ranking and the filtered BM25 ranking (each
    cut at HYBRID_DEPTH), recomputed here from both; every hit inside ``where``."""
    _, index_dir, image, fields = data
    searcher = Searcher.from_dir(index_dir)
    expr = "width > 500"
    vector = blobs(1, DIM, seed=96)
    hits = searcher.search_encoded(["boat"], vector, k=10, where=expr, mode="hybrid")[0]
    inside = np.flatnonzero(fields["width"] > 500)
    by_vector = inside[np.argsort(-(vector @ image[inside].T)[0], kind="stable")][:HYBRID_DEPTH]
    by_keyword = [h.row_id for h in searcher.search_text("boat", k=HYBRID_DEPTH, mode="keyword", where=expr)[0]]
    fused: dict[int, float] = {}
    for ranking in (by_vector.tolist(), by_keyword):
        for rank, row in enumerate(ranking, start=1):
            fused[row] = fused.get(row, 0.0) + 1 / (RRF_K + rank)
    expected = sorted(fused, key=lambda row: -fused[row])[:10]
    assert [h.row_id for h in hits] == expected
    assert [h.score for h in hits] == pytest.approx([fused[row] for row in expected])
    assert all(h.width > 500 for h in hits) and any("boat" in words(h.caption) for h in hits)
    assert any(row in hits_ids for row in by_vector[:3] for hits_ids in [[h.row_id for h in hits]])


def test_append_grows_the_keyword_index_as_a_new_generation(data, tmp_path: Path) -> None:
    emb, _, _, fields = data
    partial = tmp_path / "emb"
    shutil.copytree(emb / "embeddings", partial / "embeddings")
    last = sorted((partial / "embeddings").glob("*.parquet"))[-1]
    held = last.rename(tmp_path / last.name)
    build_index(IndexBuildConfig(str(partial), str(tmp_path / "index"), family="flat"))
    infos = append(tmp_path / "index", [str(held)])
    assert infos["keywords_file"] == "keywords.g00001.sqlite" and not (tmp_path / "index" / KEYWORDS_FILE).exists()
    hits = Searcher.from_dir(tmp_path / "index").search_text("river", k=1000, mode="keyword")[0]
    expected = {i for i, c in enumerate(fields["caption"]) if "river" in words(c)}
    assert {h.row_id for h in hits} == expected and max(expected) >= N - PER_SHARD  # appended rows found


def test_an_index_without_keywords_says_so_and_an_append_adds_them(data, tmp_path: Path) -> None:
    emb, index_dir, _, fields = data
    old = tmp_path / "index"
    shutil.copytree(index_dir, old)
    infos = json.loads((old / "infos.json").read_text())
    del infos["keywords_file"], infos["keyword_rows"]
    (old / "infos.json").write_text(json.dumps(infos))
    (old / KEYWORDS_FILE).unlink()
    with pytest.raises(ConfigError, match=r"no keyword index .* --overwrite"):
        Searcher.from_dir(old).search_text("dog", mode="keyword")
    image, text = blobs(20, DIM, seed=94), blobs(20, DIM, seed=95)
    more, more_fields = write_filter_dir(tmp_path / "more", image, text, 20, seed=7, first_shard=7)
    infos = append(old, [str(p) for p in more])
    assert infos["keyword_rows"] == sum(c is not None for c in fields["caption"] + more_fields["caption"])
    hits = Searcher.from_dir(old).search_text("dog", k=2000, mode="keyword")[0]
    assert {h.row_id for h in hits} == {
        i for i, c in enumerate(fields["caption"] + more_fields["caption"]) if "dog" in words(c)
    }


def test_a_remote_index_brings_its_keywords(data, s3_endpoint: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path / "cache"))
    _, index_dir, _, _ = data
    url = f"{create_bucket()}/index"
    for path in index_dir.iterdir():
        storage.upload(str(path), storage.join(url, path.name))
    local = Searcher.from_dir(index_dir).search_text("red car", k=20, mode="keyword", where="width > 300")[0]
    remote = Searcher.from_dir(url).search_text("red car", k=20, mode="keyword", where="width > 300")[0]
    assert [h.to_dict() for h in remote] == [h.to_dict() for h in local] and local
