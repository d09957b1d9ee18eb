"""append: new files join a trained index without retraining; old row ids stay, new vectors are found."""

from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.config import ConfigError
from mmembed.index import IndexBuildConfig, append, build_index, load_index
from tests.index.synth import blobs, encoder_provenance, exact_top_k, recall, write_embed_dir, write_shard

DIM = 32


@pytest.fixture(scope="module")
def appended(tmp_path_factory: pytest.TempPathFactory):
    """An IVF-PQ index built from shards 0-1, then shard 2 appended from another embed output dir."""
    root = tmp_path_factory.mktemp("append")
    image, text = blobs(3000, DIM, seed=11), blobs(3000, DIM, seed=12)
    write_embed_dir(root / "old", image[:2000], text[:2000], per_shard=1000)
    new_files = write_embed_dir(root / "new", image[2000:], text[2000:], per_shard=1000, first_shard=2)
    index_dir = root / "index"
    before = build_index(IndexBuildConfig(str(root / "old"), str(index_dir), family="ivfpq", tune_queries=200))
    old_ids = pq.read_table(index_dir / "ids.parquet")
    old = load_index(index_dir)
    old_results = old.search(image[:100], 10)
    old_centroids = _centroids(old.image.index)
    after = append(index_dir, [str(p) for p in new_files])
    assert np.array_equal(_centroids(load_index(index_dir).image.index), old_centroids)  # not retrained
    return index_dir, image, text, new_files, before, after, old_ids, old_results


def _centroids(index: faiss.Index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_counts_and_infos_after_append(appended) -> None:
    index_dir, _, _, new_files, before, after, _, _ = appended
    assert before["count"] == 2000 and after["count"] == 3000
    assert after["index_key"] == before["index_key"]
    assert after["appends"][0]["first_row_id"] == 2000 and after["appends"][0]["rows"] == 1000
    assert [Path(s["path"]).name for s in after["sources"]["files"]][-1] == new_files[0].name
    loaded = load_index(index_dir)
    assert loaded.image.count == loaded.text.count == 3000
    assert loaded.image.params == before["indexes"]["image"]["search_params"]  # tuned params kept


def test_old_row_ids_are_stable(appended) -> None:
    index_dir, image, _, _, _, _, old_ids, old_results = appended
    ids = pq.read_table(load_index(index_dir).ids_path)
    assert ids.slice(0, 2000).equals(old_ids)
    assert ids.column("row_id").to_pylist() == list(range(3000))
    _, found = load_index(index_dir).search(image[:100], 1)
    np.testing.assert_array_equal(found[:, 0], old_results[1][:, 0])  # an old vector still finds itself


def test_new_vectors_are_found_with_their_new_ids(appended) -> None:
    index_dir, image, text, _, _, _, _, _ = appended
    loaded = load_index(index_dir)
    rows = np.arange(2000, 3000, 5)
    for modality, base in (("image", image), ("text", text)):
        _, found = loaded.search(base[rows], 10, modality)
        assert np.mean(found[:, 0] == rows) >= 0.98
        assert recall(found, exact_top_k(base, base[rows], 10)) >= 0.9
    assert loaded.lookup(rows[:3]).column("key").to_pylist() == [f"shard-00002-{r - 2000:06d}" for r in rows[:3]]


def test_appending_the_same_file_twice_is_refused(appended) -> None:
    index_dir, _, _, new_files, _, _, _, _ = appended
    with pytest.raises(ConfigError, match="already in"):
        append(index_dir, [str(new_files[0])])


def test_appending_another_models_vectors_is_refused(appended, tmp_path: Path) -> None:
    index_dir = appended[0]
    vectors = blobs(10, DIM, seed=13)
    other = write_shard(tmp_path / "x.parquet", "x", vectors, vectors, encoder_provenance(DIM, model="ViT-B-32"))
    with pytest.raises(ConfigError, match="provenance differs"):
        append(index_dir, [str(other)])
    assert load_index(index_dir).image.count == 3000


def test_each_append_writes_the_next_generation_and_removes_the_last(appended, tmp_path: Path) -> None:
    """infos.json names the current generation's files; the previous generation's are gone once it does."""
    source, image, _, _, _, after, _, _ = appended
    index_dir = tmp_path / "index"
    shutil.copytree(source, index_dir)
    assert after["generation"] == 1 and after["ids_file"] == "ids.g00001.parquet"
    assert [after["indexes"][m]["file"] for m in ("image", "text")] == ["image.g00001.index", "text.g00001.index"]
    more = write_embed_dir(tmp_path / "more", blobs(500, DIM, seed=14), blobs(500, DIM, seed=15), 500, first_shard=3)
    again = append(index_dir, [str(p) for p in more])
    assert again["generation"] == 2 and again["count"] == 3500
    assert sorted(p.name for p in index_dir.iterdir()) == [
        "ids.g00002.parquet",
        "image.g00002.index",
        "infos.json",
        "keywords.g00002.sqlite",
        "text.g00002.index",
    ]
    _, found = load_index(index_dir).search(image[:50], 1)
    np.testing.assert_array_equal(found[:, 0], np.arange(50))
