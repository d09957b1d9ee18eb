"""What every benchmark shares: child-process runs with their result JSON, wall / CPU seconds and peak RSS,
medians of repeats, the machine line, and aligned result tables with ratios.

Standard library only, so a child running under another interpreter (the autofaiss virtualenv of
``index_bench.py``) imports it too. A benchmark run as a script puts the repository root on ``sys.path`` first::

    ROOT = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(ROOT))
    from benchmarks.harness import measure, run_function, print_table  # noqa: E402

A function run in a child (``run_function("benchmarks.x:work", args)``) takes one JSON value and returns one;
the child prints it on a ``BENCH_RESULT`` line with the wall / CPU seconds and peak RSS of the call, read right
after it returns. A command of its own (``run_command``) may print that line itself with ``emit``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "
GIB = 2**30
MIB = 2**20
T = TypeVar("T")


def say(message: str) -> None:
    """A timestamped progress line on stderr (results go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """Cores and the 1-minute load average now: figures from a shared machine mean little without them."""
    return {"cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2)}


def machine_line(before: Mapping[str, Any] | None = None) -> str:
    """``machine: 2 cpus, load average 1.2`` (``before`` given: ``load average 0.9 at start, 1.2 at end``)."""
    now = machine()
    load = f"{now['load_1m']}" if before is None else f"{before['load_1m']} at start, {now['load_1m']} at end"
    return f"machine: {now['cpus']} cpus, load average (1 min) {load}"


# ---------------------------------------------------------------------------------------------- measuring


def proc_status_bytes(name: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` in bytes (VmHWM: peak RSS since exec; VmRSS, RssAnon, RssFile:
    now), or None where there is no /proc or the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(name + ":"))
    except (OSError, StopIteration):
        return None


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """A process's peak RSS since exec: ``VmHWM``, read while it still runs (right after the work measured).

    Not ``ru_maxrss``: Linux carries the forking parent's peak RSS into a child's ``ru_maxrss`` across exec,
    so a child of a large benchmark process would report at least the parent's size; and a process's own
    ``ru_maxrss`` read at exit adds the interpreter's teardown."""
    return proc_status_bytes("VmHWM", pid)


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads) and its exited children (DataLoader workers, Beam SDK
    processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Measured:
    """Wall and CPU seconds of a block and the process's peak RSS read right after it (None: no /proc)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_bytes: int | None = None


@contextmanager
def measure() -> Iterator[Measured]:
    """``with measure() as m: work()`` -> ``m.wall_s``, ``m.cpu_s``, ``m.peak_rss_bytes`` (set when the block ends)."""
    measured = Measured()
    wall, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield measured
    finally:
        measured.wall_s = time.perf_counter() - wall
        measured.cpu_s = cpu_seconds() - cpu
        measured.peak_rss_bytes = peak_rss_bytes()


# ---------------------------------------------------------------------------------------------- child processes


def child_env(*paths: str | Path, **variables: str) -> dict[str, str]:
    """This environment for a benchmark's child: offline, unbuffered, OpenMP threads that sleep rather than spin
    when idle (``OMP_WAIT_POLICY=PASSIVE``: faiss and torch share libgomp, and spinning waits hurt on a busy
    2-core machine), ``paths`` (default: the repository) first on ``PYTHONPATH``, plus ``variables``."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **variables)
    entries = [str(p) for p in (paths or (REPO,))] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    return env


def passive_openmp(script: str, argv: Sequence[str] | None = None) -> None:
    """Re-exec ``script`` with ``argv`` (default: this process's) and ``OMP_WAIT_POLICY=PASSIVE`` unless it is
    set: libgomp reads it when it loads, so it must be in the environment before faiss or torch is imported."""
    if os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        argv = sys.argv[1:] if argv is None else argv
        os.execv(sys.executable, [sys.executable, str(Path(script).resolve()), *argv])


def emit(result: Any) -> None:
    """Print ``result`` as the child's result line (the parent reads the last one)."""
    print(RESULT_PREFIX + json.dumps(result, default=_jsonable), flush=True)


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths and the rest, for ``json.dumps``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


@dataclass
class ChildRun:
    """One child process: exit status, wall seconds from launch to exit (start-up included), the 1-minute load
    average before and after, its result line (None: none printed), its output, and where stderr went."""

    command: list[str]
    returncode: int | None  # None: killed at the timeout
    wall_s: float
    load: tuple[float, float]
    result: Any = None
    stdout: str = ""
    stderr_tail: str = ""
    log: Path | None = None
    measured: Measured | None = None  # run_function only: the call itself, measured inside the child
    timeout: float | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str | None:
        """None for a clean exit, else what went wrong and where to look."""
        where = f"; see {self.log}" if self.log else (f":\n{self.stderr_tail}" if self.stderr_tail else "")
        if self.returncode is None:
            return f"timed out after {self.timeout:.0f} s{where}"
        return None if self.returncode == 0 else f"exited {self.returncode}{where}"

    def check(self) -> ChildRun:
        """This run, or RuntimeError naming the command and its error."""
        if not self.ok:
            raise RuntimeError(f"{' '.join(self.command[:4])} ... {self.error}")
        return self


def run_command(
    command: Sequence[str | Path],
    *,
    log: Path | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str = REPO,
) -> ChildRun:
    """Run ``command`` to the end (killed past ``timeout`` s): stdout kept, stderr to ``log`` (else kept, its last
    4,000 characters); the last result line on stdout, if any, parsed as ``result``."""
    command = [str(c) for c in command]
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as out, open(log, "w") if log else tempfile.TemporaryFile("w+") as err:
        began = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=dict(env or child_env()), cwd=cwd, text=True)
        try:
            returncode: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child only
            proc.wait()
            returncode = None
        wall = time.perf_counter() - began
        out.seek(0)
        stdout = out.read()
        stderr_tail = ""
        if log is None:
            err.seek(0)
            stderr_tail = err.read()[-4000:]
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return ChildRun(
        command,
        returncode,
        wall,
        (round(load_before, 2), round(os.getloadavg()[0], 2)),
        json.loads(lines[-1][len(RESULT_PREFIX) :]) if lines else None,
        stdout,
        stderr_tail,
        log,
        timeout=timeout,
    )


def run_function(
    target: str,
    args: Any = None,
    *,
    log: Path | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    python: str | Path = sys.executable,
) -> ChildRun:
    """Call ``module:function`` with the JSON value ``args`` in a fresh ``python`` process (the repository on its
    path); ``result`` is what it returned, ``measured`` the call's wall / CPU seconds and peak RSS in the child.
    A run that printed no result line is not ``ok``."""
    code = "import sys; from benchmarks.harness import child_main; child_main(sys.argv[1:])"
    run = run_command([python, "-c", code, target, json.dumps(args)], log=log, timeout=timeout, env=env)
    if run.ok and not isinstance(run.result, dict):
        run.returncode = 1
        run.stderr_tail = (run.stderr_tail + "\nno result line from the child").strip()
    elif isinstance(run.result, dict):
        run.measured = Measured(run.result["wall_s"], run.result["cpu_s"], run.result["peak_rss_bytes"])
        run.result = run.result["value"]
    return run


def child_main(argv: list[str]) -> None:
    """The child side of ``run_function``: import, call (measured), print the result line."""
    target, args = argv
    module, _, name = target.partition(":")
    function = getattr(importlib.import_module(module), name)
    with measure() as m:
        value = function(json.loads(args))
    emit({"value": value, "wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_rss_bytes": m.peak_rss_bytes})


# ---------------------------------------------------------------------------------------------- repeats


def interleaved(cases: Mapping[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """Each case's values over ``repeats`` rounds that run every case once, so load drifts on a shared machine
    hit all of them alike (take the ``median`` of each)."""
    values: dict[str, list[T]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            values[name].append(case())
    return values


def median(values: Sequence[float | None]) -> float | None:
    """Median of the values that exist (a run that could not measure a figure has None), None if none do."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------------------------- printing


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, None where either is missing or ``b`` is 0."""
    return a / b if a is not None and b else None


def fmt(value: Any, spec: str = "") -> str:
    """A table cell: ``-`` for a missing value (None, NaN), else ``format(value, spec)``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def verdict(met: bool | None) -> str:
    """A target's outcome: met, NOT met, or n/a (not measured)."""
    return "n/a" if met is None else ("met" if met else "NOT met")


def print_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]], indent: str = "  ") -> None:
    """Aligned columns under a rule: the first left-aligned, the others right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        line = "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        print(indent + line.rstrip())
        if n == 0:
            print(indent + "  ".join("-" * w for w in widths))


@dataclass
class Comparison:
    """Figures of two sides (``a`` vs ``b``) per row label, printed side by side with ``a / b``."""

    a: str
    b: str
    ratio_label: str = ""
    rows: list[tuple[str, float | None, float | None, str]] = field(default_factory=list)

    def add(self, label: str, a: float | None, b: float | None, spec: str = ".2f") -> None:
        self.rows.append((label, a, b, spec))

    def print(self, label: str = "", indent: str = "  ") -> None:
        headers = [label, self.a, self.b, self.ratio_label or f"{self.a} / {self.b}"]
        rows = [[name, fmt(a, spec), fmt(b, spec), fmt(ratio(a, b), ".2f")] for name, a, b, spec in self.rows]
        print_table(headers, rows, indent)
