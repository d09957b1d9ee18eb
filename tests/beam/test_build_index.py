"""The sharded index build on Beam's offline runner: same ids and recall as build_index, movable, resumable."""

from __future__ import annotations

import base64
import bz2
import shutil
import socket
import zlib
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from mmembed.config import ConfigError
from mmembed.index import IndexBuildConfig, append, build_index, load_index
from mmembed.index.choose import choose_index
from mmembed.index.config import WORK_DIR
from mmembed.index.reader import EmbeddingFiles
from mmembed.index.sharded import (
    Part,
    PartJob,
    ShardedBuildConfig,
    add_part,
    build_sharded,
    plan_parts,
)
from mmembed.index.store import IDS_FILE
from pipelines.build_index import beam_runner, run
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


def test_workers_fetch_the_trained_indexes_once_not_per_part(
    data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmembed.beam.index as beam_index

    fetched: list[str] = []
    real = beam_index.part_inputs

    def counting(job: PartJob):  # noqa: ANN202 - a context manager
        fetched.append(job.work_dir)
        return real(job)

    monkeypatch.setattr(beam_index, "part_inputs", counting)
    argv = ["--embeddings", str(data[0]), "--out", str(tmp_path / "index"), "--index-key", "IVF16,Flat"]
    infos = run([*argv, "--files-per-part", "1", "--tune-queries", "50"], test_pipeline=offline_test_pipeline())
    assert infos["parts"] == 6 and fetched == [str(tmp_path / "index" / WORK_DIR)]  # in setup, once


# -- the job graph of a 10M-row build ------------------------------------------------------------------------------
GRAPH_ROWS, GRAPH_DIM, GRAPH_FILES = 10_000_000, 512, 1000  # 1000 embeddings files of 10,000 rows (one a shard)
MAX_TRANSFORM_BYTES = 1 << 20
DATAFLOW_DRY_RUN = [
    "--runner=DataflowRunner",
    "--project=test-project",
    "--region=us-central1",
    "--temp_location=gs://mmembed-test/tmp",
    "--dry_run=True",
]


class Translated(Exception):
    """Raised once the Dataflow job is built, before anything would be submitted."""

    def __init__(self, pipeline: beam_runner_api_pb2.Pipeline) -> None:
        super().__init__("translated")
        self.pipeline = pipeline


@dataclass(frozen=True)
class JobWithArrays(PartJob):
    """The control: a job that carries its trained index in the graph instead of loading it in ``setup``."""

    trained: bytes = b""


def translated_payloads(job: PartJob, parts: list[Part], monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Translate the sharded build's Beam job into a Dataflow job (dry run: nothing staged or submitted, no
    network) and return, per transform, the bytes it carries: its payload, or a ParDo's function pickle once
    decompressed (what a worker unpickles: Create's elements live in one too)."""
    pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient", reason="needs apache-beam[gcp]")
    from apache_beam.runners.dataflow import dataflow_runner

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during translation: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    original = dataflow_runner.DataflowRunner.run_pipeline

    def run_pipeline(self, pipeline, options, pipeline_proto=None):  # noqa: ANN001, ANN202
        raise Translated(original(self, pipeline, options, pipeline_proto).job.proto_pipeline)

    monkeypatch.setattr(dataflow_runner.DataflowRunner, "run_pipeline", run_pipeline)
    with pytest.raises(Translated) as translated:
        beam_runner(DATAFLOW_DRY_RUN)(job, parts)
    transforms = translated.value.pipeline.components.transforms.values()
    return {t.unique_name: max(len(t.spec.payload), len(pickled_payload(t))) for t in transforms}


def pickled_payload(transform: beam_runner_api_pb2.PTransform) -> bytes:
    """A ParDo's pickled function, decompressed (empty for any other transform)."""
    if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
        return b""
    spec = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn
    if spec.urn != "beam:dofn:pickled_python_info:v1":
        return b""
    packed = base64.b64decode(spec.payload)
    try:
        return bz2.decompress(packed)
    except OSError:
        return zlib.decompress(packed)


@pytest.fixture
def plan_10m() -> tuple[PartJob, list[Part], int]:
    """The work of a 10M-row, 512-d sharded build from a bucket (one part per file), and the size its trained
    index would have: the auto choice's key with its centroids and codebooks (never trained here)."""
    paths = tuple(f"gs://mmembed-test/emb/embeddings/{i:05d}.parquet" for i in range(GRAPH_FILES))
    files = EmbeddingFiles(paths, (GRAPH_ROWS // GRAPH_FILES,) * GRAPH_FILES, GRAPH_DIM, {})
    choice = choose_index(GRAPH_ROWS, GRAPH_DIM, 4 << 30, "ivfpq", 500_000)
    trained_bytes = len(faiss.serialize_index(faiss.index_factory(GRAPH_DIM, choice.key)))
    nlist = int(choice.key.split("IVF")[1].split("_")[0])
    trained_bytes += nlist * GRAPH_DIM * 4  # the centroids an untrained index does not hold yet
    job = PartJob("gs://mmembed-test/emb/index/_parts", GRAPH_DIM, 65_536, 100)
    return job, plan_parts(files, 1), trained_bytes


def test_the_graph_of_a_10m_row_build_holds_paths_not_arrays(plan_10m, monkeypatch: pytest.MonkeyPatch) -> None:
    job, parts, trained_bytes = plan_10m
    sizes = translated_payloads(job, parts, monkeypatch)
    assert "AddParts/Add" in sizes and any(name.startswith("Parts/") for name in sizes), sorted(sizes)
    largest = max(sizes, key=sizes.get)
    assert sizes[largest] < MAX_TRANSFORM_BYTES, (largest, sizes[largest])
    print(f"largest transform {largest}: {sizes[largest]:,} bytes; a trained index: {trained_bytes:,} bytes")

    control = JobWithArrays(*astuple(job), trained=np.random.default_rng(0).bytes(trained_bytes))
    inflated = translated_payloads(control, parts[:2], monkeypatch)
    assert max(inflated.values()) > trained_bytes  # the measure sees an array the graph would carry
