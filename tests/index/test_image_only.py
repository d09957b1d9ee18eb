"""Indexes over image-only samples: row ids stay positional across image.index, text.index and ids.parquet; the
text index never returns a row without a text vector (any family, append, sharded build); without any text
vectors there is no text index and text-index searches say why; eval-index reports what it can measure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmembed.cli import main
from mmembed.config import ConfigError
from mmembed.index import IndexBuildConfig, append, build_index, load_index
from mmembed.index.evaluate import evaluate_directions
from mmembed.index.reader import _to_numpy, iter_ids, iter_vectors, open_embeddings, vector_rows
from mmembed.index.selection import RowFilter, search
from mmembed.index.sharded import ShardedBuildConfig, build_sharded
from mmembed.index.store import IDS_FILE, INDEX_FILES
from tests.helpers import evaluate_recall
from tests.index.synth import blobs, exact_top_k, recall, write_embed_dir

N, DIM, PER_SHARD = 3000, 32, 1000
FAMILIES = ("flat", "hnsw", "ivfpq")


def text_mask(n: int, seed: int) -> np.ndarray:
    """About 60% of rows captioned; the second file (rows 1000-1999) image-only throughout."""
    has_text = np.random.default_rng(seed).random(n) < 0.6
    has_text[PER_SHARD : 2 * PER_SHARD] = False
    return has_text


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("mixed")
    image, text, has_text = blobs(N, DIM, seed=31), blobs(N, DIM, seed=32), text_mask(N, seed=33)
    write_embed_dir(root, image, text, per_shard=PER_SHARD, has_text=has_text)
    return root, image, text, has_text


@pytest.fixture(scope="module")
def built(data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """One index dir per family over the mixed embeddings, plus a sharded IVF build."""
    root = data[0]
    out = {}
    for family in FAMILIES:
        index_dir = tmp_path_factory.mktemp(family) / "index"
        config = IndexBuildConfig(str(root), str(index_dir), family=family, recall_target=0.97, tune_queries=300)
        out[family] = (index_dir, build_index(config))
    sharded_dir = tmp_path_factory.mktemp("sharded") / "index"
    key = out["ivfpq"][1]["index_key"]
    config = IndexBuildConfig(str(root), str(sharded_dir), index_key=key, recall_target=0.97, tune_queries=300)
    out["sharded"] = (sharded_dir, build_sharded(ShardedBuildConfig(config, files_per_part=2)))
    return out


@pytest.fixture(scope="module")
def no_text(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Embeddings made with --captions none (no row has a text vector), indexed."""
    root = tmp_path_factory.mktemp("no-text")
    image = blobs(600, DIM, seed=34)
    write_embed_dir(root, image, blobs(600, DIM, seed=35), per_shard=300, has_text=np.zeros(600, dtype=bool))
    build_index(IndexBuildConfig(str(root), str(root / "index")))
    return root, image


def test_readers_keep_every_row_in_place_and_mark_the_ones_with_text(data) -> None:
    root, _, text, has_text = data
    files = open_embeddings(str(root))
    batches = list(iter_vectors(files, "text_embedding", batch_size=300))
    vectors = np.concatenate([b.vectors for b in batches])
    present = np.concatenate([np.ones(len(b.vectors), bool) if b.present is None else b.present for b in batches])
    np.testing.assert_array_equal(present, has_text)
    np.testing.assert_array_equal(vectors[has_text], text[has_text])
    assert not vectors[~has_text].any()  # the placeholder is the zero vector
    np.testing.assert_array_equal(vector_rows(files, "text_embedding"), np.flatnonzero(has_text))
    np.testing.assert_array_equal(vector_rows(files, "image_embedding"), np.arange(N))
    ids = pa.concat_tables(iter_ids(files, batch_size=700))
    assert ids.column("has_text").to_pylist() == has_text.tolist()
    captions = ids.column("caption").to_pylist()
    assert all((c is None) == (not t) for c, t in zip(captions, has_text, strict=True))


def test_to_numpy_keeps_null_slots_in_place() -> None:
    """A null list slot reads as zeros in its own row; ``flatten()`` would drop it and shift later rows."""
    values = pa.array(np.arange(12, dtype=np.float32))
    column = pa.FixedSizeListArray.from_arrays(values, 3, mask=pa.array([False, True, False, False]))
    np.testing.assert_array_equal(_to_numpy(column, 3), [[0, 1, 2], [0, 0, 0], [6, 7, 8], [9, 10, 11]])
    np.testing.assert_array_equal(_to_numpy(column.slice(1, 2), 3), [[0, 0, 0], [6, 7, 8]])  # an offset window
    assert len(column.flatten()) == 9  # what the old reader used: one row short


@pytest.mark.parametrize("family", [*FAMILIES, "sharded"])
def test_text_index_records_its_rows_and_aligns_ids(family: str, data, built) -> None:
    _, _, text, has_text = data
    index_dir, infos = built[family]
    assert infos["text_rows"] == int(has_text.sum()) and "text_index_skipped" not in infos
    assert infos["indexes"]["text"]["searchable_rows"] == int(has_text.sum())
    assert infos["indexes"]["image"]["searchable_rows"] == N
    assert pq.read_table(index_dir / IDS_FILE).column("has_text").to_pylist() == has_text.tolist()
    loaded = load_index(index_dir)
    assert loaded.text.count == loaded.image.count == N  # one slot per row: shared, positional row ids
    rows = np.random.default_rng(36).choice(np.flatnonzero(has_text), 200, replace=False)
    _, found = loaded.search(text[rows], 10, "text")
    np.testing.assert_array_equal(found[:, 0], rows)  # a caption's own vector finds its row first
    keys = loaded.lookup(found[:3, 0]).column("key").to_pylist()
    assert keys == [f"shard-{r // PER_SHARD:05d}-{r % PER_SHARD:06d}" for r in rows[:3]]
    truth = np.flatnonzero(has_text)[exact_top_k(text[has_text], text[rows], 10)]
    assert recall(found, truth) >= 0.9


@pytest.mark.parametrize("family", [*FAMILIES, "sharded"])
def test_text_index_never_returns_an_image_only_row(family: str, data, built) -> None:
    """Negated captions rank every zero placeholder (score 0) above the many captions they point away from."""
    _, _, text, has_text = data
    loaded = load_index(built[family][0])
    queries = -text[np.flatnonzero(has_text)[:50]]
    _, found = loaded.search(queries, 1000, "text")  # ~1,800 captions, about half of them scoring < 0
    assert (found >= 0).sum() >= 50 * 100 and has_text[found[found >= 0]].all()
    if family == "flat":  # exact: every query gets its 1000, and without the filter zero rows would be among them
        assert (found >= 0).all()
        _, unfiltered = loaded.text.index.search(queries, 1000)
        assert (~has_text[unfiltered]).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_image_index_finds_image_only_rows_and_text_queries(family: str, data, built) -> None:
    _, image, text, has_text = data
    loaded = load_index(built[family][0])
    image_only = np.flatnonzero(~has_text)[:100]
    _, found = loaded.search(image[image_only], 1, "image")
    np.testing.assert_array_equal(found[:, 0], image_only)
    queries = text[np.flatnonzero(has_text)[:100]]  # text -> image: caption vectors against every image
    _, found = loaded.search(queries, 10, "image")
    assert (~has_text[found]).mean() > 0.2  # image-only samples are found by text like any other image
    if family == "flat":  # exact; the approximate ones were tuned on image queries, not on these
        assert recall(found, exact_top_k(image, queries, 10)) == 1.0


def test_a_filter_allowing_every_row_repeats_the_tuned_search(data, built) -> None:
    """The selector's search parameters carry each layer's tuned settings (nprobe, efSearch, k_factor)."""
    _, image, _, _ = data
    for family in (*FAMILIES, "sharded"):
        index = load_index(built[family][0]).image.index
        plain = index.search(image[:100], 20)
        filtered = search(index, image[:100], 20, RowFilter(np.ones(N, dtype=bool)))
        np.testing.assert_array_equal(filtered[1], plain[1], err_msg=family)


def test_an_index_without_selector_support_is_over_fetched(data) -> None:
    _, _, text, has_text = data
    vectors = np.where(has_text[:, None], text, 0).astype(np.float32)
    pq_index = faiss.index_factory(DIM, "PQ8", faiss.METRIC_INNER_PRODUCT)  # IndexPQ refuses search parameters
    pq_index.train(text[has_text])
    pq_index.add(vectors)
    allowed = RowFilter(has_text)
    queries = -text[has_text][:20]
    with pytest.raises(RuntimeError):
        pq_index.search(queries, 5, params=faiss.SearchParameters(sel=allowed.selector))
    scores, found = search(pq_index, queries, 150, allowed)
    assert found.shape == (20, 150) and (found >= 0).all() and has_text[found].all()
    full_scores, full = pq_index.search(queries, N)
    for row in range(20):  # the best 150 allowed rows of the complete ranking, in order
        np.testing.assert_allclose(scores[row], full_scores[row][has_text[full[row]]][:150], rtol=1e-6)


def test_append_keeps_image_only_rows_out_of_text_results(data, tmp_path: Path) -> None:
    root, image, text, has_text = data
    build_index(IndexBuildConfig(str(root), str(tmp_path / "index"), family="flat"))
    new_image, new_text, new_has = blobs(500, DIM, seed=37), blobs(500, DIM, seed=38), text_mask(500, seed=39)
    files = write_embed_dir(tmp_path / "new", new_image, new_text, per_shard=500, first_shard=9, has_text=new_has)
    infos = append(tmp_path / "index", [str(p) for p in files])
    assert infos["text_rows"] == int(has_text.sum() + new_has.sum())
    assert infos["appends"][0]["text_rows"] == int(new_has.sum())
    loaded = load_index(tmp_path / "index")
    all_text, all_has = np.concatenate([text, new_text]), np.concatenate([has_text, new_has])
    rows = N + np.flatnonzero(new_has)[:50]
    _, found = loaded.search(all_text[rows], 5, "text")
    np.testing.assert_array_equal(found[:, 0], rows)
    _, found = loaded.search(-all_text[rows], 1200, "text")
    assert (found >= 0).all() and all_has[found].all()
    assert pq.read_table(loaded.ids_path).column("has_text").to_pylist() == all_has.tolist()


def test_without_text_vectors_there_is_no_text_index(no_text) -> None:
    root, image = no_text
    infos = json.loads((root / "index" / "infos.json").read_text())
    assert infos["text_rows"] == 0 and list(infos["indexes"]) == ["image"]
    assert "--captions none" in infos["text_index_skipped"]
    assert not (root / "index" / INDEX_FILES["text"]).exists()
    loaded = load_index(root / "index")
    _, found = loaded.search(image[:20], 1, "image")
    np.testing.assert_array_equal(found[:, 0], np.arange(20))
    with pytest.raises(ConfigError, match="no text index: the embeddings hold no text vectors .*--captions none"):
        loaded.search(image[:2], 5, "text")
    with pytest.raises(ConfigError, match="re-embed with captions"):
        _ = loaded.text


def test_append_to_an_index_without_text(no_text, tmp_path: Path) -> None:
    root, _ = no_text
    index_dir = tmp_path / "index"
    shutil.copytree(root / "index", index_dir)
    image, text = blobs(50, DIM, seed=40), blobs(50, DIM, seed=41)
    image_only = write_embed_dir(tmp_path / "more", image, text, 50, first_shard=5, has_text=np.zeros(50, bool))
    assert append(index_dir, [str(p) for p in image_only])["count"] == 650
    captioned = write_embed_dir(tmp_path / "captioned", image, text, 50, first_shard=6)
    with pytest.raises(ConfigError, match="hold 50 text vectors but the index has no text index.*--overwrite"):
        append(index_dir, [str(p) for p in captioned])
    assert load_index(index_dir).image.count == 650  # the refused append changed nothing


def test_too_few_text_vectors_to_train_leave_out_the_text_index(tmp_path: Path) -> None:
    has_text = np.zeros(N, dtype=bool)
    has_text[:40] = True  # an IVF-PQ needs >= 256 training vectors
    write_embed_dir(tmp_path, blobs(N, DIM, seed=44), blobs(N, DIM, seed=45), PER_SHARD, has_text=has_text)
    infos = build_index(IndexBuildConfig(str(tmp_path), str(tmp_path / "index"), family="ivfpq", tune_queries=100))
    assert list(infos["indexes"]) == ["image"] and infos["text_rows"] == 40
    assert "only 40 of 3,000 rows have text vectors" in infos["text_index_skipped"]
    with pytest.raises(ConfigError, match="--family flat or hnsw"):
        load_index(tmp_path / "index").search(np.zeros((1, DIM), np.float32), 1, "text")
    flat = build_index(IndexBuildConfig(str(tmp_path), str(tmp_path / "flat"), family="flat"))
    assert flat["indexes"]["text"]["searchable_rows"] == 40


def test_eval_measures_text_queries_from_captioned_rows(data, built) -> None:
    root, _, _, has_text = data
    files = open_embeddings(str(root))
    loaded = load_index(built["flat"][0])
    result = evaluate_directions(loaded.image.index, files, n_queries=100, seed=1)
    assert result["text_to_image"]["recall@10"] == result["image_to_image"]["recall@10"] == 1.0  # Flat: exact
    text_recall = evaluate_recall(loaded.text.index, files, "text_embedding", n_queries=100, seed=1)
    assert text_recall["recall@100"] == 1.0  # exact over captioned rows only, both truth and search
    few = np.flatnonzero(has_text).size
    assert evaluate_recall(loaded.text.index, files, "text_embedding", n_queries=few + 50)["queries"] == few


def test_eval_index_reports_text_to_image_as_not_available(no_text, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = no_text
    capsys.readouterr()
    assert main(["eval-index", "--index", str(root / "index"), "--queries", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text_to_image"] == {"available": False, "reason": result["text_to_image"]["reason"]}
    assert "--captions none" in result["text_to_image"]["reason"]
    assert result["image_to_image"]["recall@10"] == 1.0
    assert main(["eval-index", "--index", str(root / "index"), "--queries", "20"]) == 0
    table = capsys.readouterr().out
    assert "image_to_image" in table and "text_to_image: not available (the embeddings hold no text" in table


@pytest.mark.parametrize("captioned", [0, 40])
def test_sharded_build_leaves_out_a_text_index_it_cannot_train(captioned: int, tmp_path: Path) -> None:
    """No text vectors, or too few for IVF-PQ's 256 training vectors: the sharded build says so, like build_index."""
    has_text = np.zeros(N, dtype=bool)
    has_text[:captioned] = True
    image = blobs(N, DIM, seed=46)
    write_embed_dir(tmp_path / "emb", image, blobs(N, DIM, seed=47), PER_SHARD, has_text=has_text)
    config = IndexBuildConfig(str(tmp_path / "emb"), str(tmp_path / "index"), tune_queries=100)
    infos = build_sharded(ShardedBuildConfig(config, files_per_part=2))
    assert list(infos["indexes"]) == ["image"] and infos["text_rows"] == captioned
    assert ("--captions none" if captioned == 0 else "too few to train") in infos["text_index_skipped"]
    assert not (tmp_path / "index" / INDEX_FILES["text"]).exists()
    loaded = load_index(tmp_path / "index")
    np.testing.assert_array_equal(loaded.search(image[:10], 1)[1][:, 0], np.arange(10))
    with pytest.raises(ConfigError, match="no text index"):
        loaded.search(image[:1], 1, "text")


def test_an_index_built_before_image_only_samples_still_loads_and_appends(tmp_path: Path) -> None:
    """ids.parquet without ``has_text`` and infos.json without ``text_rows``: every row had a text vector."""
    image, text = blobs(400, DIM, seed=48), blobs(400, DIM, seed=49)
    write_embed_dir(tmp_path / "emb", image[:300], text[:300], 300)
    build_index(IndexBuildConfig(str(tmp_path / "emb"), str(tmp_path / "index"), family="flat"))
    ids_path, infos_path = tmp_path / "index" / IDS_FILE, tmp_path / "index" / "infos.json"
    pq.write_table(pq.read_table(ids_path).drop_columns(["has_text"]), ids_path)
    old = json.loads(infos_path.read_text())
    del old["text_rows"]
    infos_path.write_text(json.dumps(old))
    np.testing.assert_array_equal(load_index(tmp_path / "index").search(text[:5], 1, "text")[1][:, 0], np.arange(5))
    has_text = np.arange(100) % 2 == 0
    new = write_embed_dir(tmp_path / "new", image[300:], text[300:], 100, first_shard=3, has_text=has_text)
    infos = append(tmp_path / "index", [str(p) for p in new])
    assert infos["text_rows"] == 300 + 50
    assert infos["ids_file"] != IDS_FILE and not ids_path.exists()  # the next generation replaced it
    new_ids = tmp_path / "index" / infos["ids_file"]
    assert pq.read_table(new_ids).column("has_text").to_pylist() == [True] * 300 + has_text.tolist()
    _, found = load_index(tmp_path / "index").search(-text[300:310], 360, "text")  # 350 rows have text
    np.testing.assert_array_equal(
        np.sort(found[:, :350]), np.tile(np.flatnonzero(np.r_[[True] * 300, has_text]), (10, 1))
    )
    assert (found[:, 350:] == -1).all()
