"""Dedup of image-only samples (``--captions optional`` / ``none``): a null similarity ranks lowest under
keep='similarity', semantic duplicates come from image embeddings alone, and the Beam job agrees."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.dedup import DedupConfig, run_dedup
from mmembed.dedup.groups import Groups, choose_kept, keep_score
from mmembed.dedup.outputs import DUPLICATES_FILE, KEEP_FILE, SUMMARY_FILE
from pipelines.dedup import run
from tests.dedup.synth import near_copy, random_phash, write_dedup_dir
from tests.helpers import offline_test_pipeline
from tests.index.synth import blobs

N = 300
NO_TEXT = [10, 20, 21, 30, 31]  # image-only rows; the rest are captioned


def key(row: int) -> str:
    return f"shard-{row // 100:05d}-{row:06d}"


def kept_by_group(out: Path) -> list[tuple[set[int], int]]:
    """(members, kept row) per group of duplicates.parquet, in group order."""
    groups: dict[int, tuple[set[int], list[int]]] = {}
    for row in pq.read_table(out / DUPLICATES_FILE).to_pylist():
        members, kept = groups.setdefault(row["group_id"], (set(), []))
        number = int(row["key"].rsplit("-", 1)[1])
        members.add(number)
        if row["kept"]:
            kept.append(number)
    return [(members, kept[0]) for members, kept in (groups[g] for g in sorted(groups))]


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 rows in 3 shards. exact: 10 (image-only, the widest) = 11 (similarity 0.1) = 12 (0.3); 20 = 21, both
    image-only; semantic: 30 ~ 31 (cos 0.99), both image-only; 50 and 51 share a text vector, not an image."""
    rng = np.random.default_rng(0)
    image = blobs(N, 32, seed=1, centres=30)
    text = blobs(N, 32, seed=2, centres=30)
    sha256 = [f"{r:064x}" for r in range(N)]
    phash = random_phash(N, seed=3)
    for copy, source in ((11, 10), (12, 10), (21, 20)):
        sha256[copy], image[copy], phash[copy] = sha256[source], image[source], phash[source]
    image[31] = near_copy(image[30], 0.99, rng)
    text[51] = text[50]
    similarity = np.full(N, 0.2)
    similarity[[11, 12]] = (0.1, 0.3)
    width = np.full(N, 64)
    width[10] = 1024
    has_text = np.ones(N, dtype=bool)
    has_text[NO_TEXT] = False
    root = tmp_path_factory.mktemp("dedup-image-only") / "emb"
    write_dedup_dir(
        root, image, text=text, sha256=sha256, phash=phash, similarity=similarity, width=width, has_text=has_text
    )
    return root


def test_keep_score_ranks_a_missing_similarity_lowest() -> None:
    similarity = np.array([np.nan, -0.5, 0.1, np.nan])
    rank = np.arange(4)
    score = keep_score("similarity", rank=rank, similarity=similarity)
    assert score[0] == score[3] == -np.inf and score[1] == -0.5
    everyone = Groups(np.zeros(4, dtype=np.int64), np.ones(4, dtype=np.uint8), 1)
    assert choose_kept(everyone, score, rank).tolist() == [2]  # even a negative cosine beats none
    image_only = Groups(np.array([0, -1, -1, 0]), np.array([1, 0, 0, 1], dtype=np.uint8), 1)
    assert choose_kept(image_only, score, rank).tolist() == [0]  # all missing: smallest (shard, key)
    assert choose_kept(image_only, score, rank[::-1].copy()).tolist() == [3]


def test_similarity_keeps_a_captioned_copy_over_an_image_only_one(mixed_dir: Path, tmp_path: Path) -> None:
    summary = run_dedup(DedupConfig(str(mixed_dir), str(tmp_path / "out"), keep="similarity"))
    assert kept_by_group(tmp_path / "out") == [({10, 11, 12}, 12), ({20, 21}, 20), ({30, 31}, 30)]
    kept = set(pq.read_table(tmp_path / "out" / KEEP_FILE).column("key").to_pylist())
    assert key(12) in kept and not {key(10), key(11), key(21), key(31)} & kept
    assert {key(50), key(51)} <= kept  # same text vector, other images: not duplicates
    assert summary["removed"] == 4 and summary["kept"] == N - 4
    methods = {r["key"]: r["methods"] for r in pq.read_table(tmp_path / "out" / DUPLICATES_FILE).to_pylist()}
    assert methods[key(31)] == ["semantic"]  # found by their images alone: neither row has a text vector


def test_resolution_keeps_the_image_only_original(mixed_dir: Path, tmp_path: Path) -> None:
    run_dedup(DedupConfig(str(mixed_dir), str(tmp_path / "out"), keep="resolution"))
    assert kept_by_group(tmp_path / "out")[0] == ({10, 11, 12}, 10)


def test_embedded_without_captions_dedups_by_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(4)
    image = blobs(200, 32, seed=5, centres=20)
    image[7] = near_copy(image[3], 0.99, rng)
    sha256 = [f"{r:064x}" for r in range(200)]
    sha256[9] = sha256[8]
    image[9] = image[8]
    write_dedup_dir(tmp_path / "emb", image, sha256=sha256, has_text=np.zeros(200, dtype=bool))
    with caplog.at_level(logging.WARNING, logger="mmembed.dedup.run"):
        summary = run_dedup(DedupConfig(str(tmp_path / "emb"), str(tmp_path / "out"), keep="similarity"))
    assert "no row has an image-text similarity" in caplog.text
    assert kept_by_group(tmp_path / "out") == [({3, 7}, 3), ({8, 9}, 8)]
    assert summary["removed"] == 2 and (tmp_path / "out" / SUMMARY_FILE).is_file()


def test_beam_dedup_writes_the_same_outputs(mixed_dir: Path, tmp_path: Path) -> None:
    expected = run_dedup(DedupConfig(str(mixed_dir), str(tmp_path / "single"), keep="similarity"))
    args = ["--embeddings", str(mixed_dir), "--out", str(tmp_path / "beam"), "--keep", "similarity"]
    got = run(args, test_pipeline=offline_test_pipeline())
    for name in (DUPLICATES_FILE, KEEP_FILE):
        assert pq.read_table(tmp_path / "beam" / name).equals(pq.read_table(tmp_path / "single" / name)), name
    assert (got["removed"], got["groups"]) == (expected["removed"], expected["groups"])
