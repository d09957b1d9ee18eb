"""``--where``: rows chosen by DuckDB over the ids table match a Python reference, bad conditions are refused
naming what is wrong, nothing outside the table can be read, and vector search honours the condition exactly
(flat: the exact filtered top-k; IVF under a 1 % filter: a recall floor against it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.config import ConfigError
from mmembed.index import IndexBuildConfig, append, build_index, load_index
from mmembed.index.store import IDS_FILE, LEGACY_IDS_SCHEMA
from mmembed.index.where import rows_matching
from mmembed.search import Searcher
from tests.index.filtered import write_filter_dir
from tests.index.synth import blobs, recall

N, DIM, PER_SHARD = 3000, 16, 1000


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray, dict]:
    """A flat index over samples with varied fields: (index dir, image vectors, text vectors, fields)."""
    root = tmp_path_factory.mktemp("where")
    image, text = blobs(N, DIM, seed=81), blobs(N, DIM, seed=82)
    _, fields = write_filter_dir(root / "emb", image, text, PER_SHARD, seed=83)
    build_index(IndexBuildConfig(str(root / "emb"), str(root / "index"), family="flat"))
    return root / "index", image, text, fields


def reference(fields: dict, keep) -> np.ndarray:  # noqa: ANN001 - a predicate over one row's fields
    """The rows ``keep(row)`` holds for, computed in Python."""
    rows = [
        {
            "caption": fields["caption"][i],
            "meta": json.loads(fields["metadata"][i]),
            "width": int(fields["width"][i]),
            "height": int(fields["height"][i]),
        }
        for i in range(N)
    ]
    return np.array([bool(keep(row)) for row in rows])


@pytest.mark.parametrize(
    ("expr", "keep"),
    [
        ("width >= 1024", lambda r: r["width"] >= 1024),
        ("width > height AND height < 500", lambda r: r["width"] > r["height"] and r["height"] < 500),
        ("metadata->>'src' = 'coco'", lambda r: r["meta"]["src"] == "coco"),
        ("json_extract(metadata, '$.n')::INT BETWEEN 10 AND 12", lambda r: 10 <= r["meta"]["n"] <= 12),
        ("caption LIKE '%red car%'", lambda r: r["caption"] is not None and "red car" in r["caption"]),
        ("NOT has_text", lambda r: r["caption"] is None),
        ("similarity IS NULL", lambda r: r["caption"] is None),
    ],
)
def test_rows_match_a_python_reference(data, expr: str, keep) -> None:  # noqa: ANN001
    index_dir, _, _, fields = data
    expected = reference(fields, keep)
    assert 0 < expected.sum() < N  # the condition separates the rows
    np.testing.assert_array_equal(rows_matching(load_index(index_dir), expr), expected)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("colour = 'red'", "unknown column 'colour'; the columns are key, shard"),
        ('caption = "red car"', "text values take single quotes"),
        ("width >", "is not one SQL condition"),
        ("width > 3; DROP TABLE x", "more than one statement"),
        ("width > 3 LIMIT 1", "is not one SQL condition"),
        ("width + 1", "has type INTEGER, not a condition"),
        ("width > 'wide'", "Could not convert string 'wide'"),
        ("nosuch_function(width)", "nosuch_function"),
        ("  ", "--where is empty"),
    ],
)
def test_bad_conditions_name_what_is_wrong(data, expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--where") as caught:
        rows_matching(load_index(data[0]), expr)
    assert message in str(caught.value)


def test_a_condition_reads_nothing_but_the_ids_table(data, tmp_path: Path) -> None:
    """File reads are disabled (and cannot be re-enabled from inside an expression): a subquery over a file
    is refused rather than read."""
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    for expr in (f"(SELECT count(*) FROM read_csv('{secret}')) > 0", f"(SELECT count(*) FROM '{secret}') > 0"):
        with pytest.raises(ConfigError, match="disabled by configuration"):
            rows_matching(load_index(data[0]), expr)


def test_flat_search_returns_the_exact_filtered_top_k(data) -> None:
    index_dir, image, text, fields = data
    searcher = Searcher.from_dir(index_dir)
    expr = "metadata->>'src' = 'wiki' AND width < 1000"
    allowed = rows_matching(searcher.index, expr)
    queries = blobs(20, DIM, seed=84)
    found = searcher.search_vectors(queries, 10, where=expr)
    subset = np.flatnonzero(allowed)
    truth = subset[np.argsort(-(queries @ image[subset].T), axis=1, kind="stable")[:, :10]]
    assert [[h.row_id for h in hits] for hits in found] == truth.tolist()
    hit = found[0][0]
    assert json.loads(fields["metadata"][hit.row_id]) == hit.metadata and hit.metadata["src"] == "wiki"
    assert (hit.width, hit.height) == (fields["width"][hit.row_id], fields["height"][hit.row_id])
    # the text index: the condition and the rows with text together
    by_caption = searcher.search_vectors(queries, 10, target="text", where="width < 1000")
    assert all(h.caption is not None and h.width < 1000 and h.similarity is not None for q in by_caption for h in q)


def test_a_condition_no_row_meets_gives_no_hits(data) -> None:
    searcher = Searcher.from_dir(data[0])
    assert searcher.search_vectors(blobs(2, DIM, seed=85), 10, where="width < 0") == [[], []]


def test_ivf_search_under_a_one_percent_filter_keeps_its_recall(tmp_path: Path) -> None:
    """An IVF index tuned for 0.95 recall, searched under a condition that admits ~1 % of the rows: recall@10
    against exact search over those rows stays above 0.95 (the probes widen with the filter's selectivity)."""
    n = 20_000
    image, text = blobs(n, 32, seed=86, centres=64), blobs(n, 32, seed=87, centres=64)
    _, fields = write_filter_dir(tmp_path / "emb", image, text, 5000, seed=88)
    config = IndexBuildConfig(str(tmp_path / "emb"), str(tmp_path / "index"), index_key="IVF128,Flat")
    build_index(config)
    searcher = Searcher.from_dir(tmp_path / "index")
    assert searcher.index.image.index.nprobe < 128  # tuned: a plain search probes a few lists
    expr = "json_extract(metadata, '$.n')::INT = 7"
    allowed = rows_matching(searcher.index, expr)
    assert 0.005 < allowed.mean() < 0.02
    queries = blobs(100, 32, seed=89, centres=64)
    subset = np.flatnonzero(allowed)
    truth = subset[np.argsort(-(queries @ image[subset].T), axis=1, kind="stable")[:, :10]]
    found = np.array([[h.row_id for h in hits] for hits in searcher.search_vectors(queries, 10, where=expr)])
    assert allowed[found].all()
    assert recall(found, truth) >= 0.95


def test_an_index_without_the_new_columns_asks_for_a_rebuild(data, tmp_path: Path) -> None:
    """An ids file written before width/height/metadata/similarity: a condition naming one is refused with the
    rebuild; one over the old columns works; an append keeps the old layout."""
    index_dir = tmp_path / "index"
    source = data[0]
    index_dir.mkdir()
    for path in source.iterdir():
        (index_dir / path.name).write_bytes(path.read_bytes())
    ids = pq.read_table(index_dir / IDS_FILE)
    pq.write_table(ids.select(LEGACY_IDS_SCHEMA.names).cast(LEGACY_IDS_SCHEMA), index_dir / IDS_FILE)
    loaded = load_index(index_dir)
    with pytest.raises(ConfigError, match=r"has no 'width' column .* rebuild the index \(mmembed index"):
        rows_matching(loaded, "width > 100")
    assert rows_matching(loaded, "shard = 'shard-00001'").sum() == PER_SHARD
    hits = Searcher(loaded).search_vectors(blobs(1, DIM, seed=90), 3)[0]
    assert hits and hits[0].metadata is None and hits[0].width is None  # served without them
    more, _ = write_filter_dir(tmp_path / "more", blobs(50, DIM, seed=91), blobs(50, DIM, seed=92), 50, first_shard=9)
    infos = append(index_dir, [str(p) for p in more])
    assert pq.read_schema(index_dir / infos["ids_file"]).names == LEGACY_IDS_SCHEMA.names
    assert rows_matching(load_index(index_dir), "shard = 'shard-00009'").sum() == 50
