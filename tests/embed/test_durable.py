"""The embed job's output is durable shard by shard: measured from outside, on a real child process.

The first shard is complete long before the job ends, a SIGKILL at half-time leaves whole shards that a
re-run keeps (redoing only the rest, to the uninterrupted run's results), and peak memory does not grow
with the number of shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmembed.config import EncoderConfig
from tests.beam.test_embed_pipeline import assert_same_rows
from tests.embed.jobrun import ChildRun, complete_shards, run_child, write_synthetic_shards
from tests.helpers import embed

SHARDS, PER_SHARD = 16, 40
TINY_ARGS = ["--model", "mmembed-tiny", "--random-init", "--device", "cpu", "--batch-size", "16", "--seed", "0"]
TINY = EncoderConfig(model="mmembed-tiny", random_init=True, device="cpu", batch_size=16, seed=0)
# A model whose vectors are wide (4,096-d) and towers tiny: what the writer holds per sample is large next to
# the model, so memory that grew with the input would show.
WIDE = {
    "embed_dim": 4096,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_synthetic_shards(tmp_path_factory.mktemp("in"), SHARDS, PER_SHARD, size=64)


@pytest.fixture(scope="module")
def reference(shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run, in process."""
    out = tmp_path_factory.mktemp("reference")
    embed(shards, out, TINY)
    return out


def job_seconds(run: ChildRun) -> float:
    """The job's own run time (listing, model load, pipeline), from the summary it printed."""
    start = run.log.index('{\n  "shards"')
    return json.loads(run.log[start : run.log.index("\n}", start) + 2])["seconds"]


def test_the_first_shard_is_durable_long_before_the_job_ends(shards: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = run_child(["--shards", *shards, "--out", str(out), *TINY_ARGS], tmp_path / "job.log", out)
    assert run.returncode == 0, run.log[-3000:]
    assert len(run.completed_at) == SHARDS
    job_start = run.seconds - job_seconds(run)  # the child's imports come before; the summary is printed after
    first, last = min(run.completed_at.values()) - job_start, max(run.completed_at.values()) - job_start
    # Shards are committed one by one as they end: the first within the first half of the job, not with the last.
    assert first < 0.5 * last, (first, last, sorted(run.completed_at.values()))
    seen_with_first = sum(1 for t in run.completed_at.values() if t - job_start <= first + 0.05)
    assert seen_with_first <= SHARDS // 2, sorted(run.completed_at.values())


def test_a_kill_at_half_time_keeps_whole_shards_and_a_rerun_redoes_only_the_rest(
    shards: list[str], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed = run_child(
        ["--shards", *shards, "--out", str(out), *TINY_ARGS],
        tmp_path / "job.log",
        out,
        kill_when=lambda complete: len(complete) >= SHARDS // 2,
    )
    assert killed.returncode == -9, killed.log[-3000:]
    complete = complete_shards(out)
    assert SHARDS // 2 <= len(complete) < SHARDS
    for name in ("embeddings", "errors"):  # every final-named file is whole: either complete or absent
        for path in (out / name).glob("*.parquet"):
            assert path.stem in complete or name == "embeddings", path
            table = pq.read_table(path)
            expected = pq.read_table(reference / name / path.name)
            if name == "embeddings":
                assert_same_rows(table, expected)
            else:
                assert table.equals(expected)
    kept = {p: p.stat().st_mtime_ns for d in ("embeddings", "errors") for p in (out / d).glob("*.parquet")}
    kept = {p: t for p, t in kept.items() if p.stem in complete}

    summary = embed(shards, out, TINY)
    assert summary["shards_processed"] == SHARDS - len(complete) and summary["shards_skipped"] == len(complete)
    assert summary["samples_processed_this_run"] == (SHARDS - len(complete)) * PER_SHARD
    assert summary["samples_in"] == summary["embedded"] == SHARDS * PER_SHARD
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # complete shards were not redone
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # a killed run's temporaries are removed
    for name in ("embeddings", "errors"):
        assert sorted(p.name for p in (out / name).glob("*.parquet")) == sorted(
            p.name for p in (reference / name).glob("*.parquet")
        )
        for path in (reference / name).glob("*.parquet"):
            if name == "embeddings":
                assert_same_rows(pq.read_table(out / name / path.name), pq.read_table(path))
            else:
                assert pq.read_table(out / name / path.name).equals(pq.read_table(path))


def test_peak_memory_does_not_grow_with_the_number_of_shards(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "mmembed-wide-test.json").write_text(json.dumps(WIDE))
    args = ["--model", "mmembed-wide-test", "--random-init", "--device", "cpu", "--batch-size", "25", "--seed", "0"]
    peaks = {}
    for count in (8, 64):
        shards = write_synthetic_shards(tmp_path / f"in{count}", count, 25, size=32, seed=count)
        out = tmp_path / f"out{count}"
        run = run_child(["--shards", *shards, "--out", str(out), *args], tmp_path / f"{count}.log", out, configs)
        assert run.returncode == 0 and len(run.completed_at) == count, run.log[-3000:]
        peaks[count] = run.peak_rss_mb
    # 1,400 more samples at 32 KB of vectors each: about 45 MB if the rows waited for the whole input.
    assert peaks[64] - peaks[8] < 20, peaks
