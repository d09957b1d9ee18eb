"""Fault injection on the embed job: a SIGKILL mid-write, one shard that raises, an unwritable output directory,
a full disk, and corrupt embeddings into the sharded index build. Nothing is lost silently, no partial file is
ever visible under a final name, errors name the cause, and a re-run converges on the uninterrupted outputs.

Corrupt or truncated Parquet into the other consumers is covered where they are tested: the index reader in
tests/index/test_reader.py (truncated footer, smashed data pages), the single-machine dedup in
tests/dedup/test_run.py and tests/test_dedup_cli.py, the Beam dedup job in tests/beam/test_dedup_pipeline.py.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import mmembed.beam.embed as beam_embed
from mmembed.cli import main
from mmembed.config import ConfigError, EncoderConfig
from mmembed.embed.summary import exit_status
from mmembed.index.evaluate import sample_rows
from mmembed.index.reader import EmbeddingsReadError, open_embeddings
from pipelines.build_index import run as build_index_run
from tests.beam.test_embed_pipeline import assert_same_rows
from tests.helpers import embed, offline_test_pipeline
from tests.index.synth import blobs, write_embed_dir

REPO = Path(__file__).resolve().parents[2]
TEMP_NAME = re.compile(r"^\.\d{5}\.parquet\.tmp-[0-9a-f]{32}$")  # write_atomic's hidden temporary names

# The embed job's command line, each output file written slowly (the bytes, then a pause, then the rename), so a
# kill lands while a temporary file is half done.
SLOW_EMBED = """
import sys, time
from mmembed import storage
real_write_atomic = storage.write_atomic

def slow_write_atomic(url, write):
    def write_slowly(f):
        write(f)
        f.flush()
        time.sleep(0.4)
    real_write_atomic(url, write_slowly)

storage.write_atomic = slow_write_atomic
from pipelines.embed import run
sys.exit(run(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def reference(demo_shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run over the four demo shards."""
    out = tmp_path_factory.mktemp("reference")
    embed(demo_shards, out, EncoderConfig(model="mmembed-tiny", random_init=True, device="cpu", batch_size=8, seed=0))
    return out


def shard_files(out: Path) -> dict[str, list[Path]]:
    """Final-named outputs by folder (embeddings, errors) and the hidden temporary files anywhere under ``out``."""
    found: dict[str, list[Path]] = {"embeddings": [], "errors": [], "temp": []}
    for path in sorted(out.rglob("*")):
        if path.is_file() and ".tmp-" in path.name:
            found["temp"].append(path)
        elif path.suffix == ".parquet":
            found[path.parent.name].append(path)
    return found


def assert_outputs_valid(out: Path, reference: Path) -> None:
    """Every final-named file is whole Parquet equal to the uninterrupted run's; temporary files stay hidden."""
    files = shard_files(out)
    for path in files["embeddings"] + files["errors"]:
        table = pq.read_table(path)  # a partial file would fail here
        expected = pq.read_table(reference / path.parent.name / path.name)
        if path.parent.name == "embeddings":
            assert_same_rows(table, expected)
        else:
            assert table.equals(expected)
    assert all(TEMP_NAME.match(p.name) for p in files["temp"]), files["temp"]


def test_sigkill_mid_write_then_rerun_resumes_to_the_uninterrupted_outputs(
    demo_shards: list[str], reference: Path, tmp_path: Path, tiny_config: EncoderConfig
) -> None:
    out = tmp_path / "out"
    log = tmp_path / "job.log"
    args = ["--shards", *demo_shards, "--out", str(out), "--model", "mmembed-tiny", "--random-init", "--device", "cpu"]
    args += ["--batch-size", "8", "--seed", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with open(log, "wb") as sink:
        job = subprocess.Popen([sys.executable, "-c", SLOW_EMBED, *args], cwd=REPO, env=env, stdout=sink, stderr=sink)
        deadline, on_cue = time.monotonic() + 240, False
        try:
            while time.monotonic() < deadline and job.poll() is None:
                files = shard_files(out) if out.exists() else {"errors": [], "temp": []}
                if files["errors"] and files["temp"]:  # one shard complete (errors is written last), one half done
                    job.send_signal(signal.SIGKILL)
                    on_cue = True
                    break
                time.sleep(0.02)
        finally:
            if job.poll() is None and not on_cue:  # timed out, or the test failed: never leave the job running
                job.kill()
            returncode = job.wait()
    assert on_cue and returncode == -signal.SIGKILL, log.read_text()[-3000:]

    killed = shard_files(out)
    complete = {p.stem for p in killed["errors"]}
    assert 1 <= len(complete) < len(demo_shards) and killed["temp"]
    assert_outputs_valid(out, reference)  # the half-written file exists only under its hidden temporary name
    kept = {p: p.stat().st_mtime_ns for p in killed["embeddings"] + killed["errors"] if p.stem in complete}

    summary = embed(demo_shards, out, tiny_config)
    assert summary["shards_processed"] == len(demo_shards) - len(complete)
    assert summary["shards_skipped"] == len(complete)
    assert summary["samples_in"] == summary["embedded"] == 38 and summary["errors"] == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())  # complete shards were not redone
    assert_outputs_valid(out, reference)
    assert len(shard_files(out)["embeddings"]) == len(demo_shards)
    assert open_embeddings(str(out)).count == 38  # stale temporary files are invisible to the index and dedup


class InjectedFault(Exception):
    """A failure type the embed job does not expect anywhere."""


def test_a_sample_that_raises_costs_only_that_sample(
    demo_shards: list[str], reference: Path, tmp_path: Path, tiny_config: EncoderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = Path(demo_shards[1]).stem
    decode = beam_embed.decode_sample
    bad_key = sorted(pq.read_table(reference / "embeddings" / f"{victim}.parquet")["key"].to_pylist())[3]

    def failing_decode(sample, config, reduce_to=None):  # noqa: ANN001, ANN202
        if (sample.shard, sample.key) == (victim, bad_key):
            raise InjectedFault("the decoder crashed")
        return decode(sample, config, reduce_to)

    monkeypatch.setattr(beam_embed, "decode_sample", failing_decode)
    summary = embed(demo_shards[:3], tmp_path, tiny_config)

    assert summary["failed_shards"] == [] and summary["errors_by_reason"] == {"sample_failed": 1}
    assert summary["embedded"] == 29 and summary["samples_in"] == 30
    errors = pq.read_table(tmp_path / "errors" / f"{victim}.parquet").to_pylist()
    assert [(e["key"], e["stage"], e["code"]) for e in errors] == [(bad_key, "decode", "sample_failed")]
    assert f"shard {victim}: sample {bad_key}" in errors[0]["reason"]
    assert "InjectedFault: the decoder crashed" in errors[0]["reason"]
    kept = pq.read_table(tmp_path / "embeddings" / f"{victim}.parquet")
    expected = pq.read_table(reference / "embeddings" / f"{victim}.parquet")
    assert kept.num_rows == expected.num_rows - 1  # the samples after the failing one were embedded


def test_a_shard_whose_stream_raises_is_recorded_and_retried(
    demo_shards: list[str], reference: Path, tmp_path: Path, tiny_config: EncoderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = Path(demo_shards[1]).stem
    read = beam_embed.iter_shard_samples

    def breaking_read(stream, shard, extensions):  # noqa: ANN001, ANN202
        for i, item in enumerate(read(stream, shard, extensions)):
            if shard == victim and i == 4:
                raise InjectedFault("the stream broke")
            yield item

    monkeypatch.setattr(beam_embed, "iter_shard_samples", breaking_read)
    summary = embed(demo_shards[:3], tmp_path, tiny_config)

    assert summary["failed_shards"] == [victim] and summary["shard_errors"] == {"shard_failed": 1}
    assert summary["beam_counters"]["errors.shard_failed"] == 1 and summary["embedded"] == 24
    assert exit_status(summary) == 3
    errors = pq.read_table(tmp_path / "errors" / f"{victim}.parquet").to_pylist()
    assert [(e["key"], e["stage"], e["code"]) for e in errors] == [(None, "shard", "shard_failed")]
    assert f"shard {victim}" in errors[0]["reason"] and "InjectedFault: the stream broke" in errors[0]["reason"]
    assert pq.read_metadata(tmp_path / "embeddings" / f"{victim}.parquet").num_rows == 4  # those read before it
    for shard in (demo_shards[0], demo_shards[2]):  # the other shards are whole and right
        name = f"{Path(shard).stem}.parquet"
        assert_same_rows(pq.read_table(tmp_path / "embeddings" / name), pq.read_table(reference / "embeddings" / name))

    monkeypatch.setattr(beam_embed, "iter_shard_samples", read)  # the fault is gone: a re-run retries that shard only
    again = embed(demo_shards[:3], tmp_path, tiny_config)
    assert again["shards_processed"] == 1 and again["failed_shards"] == [] and again["embedded"] == 30
    assert exit_status(again) == 0


def test_unwritable_output_dir_fails_before_any_work_with_a_clear_error(
    demo_shards: list[str], tmp_path: Path, tiny_config: EncoderConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file.txt").write_text("a regular file")
    out = tmp_path / "file.txt" / "sub"  # unwritable even for root (tests and CI run as root)
    with pytest.raises(ConfigError, match=f"output directory '{re.escape(str(out))}' is not writable"):
        embed(demo_shards[:1], out, tiny_config)
    capsys.readouterr()
    tiny = ["--model", "mmembed-tiny", "--random-init"]
    assert main(["embed", "--shards", demo_shards[0], "--out", str(out), *tiny]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.parquet"))


def test_full_disk_names_the_file_leaves_no_partial_output_and_a_rerun_completes(
    demo_shards: list[str], reference: Path, tmp_path: Path, tiny_config: EncoderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = pq.write_table
    calls = []

    def disk_fills_up(table, where, **kwargs):  # noqa: ANN001, ANN202
        calls.append(table.num_rows)
        if len(calls) == 3:  # the second shard's embeddings: some bytes land, then the disk is full
            where.write(b"PAR1 half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(beam_embed.pq, "write_table", disk_fills_up)
    with pytest.raises(Exception, match=r"No space left on device \(while writing \S+/embeddings/\d{5}\.parquet\)"):
        embed(demo_shards[:2], tmp_path, tiny_config)
    files = shard_files(tmp_path)
    assert not files["temp"]  # the half-written temporary file was removed
    assert len(files["embeddings"]) == len(files["errors"]) == 1  # one shard complete, the other absent
    assert_outputs_valid(tmp_path, reference)

    monkeypatch.setattr(beam_embed.pq, "write_table", real_write)  # space freed: the re-run finishes the job
    summary = embed(demo_shards[:2], tmp_path, tiny_config)
    assert summary["shards_processed"] == 1 and summary["shards_skipped"] == 1 and summary["embedded"] == 20
    assert_outputs_valid(tmp_path, reference)


def test_corrupt_embeddings_in_the_sharded_index_build_name_the_file_from_the_worker(tmp_path: Path) -> None:
    """The launcher trains on a sample; a file none of whose rows is sampled fails in the Beam step that adds it."""
    count, per_file, train, queries = 400, 20, 8, 4
    paths = write_embed_dir(tmp_path / "emb", blobs(count, 8, seed=1), blobs(count, 8, seed=2), per_shard=per_file)
    train_rows = sample_rows(count, train, 0)
    sampled = np.concatenate([train_rows, sample_rows(count, queries, 1, exclude=train_rows)]) // per_file
    victim = paths[min(set(range(len(paths))) - set(sampled.tolist()))]
    meta = pq.ParquetFile(victim).metadata
    column = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.startswith("image_embedding"))
    start, size = (
        meta.row_group(0).column(column).data_page_offset,
        meta.row_group(0).column(column).total_compressed_size,
    )
    data = bytearray(victim.read_bytes())
    data[start : start + size] = b"\xff" * size  # the vectors' pages smashed, the footer intact
    victim.write_bytes(bytes(data))
    argv = ["--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "index"), "--index-key", "IVF2,Flat"]
    argv += ["--max-train-vectors", str(train), "--tune-queries", str(queries)]
    with pytest.raises(EmbeddingsReadError, match=f"(?s){victim.name}.*re-run the embed job.*AddParts/Add"):
        build_index_run(argv, test_pipeline=offline_test_pipeline())
