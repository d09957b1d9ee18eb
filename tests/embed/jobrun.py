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
# The child: optional extra open_clip configs (a folder of JSON files, or "-"), then `mmembed embed` arguments.
CHILD = """
import sys
import open_clip
from mmembed.cli import main
if sys.argv[1] != "-":
    open_clip.add_model_config(sys.argv[1])
sys.exit(main(["embed", *sys.argv[2:]]))
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
    command = [sys.executable, "-c", CHILD, str(configs) if configs else "-", *args]
    completed: dict[str, float] = {}
    with open(log_path, "wb") as sink:
        started = time.monotonic()
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=sink)
        try:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # reaped here, for its rusage: never by poll()
            while pid == 0 and time.monotonic() - started < timeout:
                now = time.monotonic() - started
                for shard in complete_shards(out) - completed.keys():
                    completed[shard] = now
                if kill_when is not None and kill_when(set(completed)):
                    os.kill(child.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        finally:
            if pid == 0:
                os.kill(child.pid, signal.SIGKILL)  # killed on cue, timed out or the test failed: never left running
                _, status, usage = os.wait4(child.pid, 0)
            child.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        seconds = time.monotonic() - started
    for shard in complete_shards(out) - completed.keys():
        completed[shard] = seconds
    return ChildRun(child.returncode, seconds, completed, usage.ru_maxrss / 1024, log_path.read_text(errors="replace"))
