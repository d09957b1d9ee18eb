"""The sharded index build on Beam's offline runner: same ids and recall as build_index, movable, resumable."""

from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.config import ConfigError
from mmembed.index import IndexBuildConfig, append, build_index, load_index
from mmembed.index.sharded import WORK_DIR, Part, PartJob, ShardedBuildConfig, add_part, build_sharded
from mmembed.index.store import IDS_FILE
from pipelines.build_index import run
from tests.helpers import offline_test_pipeline
from tests.index.synth import blobs, encoder_provenance, exact_top_k, recall, write_embed_dir, write_shard

N, DIM, PER_SHARD = 3000, 32, 500  # 6 files -> 3 parts of 2 files
TARGET = 0.97  # built to 0.97 so a fresh query sample clears 0.95 despite sampling noise
ARGS = ["--files-per-part", "2", "--recall-target", str(TARGET), "--tune-queries", "300"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("emb")
    image, text = blobs(N, DIM, seed=1), blobs(N, DIM, seed=2)
    write_embed_dir(root, image, text, per_shard=PER_SHARD)
    return root, image, text


@pytest.fixture(scope="module")
def sharded(data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sharded") / "index"
    infos = run(["--embeddings", str(data[0]), "--out", str(out), *ARGS], test_pipeline=offline_test_pipeline())
    return out, infos


@pytest.fixture(scope="module")
def single(data, sharded, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("single") / "index"
    key = sharded[1]["index_key"]
    config = IndexBuildConfig(str(data[0]), str(out), index_key=key, recall_target=TARGET, tune_queries=300)
    return out, build_index(config)


def test_sharded_build_matches_single_machine_build(data, sharded, single) -> None:
    _, image, text = data
    (sharded_dir, infos), (single_dir, single_infos) = sharded, single
    assert infos["index_key"] == "IVF64_HNSW32,PQ16x8np,RFlat"  # ivfpq forced: auto would pick Flat for 3000
    assert (infos["build"], infos["parts"], infos["count"]) == ("sharded", 3, N)
    assert infos["count"] == single_infos["count"]
    assert pq.read_table(sharded_dir / IDS_FILE).equals(pq.read_table(single_dir / IDS_FILE))
    assert not (sharded_dir / WORK_DIR).exists()
    a, b = load_index(sharded_dir), load_index(single_dir)
    rows = np.random.default_rng(123).choice(N, 300, replace=False)  # not the build's own query sample
    for modality, base in (("image", image), ("text", text)):
        assert (sharded_dir / f"{modality}.ivfdata").is_file()
        assert infos["indexes"][modality]["recall_target_met"]
        truth = exact_top_k(base, base[rows], 10)
        got, want = (
            recall(a.search(base[rows], 10, modality)[1], truth),
            recall(b.search(base[rows], 10, modality)[1], truth),
        )
        assert got >= 0.95, (modality, infos["indexes"][modality])
        assert abs(got - want) <= 0.01, (modality, got, want)


def test_every_row_id_finds_itself_under_its_key(data, sharded) -> None:
    _, image, text = data
    loaded = load_index(sharded[0])
    rows = np.random.default_rng(7).choice(N, 20, replace=False)
    for modality, base in (("image", image), ("text", text)):
        _, found = loaded.search(base[rows], 1, modality)
        np.testing.assert_array_equal(found[:, 0], rows)
        keys = loaded.lookup(found[:, 0]).column("key").to_pylist()
        assert keys == [f"shard-{r // PER_SHARD:05d}-{r % PER_SHARD:06d}" for r in rows]


def test_moved_index_dir_loads_its_ivfdata_from_beside_the_index(data, sharded, tmp_path: Path) -> None:
    _, image, _ = data
    moved = tmp_path / "moved"
    shutil.move(sharded[0], moved)
    try:
        loaded = load_index(moved)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded.image.index).invlists)
        assert isinstance(lists, faiss.OnDiskInvertedLists)
        assert Path(lists.filename) == moved / "image.ivfdata"
        _, found = loaded.search(image[:10], 1, "image")
        np.testing.assert_array_equal(found[:, 0], np.arange(10))
    finally:
        shutil.move(moved, sharded[0])


def test_append_to_a_copied_sharded_index_keeps_old_rows_and_the_original(data, sharded, tmp_path: Path) -> None:
    """append grows the copy's own .ivfdata (not the original's) without overwriting merged lists."""
    _, image, _ = data
    copy = tmp_path / "copy"
    shutil.copytree(sharded[0], copy)
    original = {p.name: p.read_bytes() for p in sharded[0].glob("*.ivfdata")}
    new_image, new_text = blobs(300, DIM, seed=5), blobs(300, DIM, seed=6)
    trained = encoder_provenance(DIM, trained=True)  # as the index's files
    shard = write_shard(tmp_path / "new" / "shard-00099.parquet", "shard-00099", new_image, new_text, trained)
    assert append(copy, [str(shard)])["count"] == N + 300
    loaded = load_index(copy)
    _, found = loaded.search(np.concatenate([image[:20], new_image[:20]]), 1, "image")
    np.testing.assert_array_equal(found[:, 0], np.concatenate([np.arange(20), N + np.arange(20)]))
    assert loaded.lookup(found[20:, 0]).column("key").to_pylist() == [f"shard-00099-{i:06d}" for i in range(20)]
    assert {p.name: p.read_bytes() for p in sharded[0].glob("*.ivfdata")} == original


def test_rerun_refuses_a_complete_index_and_non_ivf_keys(data, sharded, tmp_path: Path) -> None:
    emb = str(data[0])
    with pytest.raises(ConfigError, match="already holds an index"):
        run(["--embeddings", emb, "--out", str(sharded[0]), *ARGS], test_pipeline=offline_test_pipeline())
    with pytest.raises(ConfigError, match="not mergeable"):
        run(["--embeddings", emb, "--out", str(tmp_path / "x"), "--index-key", "HNSW32"], offline_test_pipeline())
    with pytest.raises(ConfigError, match="IVF"):
        ShardedBuildConfig(IndexBuildConfig(emb, str(tmp_path / "y"), family="flat"))


def test_crashed_build_resumes_with_the_parts_it_has(data, sharded, tmp_path: Path) -> None:
    """A run that dies after one part; the re-run keeps the trained indexes and adds only the other parts."""
    config = ShardedBuildConfig(IndexBuildConfig(str(data[0]), str(tmp_path / "index"), tune_queries=300), 2)

    def crash_after_one(job: PartJob, parts: list[Part]) -> None:
        add_part(job, parts[0])
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        build_sharded(config, crash_after_one)
    trained = (tmp_path / "index" / WORK_DIR / "trained_image.index").stat().st_mtime_ns
    seen: list[int] = []

    def record(job: PartJob, parts: list[Part]) -> None:
        assert (Path(job.work_dir) / "trained_image.index").stat().st_mtime_ns == trained  # not retrained
        seen.extend(p.part_id for p in parts)
        for part in parts:
            add_part(job, part)

    infos = build_sharded(config, record)
    assert seen == [1, 2]
    assert infos["count"] == N and infos["parts"] == 3
    _, found = load_index(tmp_path / "index").search(data[1][:10], 1, "image")
    np.testing.assert_array_equal(found[:, 0], np.arange(10))


def test_cli_sharded_build_on_the_default_local_runner(data, tmp_path: Path) -> None:
    from mmembed.cli import main
    from mmembed.index.store import read_infos

    out = tmp_path / "index"
    argv = ["index", "--embeddings", str(data[0]), "--out", str(out), "--sharded", "--files-per-part", "3"]
    assert main([*argv, "--recall-target", str(TARGET)]) == 0
    infos = read_infos(out)
    assert infos["build"] == "sharded" and infos["parts"] == 2 and infos["count"] == N
    assert main(["index", "--embeddings", str(data[0]), "--out", str(tmp_path / "x"), "--runner", "Direct"]) == 2
