"""Command-line start-up: ``mmembed --help``, ``--version``, every ``CMD --help``, and an ``embed`` run with
nothing left to do (every shard complete), each timed as a fresh child process, medians of ``--repeats``.

Targets (issue): every ``--help`` / ``--version`` under 1 s on the 2-core machine; the no-op ``embed`` under
3 s. The end-to-end embed job beside a plain PyTorch loop is ``benchmarks/embed_throughput.py``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cli_startup.py [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import child_env, interleaved, machine, machine_line, median, run_command, verdict  # noqa: E402
from mmembed.stages import STAGES  # noqa: E402
from tests.photos import write_photo_folder  # noqa: E402

COMMANDS = (*STAGES, "run", "demo")
TINY = ["--model", "mmembed-tiny", "--random-init", "--device", "cpu"]


def mmembed(*args: str) -> list[str]:
    """The installed command's code path (``mmembed.cli.entry``) under this interpreter."""
    return [sys.executable, "-c", "import sys; from mmembed.cli import entry; entry(sys.argv[1:])", *args]


def seconds(command: list[str]) -> float:
    """Wall seconds of ``command`` as a fresh child process, launch to exit (it must succeed)."""
    return run_command(command, env=child_env()).check().wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cases = {"mmembed --help": mmembed("--help"), "mmembed --version": mmembed("--version")}
    cases |= {f"mmembed {c} --help": mmembed(c, "--help") for c in COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        photos, shards, out = Path(tmp, "photos"), Path(tmp, "shards"), Path(tmp, "emb")
        write_photo_folder(photos)
        made = mmembed("make-shards", "--images", str(photos), "--out", str(shards))
        subprocess.run(made, check=True, capture_output=True)
        embed = mmembed("embed", "--shards", str(shards / "*.tar"), "--out", str(out), *TINY)
        subprocess.run(embed, check=True, capture_output=True)  # now every shard is complete
        cases["mmembed embed (every shard complete)"] = embed
        timings = interleaved({name: lambda c=command: seconds(c) for name, command in cases.items()}, args.repeats)
    report = {
        "machine": machine(),
        "repeats": args.repeats,
        "median_seconds": {name: round(median(t), 3) for name, t in timings.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{machine_line()}; medians of {args.repeats} runs")
    for name, value in report["median_seconds"].items():
        target = 3.0 if "complete" in name else 1.0
        print(f"{name:<40} {value:6.2f} s   target < {target:.0f} s   {verdict(value < target)}")


if __name__ == "__main__":
    main()
