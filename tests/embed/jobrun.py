"""Run the embed command in a child process and watch its output folder: when each shard became complete,
the child's exit status and its peak memory. What a user sees, measured, with nothing mocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.tarmaker import image_bytes, write_tar

REPO = Path(__file__).resolve().parents[2]
# A small launcher forks the job and reaps it for its own peak RSS: a child started straight from pytest would
# be charged pytest's peak (Linux records the old address space's high-water mark at exec), which could hide a
# job whose memory grew. Arguments: report file, extra open_clip configs (a folder of JSON files, or "-"), then
# `mmembed embed` arguments. The report file gets the job's pid, then its wait status and ru_maxrss (KB).
LAUNCHER = """
import os, sys
report, configs, args = sys.argv[1], sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    import open_clip
    from mmembed.cli import entry
    if configs != "-":
        open_clip.add_model_config(configs)
    entry(["embed", *args])
with open(report + ".pid", "w") as f:
    f.write(str(pid))
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(f"{status} {usage.ru_maxrss}")
"""


def write_synthetic_shards(folder: Path, shards: int, per_shard: int, size: int = 40, seed: int = 0) -> list[str]:
    """``shards`` tars of ``per_shard`` seeded random-noise PNG samples with captions (cheap to decode)."""
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(shards):
        members = []
        for i in range(per_shard):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            members += [(f"{s:03d}{i:04d}.png", image_bytes(Image.fromarray(pixels), "PNG"))]
            members += [(f"{s:03d}{i:04d}.txt", f"sample {i} of shard {s}".encode())]
        paths.append(str(write_tar(folder / f"{s:05d}.tar", members)))
    return paths


def complete_shards(out: Path) -> set[str]:
    """Shards whose errors file (written last) exists under its final name."""
    folder = out / "errors"
    return {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()


@dataclass
class ChildRun:
    """What watching one child job saw."""

    returncode: int
    seconds: float  # launch to exit
    completed_at: dict[str, float] = field(default_factory=dict)  # shard -> seconds from launch, first seen
    peak_rss_mb: float = 0.0
    log: str = ""


def run_child(
    args: list[str],
    log_path: Path,
    out: Path,
    configs: Path | None = None,
    kill_when: Callable[[set[str]], bool] | None = None,
    timeout: float = 300,
) -> ChildRun:
    """Run ``mmembed embed ARGS`` in a child; poll ``out`` every 20 ms; SIGKILL it once ``kill_when(complete)``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    report = log_path.with_suffix(".report")
    command = [sys.executable, "-c", LAUNCHER, str(report), str(configs) if configs else "-", *args]
    completed: dict[str, float] = {}
    with open(log_path, "wb") as sink:
        started = time.monotonic()
        launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=sink)
        try:
            while launcher.poll() is None and time.monotonic() - started < timeout:
                now = time.monotonic() - started
                for shard in complete_shards(out) - completed.keys():
                    completed[shard] = now
                if kill_when is not None and kill_when(set(completed)):
                    os.kill(_job_pid(report), signal.SIGKILL)
                    break
                time.sleep(0.02)
            launcher.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        finally:
            if launcher.poll() is None:  # timed out or the test failed: never leave the job running
                os.kill(_job_pid(report), signal.SIGKILL)
                launcher.wait()
        seconds = time.monotonic() - started
    for shard in complete_shards(out) - completed.keys():
        completed[shard] = seconds
    status, maxrss_kb = (int(v) for v in report.read_text().split())
    returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return ChildRun(returncode, seconds, completed, maxrss_kb / 1024, log_path.read_text(errors="replace"))


def _job_pid(report: Path) -> int:
    """The job's pid, as the launcher wrote it."""
    path = report.with_name(report.name + ".pid")
    for _ in range(500):
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.01)
    raise RuntimeError(f"the launcher wrote no job pid to {path}")
