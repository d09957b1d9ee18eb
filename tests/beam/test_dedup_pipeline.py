"""The dedup job on Beam's offline runner writes what the single-machine ``run_dedup`` writes for the same data
and config: the same groups, kept rows, per-member similarities and summary counts; corrupt inputs name the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.cli import main
from mmembed.dedup import DedupConfig, run_dedup
from mmembed.dedup.outputs import DUPLICATES_FILE, HISTOGRAM_FILE, KEEP_FILE, SUMMARY_FILE
from mmembed.index.evaluate import sample_rows
from mmembed.index.reader import EmbeddingsReadError
from mmembed.stages import parse_pipeline_args
from pipelines.dedup import run
from tests.dedup.synth import near_copy, random_phash, write_dedup_dir
from tests.helpers import offline_test_pipeline
from tests.index.synth import blobs, write_embed_dir

N = 800
PLACEHOLDERS = range(500, 540)  # 40 byte-identical copies of one image: exact and identical-pHash buckets


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """800 rows in 8 shards. exact: 10 = 11 = 12 and the 40 placeholders; perceptual: 20 ~ 21 (5 bits), a chain
    60 ~ 61 ~ 62 (4 bits a step), 70 and 71 with the same pHash but other bytes; semantic: 30 ~ 31 (cos 0.99),
    32 (0.97 to 30); a chain 40 =exact= 41 ~perceptual~ 42 ~semantic~ 43 (43 the widest image)."""
    rng = np.random.default_rng(0)
    image = blobs(N, 32, seed=1, centres=30)
    text = blobs(N, 32, seed=2, centres=30)
    sha256 = [f"{r:064x}" for r in range(N)]
    phash = random_phash(N, seed=3)
    for copy in (11, 12, 41, *PLACEHOLDERS[1:]):
        source = 40 if copy == 41 else 10 if copy < 20 else PLACEHOLDERS[0]
        sha256[copy], image[copy], phash[copy] = sha256[source], image[source], phash[source]
    phash[21] = phash[20] ^ np.uint64(0b11111)
    phash[61] = phash[60] ^ np.uint64(0b1111)
    phash[62] = phash[61] ^ np.uint64(0b1111 << 30)
    phash[71] = phash[70]
    phash[42] = phash[41] ^ np.uint64(0b111 << 20)
    image[31] = near_copy(image[30], 0.99, rng)
    image[32] = near_copy(image[30], 0.97, rng)
    image[43] = near_copy(image[42], 0.99, rng)
    similarity = np.full(N, 0.2)
    similarity[[12, 521]] = 0.3
    width = np.full(N, 64)
    width[43] = 1024
    root = tmp_path_factory.mktemp("dedup-beam") / "emb"
    write_dedup_dir(root, image, text=text, sha256=sha256, phash=phash, similarity=similarity, width=width)
    return root


def _args(config: DedupConfig) -> list[str]:
    """The job's command line for a DedupConfig."""
    args = ["--embeddings", config.embeddings_dir, "--out", config.out_dir]
    args += ["--methods", ",".join(config.methods)] if config.methods else []
    args += ["--keep", config.keep, "--eps", str(config.eps), "--phash-threshold", str(config.phash_threshold)]
    args += ["--max-cluster-size", str(config.max_cluster_size), "--sample-size", str(config.sample_size)]
    args += ["--recall-queries", str(config.recall_queries), "--batch-size", str(config.batch_size)]
    args += ["--seed", str(config.seed)]
    return args + (["--n-clusters", str(config.n_clusters)] if config.n_clusters else [])


def _comparable(summary: dict) -> dict:
    """The summary without what differs by construction: timing, out dir, and the Beam extras."""
    skip = {"seconds", "config", "runner", "beam_counters"}
    return {k: v for k, v in summary.items() if k not in skip}


def _both(embed_dir: Path, tmp_path: Path, test_pipeline: bool = True, **options) -> tuple[dict, dict, Path, Path]:
    single, beam = tmp_path / "single", tmp_path / "beam"
    expected = run_dedup(DedupConfig(str(embed_dir), str(single), **options))
    config = DedupConfig(str(embed_dir), str(beam), **options)
    pipeline = offline_test_pipeline() if test_pipeline else None
    argv = _args(config) + ([] if test_pipeline else ["--job_name", "dedup-test"])  # a Beam option passes through
    got = run(argv, test_pipeline=pipeline)
    assert got["config"] == {**expected["config"], "out_dir": str(beam)}
    for name in (DUPLICATES_FILE, KEEP_FILE):
        assert pq.read_table(beam / name).equals(pq.read_table(single / name)), name
    assert _comparable(got) == _comparable(expected)
    assert (beam / HISTOGRAM_FILE).exists() == (single / HISTOGRAM_FILE).exists()
    assert got["runner"] == "beam"
    return expected, got, single, beam


def _groups(path: Path) -> list[set[int]]:
    by_group: dict[int, set[int]] = {}
    for row in pq.read_table(path / DUPLICATES_FILE).to_pylist():
        by_group.setdefault(row["group_id"], set()).add(int(row["key"].rsplit("-", 1)[1]))
    return [by_group[g] for g in sorted(by_group)]


def test_all_methods_match_run_dedup(embed_dir: Path, tmp_path: Path) -> None:
    expected, got, _, beam = _both(embed_dir, tmp_path)
    placeholders = set(PLACEHOLDERS)
    assert _groups(beam) == [
        {10, 11, 12},
        {20, 21},
        {30, 31, 32},
        {40, 41},  # keep='resolution' keeps 43 (the widest); 42 is near it, 40 and 41 are not: no chaining
        {42, 43},
        {60, 61, 62},
        {70, 71},
        placeholders,
    ]
    assert got["removed"] == 2 + 1 + 2 + 1 + 1 + 2 + 1 + 39
    assert got["methods"]["exact"] == {"rows": 45, "removed": 2 + 1 + 39, "pairs": 3 + 1 + 780, "links": 2 + 1 + 39}
    assert got["methods"]["perceptual"]["pairs"] == 3 + 1 + 780 + 3 + 1 + (1 + 2)  # 40 = 41, both ~ 42
    assert got["semantic"]["exact_copies_skipped"] == 42 and got["semantic"]["pair_recall"] == 1.0
    counters = got["beam_counters"]
    assert counters["dedup_files"] == 8 and counters["dedup_rows"] == N and counters["dedup_exact_buckets"] == 3
    assert counters["dedup_clusters"] == got["semantic"]["clusters"]


def test_split_clusters_small_batches_and_semdedup_policy_match(embed_dir: Path, tmp_path: Path) -> None:
    """Oversized clusters split on workers as on one machine; several read batches per file."""
    options = {"n_clusters": 3, "max_cluster_size": 120, "keep": "semdedup-hard", "recall_queries": 200}
    expected, got, _, _ = _both(embed_dir, tmp_path, batch_size=37, sample_size=300, **options)
    assert got["semantic"]["split_clusters"] == 3 and got["semantic"]["final_clusters"] > 6
    assert got["beam_counters"]["dedup_split_clusters"] == 3
    assert got["semantic"]["recall_queries"] == 200 and got["semantic"]["recall_true_pairs"] > 0


def test_hash_methods_only_through_make_pipeline(embed_dir: Path, tmp_path: Path) -> None:
    """No test pipeline: the job builds its own (offline FnApiRunner) from the Beam options it was given."""
    expected, got, _, beam = _both(
        embed_dir, tmp_path, test_pipeline=False, methods=("exact", "perceptual"), keep="first"
    )
    assert "semantic" not in got and got["outputs"]["histogram"] is None and not (beam / HISTOGRAM_FILE).exists()
    assert _groups(beam) == [{10, 11, 12}, {20, 21}, {40, 41, 42}, {60, 61, 62}, {70, 71}, set(PLACEHOLDERS)]


def test_cli_beam_flag_runs_this_job(embed_dir: Path, tmp_path: Path) -> None:
    """``mmembed dedup --beam`` runs this job (Beam options pass through) and writes what ``run_dedup`` does."""
    argv = ["dedup", "--embeddings", str(embed_dir), "--methods", "exact", "--keep", "resolution"]
    assert main([*argv, "--out", str(tmp_path / "single")]) == 0
    assert main([*argv, "--out", str(tmp_path / "beam"), "--beam", "--job_name", "dedup-cli"]) == 0
    for name in (DUPLICATES_FILE, KEEP_FILE):
        assert pq.read_table(tmp_path / "beam" / name).equals(pq.read_table(tmp_path / "single" / name)), name
    summary = json.loads((tmp_path / "beam" / SUMMARY_FILE).read_text())
    assert summary["runner"] == "beam" and summary["groups"] == 3 and summary["removed"] == 2 + 1 + 39


def test_float16_vectors_and_shared_hashes_across_shards_match(tmp_path: Path) -> None:
    """float16 files; row i of every shard shares sha256 and pHash i (150 exact groups of 4, hashes 0..149 all
    within 8 bits: one big perceptual bucket), plus planted near-duplicate vectors."""
    rng = np.random.default_rng(7)
    image = blobs(600, 16, seed=8, centres=20)
    for a in range(0, 60, 2):
        image[a + 1] = near_copy(image[a], 0.995, rng)
    write_embed_dir(tmp_path / "emb", image, blobs(600, 16, seed=9), per_shard=150, dtype="float16")
    expected, got, _, _ = _both(tmp_path / "emb", tmp_path, keep="semdedup-easy", recall_queries=100)
    assert got["methods"]["exact"]["pairs"] == 150 * 6 and got["semantic"]["pairs"] >= 25
    assert got["methods"]["perceptual"]["pairs"] == 600 * 599 // 2


def test_options_are_dedup_config_fields(tmp_path: Path) -> None:
    argv = ["--embeddings", "e", "--out", "o", "--methods", "exact, semantic", "--n-clusters", "7", "--runner", "X"]
    config, beam_args = parse_pipeline_args("dedup", argv, "python -m pipelines.dedup", None)  # as run() parses
    assert config.methods == ("exact", "semantic") and config.n_clusters == 7 and beam_args == ["--runner", "X"]
    assert config == DedupConfig("e", "o", methods=("exact", "semantic"), n_clusters=7)


def test_corrupt_vectors_fail_on_a_worker_naming_the_file(tmp_path: Path) -> None:
    """The launcher reads only the small columns and a k-means sample; a bad vector page in a file without
    sampled rows surfaces in the job, as an EmbeddingsReadError naming that file."""
    paths = write_dedup_dir(tmp_path / "emb", blobs(400, 8, seed=4), per_shard=50)
    sampled = set((sample_rows(400, 10, 0) // 50).tolist())
    victim = paths[min(set(range(8)) - sampled)]
    meta = pq.ParquetFile(victim).metadata
    column = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.startswith("image_embedding"))
    offset = meta.row_group(0).column(column).data_page_offset
    data = bytearray(victim.read_bytes())
    data[offset : offset + 32] = b"\xff" * 32  # the vectors' first data page header; the footer still reads
    victim.write_bytes(bytes(data))
    argv = ["--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "out"), "--n-clusters", "2"]
    with pytest.raises(EmbeddingsReadError, match=f"(?s){victim.name}.*re-run the embed job"):
        run([*argv, "--sample-size", "10", "--recall-queries", "0"], test_pipeline=offline_test_pipeline())


def test_truncated_file_fails_on_the_launcher_naming_it(tmp_path: Path) -> None:
    paths = write_dedup_dir(tmp_path / "emb", blobs(150, 8, seed=5))
    paths[1].write_bytes(paths[1].read_bytes()[:300])
    with pytest.raises(EmbeddingsReadError, match="shard-00001.parquet"):
        run(
            ["--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "out")],
            test_pipeline=offline_test_pipeline(),
        )


def test_results_are_read_from_the_manifest_only(tmp_path: Path) -> None:
    """A file the job did not commit (a failed bundle attempt's, written before the attempt died) is never read:
    the launcher reads what the manifest names."""
    from mmembed import storage
    from mmembed.beam.dedup import LINKS, SEMANTIC, links_table, read_links, read_result, write_manifest
    from mmembed.dedup.links import star_links
    from mmembed.dedup.outputs import write_parquet

    work = str(tmp_path)
    committed, stray = (storage.join(work, LINKS, f"part-{name}.parquet") for name in ("a", "b"))
    write_parquet(committed, links_table(star_links("exact", np.array([1, 2, 3]))))
    write_parquet(stray, links_table(star_links("exact", np.array([1, 2, 3]))))  # the same bucket, written twice
    write_manifest([(LINKS, committed)], work)
    links = read_links(work, ("exact",))["exact"]
    assert (links.left.tolist(), links.right.tolist(), links.pairs) == ([1, 1], [2, 3], 3)
    assert read_result(work, SEMANTIC).num_rows == 0
