"""run.py end to end: planted exact, perceptual and semantic duplicates (and a chain across all three) in an
embed output dir -> duplicates.parquet, keep.parquet, summary.json, histogram; bad inputs fail naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.config import ConfigError
from mmembed.dedup import DedupConfig, run_dedup
from mmembed.dedup.outputs import DUPLICATES_FILE, HISTOGRAM_FILE, KEEP_FILE, SUMMARY_FILE
from mmembed.index.reader import EmbeddingsReadError
from tests.dedup.synth import near_copy, random_phash, write_dedup_dir
from tests.index.synth import blobs, encoder_provenance, write_shard

N = 600


def key(row: int) -> str:
    return f"shard-{row // 100:05d}-{row:06d}"


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 rows in 6 shards. exact: 10 = 11 = 12; perceptual: 20 ~ 21 (5 bits); semantic: 30 ~ 31 (cos 0.99);
    a chain 40 =exact= 41 ~perceptual~ 42 ~semantic~ 43; row 12 has the best image-text similarity."""
    rng = np.random.default_rng(0)
    image = blobs(N, 32, seed=1, centres=30)
    text = blobs(N, 32, seed=2, centres=30)
    sha256 = [f"{r:064x}" for r in range(N)]
    phash = random_phash(N, seed=3)
    for copy in (11, 12):
        sha256[copy], image[copy], phash[copy] = sha256[10], image[10], phash[10]
    sha256[41], image[41], phash[41] = sha256[40], image[40], phash[40]
    phash[21] = phash[20] ^ np.uint64(0b11111)
    phash[42] = phash[41] ^ np.uint64(0b111 << 20)
    image[31] = near_copy(image[30], 0.99, rng)
    image[43] = near_copy(image[42], 0.99, rng)
    similarity = np.full(N, 0.2)
    similarity[12] = 0.3
    width = np.full(N, 64)
    width[43] = 1024
    root = tmp_path_factory.mktemp("dedup") / "emb"
    write_dedup_dir(root, image, text=text, sha256=sha256, phash=phash, similarity=similarity, width=width)
    return root


# keep='similarity': 40 is kept for the chain; 41 (its exact copy) and 42 (3 bits from its pHash) are near it, 43
# (near 42 only) is not: no chains through intermediates, so 43 stays.
GROUPS = [{10, 11, 12}, {20, 21}, {30, 31}, {40, 41, 42}]


def _groups(table) -> list[set[int]]:
    by_group: dict[int, set[int]] = {}
    for row in table.to_pylist():
        by_group.setdefault(row["group_id"], set()).add(int(row["key"].rsplit("-", 1)[1]))
    return [by_group[g] for g in sorted(by_group)]


def test_all_methods_end_to_end(embed_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_dedup(DedupConfig(str(embed_dir), str(out), keep="similarity"))
    duplicates = pq.read_table(out / DUPLICATES_FILE)
    assert _groups(duplicates) == GROUPS
    rows = {int(r["key"].rsplit("-", 1)[1]): r for r in duplicates.to_pylist()}
    assert rows[12]["kept"] and not rows[10]["kept"]  # keep='similarity': best image-text cosine
    assert [r for r in rows if rows[r]["kept"]] == [12, 20, 30, 40]  # ties -> smallest (shard, key)
    # methods: those by which the row is near its kept row (an exact copy is near by every method)
    assert rows[41]["methods"] == ["exact", "perceptual", "semantic"] and 43 not in rows
    assert rows[42]["methods"] == ["perceptual"] and rows[21]["methods"] == ["perceptual"]
    assert rows[10]["similarity_to_kept"] == pytest.approx(1.0) and rows[41]["similarity_to_kept"] == pytest.approx(1)
    assert rows[31]["similarity_to_kept"] == pytest.approx(0.99, abs=1e-4)

    keep = pq.read_table(out / KEEP_FILE)
    kept_rows = {int(k.rsplit("-", 1)[1]) for k in keep.column("key").to_pylist()}
    assert len(kept_rows) == keep.num_rows == N - 6
    assert kept_rows == set(range(N)) - {10, 11, 21, 31, 41, 42}
    assert keep.column("shard").to_pylist()[0] == "shard-00000"

    saved = json.loads((out / SUMMARY_FILE).read_text())
    assert saved == json.loads(json.dumps(summary))
    assert summary["samples"] == N and summary["groups"] == 4 and summary["duplicates"] == 10
    assert summary["removed"] == 6 and summary["kept"] == N - 6 and summary["share_removed"] == round(6 / N, 6)
    methods = summary["methods"]
    assert methods["exact"] == {"rows": 5, "removed": 3, "pairs": 4, "links": 3}
    assert methods["perceptual"]["rows"] == 8 and methods["perceptual"]["pairs"] == 3 + 1 + 3
    assert methods["semantic"]["rows"] == 7 and methods["semantic"]["pairs"] == 2  # 30, 31 and the exact copies
    semantic = summary["semantic"]
    assert semantic["threshold"] == 0.95 and semantic["exact_copies_skipped"] == 3 and semantic["clusters"] == 24
    assert semantic["pair_recall"] == 1.0 and semantic["recall_queries"] == N
    assert summary["outputs"]["histogram"]["above_threshold"] == 9  # 30, 31, 42, 43 and the five exact rows
    assert (out / HISTOGRAM_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([DUPLICATES_FILE, KEEP_FILE, SUMMARY_FILE, HISTOGRAM_FILE])


def test_hash_methods_only_and_other_policies(embed_dir: Path, tmp_path: Path) -> None:
    summary = run_dedup(DedupConfig(str(embed_dir), str(tmp_path / "a"), methods=["exact", "perceptual"], keep="first"))
    duplicates = pq.read_table(tmp_path / "a" / DUPLICATES_FILE)
    assert _groups(duplicates) == [{10, 11, 12}, {20, 21}, {40, 41, 42}]
    assert "semantic" not in summary and summary["outputs"]["histogram"] is None
    assert not (tmp_path / "a" / HISTOGRAM_FILE).exists()
    rows = {int(r["key"].rsplit("-", 1)[1]): r for r in duplicates.to_pylist()}
    assert rows[10]["kept"] and rows[12]["similarity_to_kept"] == pytest.approx(1.0)  # read back from Parquet

    run_dedup(DedupConfig(str(embed_dir), str(tmp_path / "b"), recall_queries=0))  # the default: resolution
    duplicates = pq.read_table(tmp_path / "b" / DUPLICATES_FILE)
    rows = {int(r["key"].rsplit("-", 1)[1]): r for r in duplicates.to_pylist()}
    assert rows[43]["kept"] and rows[42]["group_id"] == rows[43]["group_id"]  # the widest image keeps its near copy
    assert rows[40]["kept"] and rows[41]["group_id"] == rows[40]["group_id"]  # 40 is not near 43: its own group

    summary = run_dedup(DedupConfig(str(embed_dir), str(tmp_path / "c"), keep="semdedup-easy", recall_queries=0))
    assert summary["groups"] == 4 and summary["semantic"]["pair_recall"] is None


def test_refuses_to_overwrite_unless_asked(embed_dir: Path, tmp_path: Path) -> None:
    config = DedupConfig(str(embed_dir), str(tmp_path), methods=("exact",))
    run_dedup(config)
    with pytest.raises(ConfigError, match="overwrite"):
        run_dedup(config)
    run_dedup(DedupConfig(str(embed_dir), str(tmp_path), overwrite=True))
    assert (tmp_path / HISTOGRAM_FILE).exists()
    assert run_dedup(DedupConfig(str(embed_dir), str(tmp_path), methods=("exact",), overwrite=True))["groups"] == 2
    assert not (tmp_path / HISTOGRAM_FILE).exists()  # no stale histogram from the semantic run


def test_missing_embed_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no embeddings/\\*.parquet under .*nowhere.*run the embed job"):
        run_dedup(DedupConfig(str(tmp_path / "nowhere"), str(tmp_path / "out")))


def test_truncated_parquet_names_the_file(tmp_path: Path) -> None:
    paths = write_dedup_dir(tmp_path / "emb", blobs(150, 8, seed=4))
    paths[1].write_bytes(paths[1].read_bytes()[:300])
    with pytest.raises(EmbeddingsReadError, match="shard-00001.parquet.*re-run the embed job"):
        run_dedup(DedupConfig(str(tmp_path / "emb"), str(tmp_path / "out")))


def test_corrupt_data_pages_name_the_file(tmp_path: Path) -> None:
    paths = write_dedup_dir(tmp_path / "emb", blobs(150, 8, seed=5))
    data = bytearray(paths[0].read_bytes())
    data[4:68] = b"\xff" * 64  # the first page header; the footer still reads
    paths[0].write_bytes(bytes(data))
    with pytest.raises(EmbeddingsReadError, match="shard-00000.parquet"):
        run_dedup(DedupConfig(str(tmp_path / "emb"), str(tmp_path / "out")))


def test_cuda_without_a_gpu_fails_fast(embed_dir: Path, tmp_path: Path) -> None:
    import faiss

    if faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0:
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="cuda"):
        run_dedup(DedupConfig(str(embed_dir), str(tmp_path), device="cuda"))


def test_empty_embeddings_files(tmp_path: Path) -> None:
    path = tmp_path / "emb" / "embeddings" / "shard-00000.parquet"
    write_shard(path, "shard-00000", np.zeros((0, 8), np.float32), None, encoder_provenance(8))
    summary = run_dedup(DedupConfig(str(tmp_path / "emb"), str(tmp_path / "out")))
    assert summary["samples"] == 0 and summary["groups"] == 0 and summary["share_removed"] == 0.0
    assert pq.read_table(tmp_path / "out" / KEEP_FILE).num_rows == 0
