"""Progress of the long jobs: plain lines (done / total, rate, ETA) when stderr is not a terminal, a tqdm bar
when it is one, nothing with -q; stdout keeps the JSON summary alone, other libraries' INFO lines need -v."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmembed.config import ConfigError
from mmembed.embed.job import CommittedShards, committed_samples
from mmembed.outputs import ShardOutputs
from mmembed.progress import INTERVAL_ENV, Progress, phase, progress_interval
from mmembed.records import SampleError
from mmembed.schema import errors_table
from mmembed.shards import stat_shards
from tests.embed.jobrun import write_synthetic_shards
from tests.test_makeshards import photo_folder

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "mmembed-tiny", "--random-init"]
ETA_OR_DONE = r"(ETA (\d+:\d\d:\d\d|\?)|done in \d+:\d\d:\d\d)"


@pytest.fixture
def progress_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="mmembed.progress")
    return caplog


def lines_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mmembed.progress"]


def test_eta_is_this_runs_pace_over_the_size_basis_or_the_count() -> None:
    by_size = Progress("embed", 4, "shards", rate_of="samples", size_total=1000, interval=0)
    by_size.advance(1, size=250, samples=7)  # one shard of four, but a quarter of the bytes
    assert by_size.eta(10.0) == pytest.approx(30.0)
    by_size.advance(1, size=50, samples=3)  # a small second shard: 2 of 4 shards, but 30% of the bytes
    assert by_size.eta(10.0) == pytest.approx(10.0 * 700 / 300)
    resumed = Progress("train", 100, "steps", initial=40, interval=0)  # 40 steps done by an earlier run
    assert resumed.eta(5.0) is None
    resumed.advance(20)
    assert resumed.eta(10.0) == pytest.approx(20.0)  # 20 steps in 10 s, 40 to go
    assert Progress("make-shards", None, "images", interval=0).eta(3.0) is None  # no total, no ETA
    for closed in (by_size, resumed):
        closed.close()


def test_plain_lines_say_done_of_total_rate_and_eta_then_one_final_line(progress_log: pytest.LogCaptureFixture) -> None:
    with Progress("embed", 3, "shards", rate_of="samples", size_total=300, interval=0) as progress:
        for _ in range(3):
            progress.advance(1, size=100, samples=1_500)
    lines = lines_of(progress_log)
    pattern = r"embed: (\d)/3 shards, ([\d,]+) samples, [\d.,]+ samples/s, " + ETA_OR_DONE
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert [re.match(pattern, line).group(1) for line in lines] == ["1", "2", "3", "3"]
    assert lines[1].startswith("embed: 2/3 shards, 3,000 samples") and "ETA" in lines[1]
    assert "done in" in lines[-1] and "ETA" not in lines[-1]


def test_lines_come_once_an_interval_and_stop_says_so(progress_log: pytest.LogCaptureFixture) -> None:
    with pytest.raises(RuntimeError), Progress("make-shards", 1_000, "images", interval=3600) as progress:
        for _ in range(500):
            progress.advance(1)
        raise RuntimeError("the job failed")
    assert lines_of(progress_log) == [lines_of(progress_log)[0]]  # no line within the hour, only the last
    assert re.fullmatch(
        r"make-shards: 500/1,000 images, [\d.,]+ images/s, stopped after 0:00:0\d", lines_of(progress_log)[0]
    )


def test_a_watch_polls_on_its_thread_and_once_more_at_the_close(progress_log: pytest.LogCaptureFixture) -> None:
    finished = iter(range(1, 1_000))
    seen: list[bool] = []

    def poll(progress: Progress) -> None:
        seen.append(progress.closing)
        progress.advance(1, vectors=next(finished))

    with Progress("index: add", None, "parts", rate_of="vectors", interval=0) as progress:
        progress.watch(poll, seconds=0.01)
        while len(seen) < 3:
            time.sleep(0.005)
    assert seen[-1] is True and not any(seen[:-1])  # the last poll is close's, after the thread stopped
    assert lines_of(progress_log)[-1].startswith(f"index: add: {len(seen)} parts, ")


def test_a_phase_reports_its_total_once_it_returns(progress_log: pytest.LogCaptureFixture) -> None:
    with phase("index image: train", 2_000, "vectors") as progress:
        assert progress.done == 0
    assert re.fullmatch(
        r"index image: train: 2,000/2,000 vectors, [\d.,]+ vectors/s, done in 0:00:00", lines_of(progress_log)[-1]
    )


def test_quiet_means_no_lines_and_no_watcher(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mmembed.progress")  # what -q sets on mmembed
    with Progress("embed", 2, "shards", interval=0) as progress:
        progress.watch(lambda p: p.advance(1))
        progress.advance(2)
        assert not progress.enabled and progress._watcher is None
    assert lines_of(caplog) == []


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert progress_interval() == 2.5
    monkeypatch.delenv(INTERVAL_ENV)
    assert progress_interval() == 10.0
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ConfigError, match=f"{INTERVAL_ENV}='soon'.*fix: {INTERVAL_ENV}=10"):
        progress_interval()


def test_a_committed_shard_counts_its_samples_from_the_footers(tmp_path: Path) -> None:
    """Embedded rows plus errors that name a sample; a shard-level error (no key) is not a sample."""
    outputs = ShardOutputs.for_shard(str(tmp_path), "s")
    Path(outputs.embeddings).parent.mkdir()
    Path(outputs.errors).parent.mkdir()
    pq.write_table(pa.table({"key": ["a", "b", "c"]}), outputs.embeddings)
    errors = [
        SampleError("s", "d", "d.jpg", "decode", "bad_image", "d.jpg is not an image"),
        SampleError("s", None, None, "shard", "shard_failed", "the tar stream stopped"),
    ]
    pq.write_table(errors_table(errors), outputs.errors)
    assert committed_samples(str(tmp_path), "s") == 4


def mmembed(*argv: str, interval: str = "0", stderr: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """The command line in a child process (stderr not a terminal unless given one)."""
    env = {**os.environ, INTERVAL_ENV: interval, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mmembed.cli", *argv]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=REPO, timeout=300)


def progress_lines(stderr: str, label: str) -> list[str]:
    return [
        line.split("mmembed.progress: ", 1)[1] for line in stderr.splitlines() if f"mmembed.progress: {label}: " in line
    ]


def other_libraries_info(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r" INFO (?!mmembed\.|pipelines\.)", line)]


def test_embed_and_index_print_progress_on_stderr_and_only_the_summary_on_stdout(tmp_path: Path) -> None:
    shards = write_synthetic_shards(tmp_path / "shards", shards=4, per_shard=3, size=24)
    out = tmp_path / "emb"
    embed = mmembed("embed", "--shards", str(tmp_path / "shards" / "*.tar"), "--out", str(out), *TINY)
    assert embed.returncode == 0, embed.stderr
    assert json.loads(embed.stdout)["embedded"] == 12 and len(shards) == 4
    lines = progress_lines(embed.stderr, "embed")
    pattern = r"embed: (\d)/4 shards, (\d+) samples(, [\d.,]+ samples/s)?, " + ETA_OR_DONE
    assert lines and all(re.fullmatch(pattern, line) for line in lines), lines
    done = [int(re.match(pattern, line).group(1)) for line in lines]
    assert done == sorted(done) and re.fullmatch(
        r"embed: 4/4 shards, 12 samples, [\d.,]+ samples/s, done in .*", lines[-1]
    )
    assert done[0] < 4  # lines while the job runs, not only at its end
    assert other_libraries_info(embed.stderr) == []  # Beam, open_clip, faiss stay quiet without -v

    # a re-run (--overwrite, retried shards) finds the old files there: a shard counts once its file is rewritten
    watched = CommittedShards(str(out), stat_shards(shards))
    with Progress("embed", 4, "shards", rate_of="samples", interval=3600) as progress:
        watched(progress)
        assert progress.done == 0
        os.utime(out / "errors" / "00002.parquet", ns=(0, 10**18))  # as the writer's rename would
        watched(progress)
        assert progress.done == 1 and progress.counts == {"samples": 3}
        assert progress.size_done == os.path.getsize(shards[2])

    index = mmembed("index", "--embeddings", str(out), "--out", str(out / "index"))
    assert index.returncode == 0, index.stderr
    assert json.loads(index.stdout)["count"] == 12
    added = progress_lines(index.stderr, "index image: add")
    assert added and all(re.fullmatch(r"index image: add: ([\d,]+)/12 vectors, .*" + ETA_OR_DONE, a) for a in added)
    assert "12/12 vectors" in added[-1] and "done in" in added[-1]
    assert progress_lines(index.stderr, "index image: tune")[-1].startswith("index image: tune: ")
    assert other_libraries_info(index.stderr) == []

    quiet = mmembed("-q", "index", "--embeddings", str(out), "--out", str(out / "index"), "--overwrite")
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["count"] == 12
    assert "mmembed.progress" not in quiet.stderr and " INFO " not in quiet.stderr

    verbose = mmembed("-v", "index", "--embeddings", str(out), "--out", str(out / "index"), "--overwrite")
    assert verbose.returncode == 0 and json.loads(verbose.stdout)["count"] == 12
    assert any(" INFO faiss" in line for line in other_libraries_info(verbose.stderr))  # -v lets them speak


def test_a_terminal_gets_a_bar(tmp_path: Path) -> None:
    """make-shards with stderr on a pseudo-terminal: tqdm's bar with done / total, stdout still the summary."""
    photos = photo_folder(tmp_path / "photos")
    terminal, child_side = pty.openpty()
    fcntl.ioctl(child_side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    shown: list[bytes] = []

    def read_terminal() -> None:  # as the child writes: a full pty buffer would block it
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # every writer's side is closed and everything was read
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        made = mmembed("make-shards", "--images", str(photos), "--out", str(tmp_path / "shards"), stderr=child_side)
    finally:
        os.close(child_side)
        reader.join(timeout=30)
        os.close(terminal)
    text = b"".join(shown).decode()
    assert made.returncode == 0 and json.loads(made.stdout)["samples"] == 3
    assert re.search(r"make-shards: 100%\|█+\| \[[\d:]+<[\d:]+, 3/3 images, [\d.,]+ images/s, done in ", text), text
    assert "\r" in text and "mmembed.progress" not in text  # redrawn in place, not logged
