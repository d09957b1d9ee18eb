"""Load run of ``mmembed serve`` on loopback: text queries at a fixed concurrency for a bounded time.

It PRINTS figures (it is not a pass/fail test): requests, queries/s, client-side latency p50/p90/p99/max (the
whole HTTP round trip: text encoding, index search, metadata lookup, JSON), the server's own ``took_ms``
p50/p99, and the error count (any non-200 or transport error). Target with the small default model
(``mmembed-tiny``) on the 2-core dev machine: p50 < 50 ms and zero errors.

The server runs in a child process (``python -m mmembed.serve``, the same code as ``mmembed serve``) so the
load generator does not share its interpreter; both share the machine's cores, so the figures are a floor.
Without ``--index`` the offline demo (``mmembed demo``: digits and the small model it trains) is built
once under ``--demo-dir`` and reused. Every query text is distinct, so each one is encoded by the model.
Traffic goes to 127.0.0.1 only; the run stops after ``--duration`` seconds or ``--max-requests``.

    .venv/bin/python benchmarks/serve_load.py --duration 30 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import child_env, machine, machine_line, percentile, verdict  # noqa: E402

WORDS = [
    *("a", "photo", "of", "cat", "dog", "rocket", "coffee", "cup", "horse", "moon", "coins", "clock", "camera"),
    *("grass", "gravel", "brick", "retina", "galaxy", "astronaut", "flag", "red", "blue", "green", "small"),
    *("large", "old", "new", "bright", "dark", "close-up", "wide", "view", "under", "on", "in", "near"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", help="index dir (default: build the demo under --demo-dir)")
    parser.add_argument("--shards", action="append", default=[], help="shards for the server (not needed here)")
    parser.add_argument("--demo-dir", default="/tmp/mmembed-serve-bench", help="where the demo index is built")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--max-requests", type=int, default=200_000, help="hard bound on measured requests")
    parser.add_argument("-k", type=int, default=10, help="results per query")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch/faiss threads")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args(argv)
    if not (0 < args.duration <= 600 and 0 <= args.warmup <= 60 and 1 <= args.concurrency <= 256):
        parser.error("keep --duration within (0, 600] s, --warmup within [0, 60] s, --concurrency within 1..256")
    return args


def demo_index(folder: Path) -> Path:
    index = folder / "index"
    if not (index / "infos.json").is_file():
        print(f"building the demo index under {folder} (once)...", flush=True)
        subprocess.run([sys.executable, "-m", "mmembed.cli", "demo", "--out", str(folder)], check=True, cwd=ROOT)
    return index


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, index: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "mmembed.serve", "--index", str(index), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--threads", str(args.threads)]
    for pattern in args.shards:
        command += ["--shards", pattern]
    server = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited ({server.returncode}):\n{server.stderr.read().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("server did not become healthy within 120 s")


def queries(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{' '.join(rng.choices(WORDS, k=rng.randint(3, 9)))} #{i}" for i in range(count)]


class Connection:
    """A minimal HTTP/1.1 keep-alive client: a load generator must cost far less CPU than the server it
    measures (both share this machine's cores), which a full-featured async client does not."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(port: int, args: argparse.Namespace) -> dict:
    texts = queries(50_000)
    counter = iter(range(len(texts) * 1000))
    latencies: list[float] = []
    server_ms: list[float] = []
    errors: dict[str, int] = {}

    async def worker(until: float, measured: bool) -> None:
        connection = Connection("127.0.0.1", port)
        while time.perf_counter() < until and (not measured or len(latencies) < args.max_requests):
            text = texts[next(counter) % len(texts)]
            began = time.perf_counter()
            try:
                status, data = await asyncio.wait_for(connection.post_json("/search", {"query": text, "k": args.k}), 30)
                ok, reason = status == 200, f"HTTP {status}"
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                connection.close()
                ok, reason = False, type(exc).__name__
            elapsed = time.perf_counter() - began
            if not measured:
                continue
            if ok:
                latencies.append(elapsed)
                server_ms.append(json.loads(data)["took_ms"])
            else:
                errors[reason] = errors.get(reason, 0) + 1
        connection.close()

    if args.warmup:
        until = time.perf_counter() + args.warmup
        await asyncio.gather(*(worker(until, False) for _ in range(args.concurrency)))
    began = time.perf_counter()
    until = began + args.duration
    await asyncio.gather(*(worker(until, True) for _ in range(args.concurrency)))
    wall = time.perf_counter() - began
    return figures(latencies, server_ms, errors, wall, args)


def figures(latencies: list[float], server_ms: list[float], errors: dict, wall: float, args) -> dict:
    ms = [1000 * x for x in latencies]
    return {
        "concurrency": args.concurrency,
        "seconds": round(wall, 2),
        "requests": len(ms) + sum(errors.values()),
        "ok": len(ms),
        "errors": sum(errors.values()),
        "errors_by_reason": errors,
        "queries_per_second": round(len(ms) / wall, 1),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
        "server_p50_ms": round(percentile(server_ms, 50), 2),
        "server_p99_ms": round(percentile(server_ms, 99), 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    index = Path(args.index) if args.index else demo_index(Path(args.demo_dir))
    port = free_port()
    before = machine()
    server = start_server(args, index, port)
    try:
        result = asyncio.run(load(port, args))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    result["machine"] = {**machine(), "load_1m_start": before["load_1m"]}
    infos = json.loads((index / "infos.json").read_text())
    print(
        f"{machine_line(before)}; server and load generator share them\n"
        f"index {index}: {infos['count']:,} vectors, {infos['index_key']}, model {infos['provenance']['model']}\n"
        f"{result['concurrency']} in flight for {result['seconds']} s: {result['requests']} requests, "
        f"{result['queries_per_second']} queries/s, {result['errors']} errors {result['errors_by_reason'] or ''}\n"
        f"latency (client, round trip) p50 {result['p50_ms']} ms  p90 {result['p90_ms']} ms  "
        f"p99 {result['p99_ms']} ms  max {result['max_ms']} ms\n"
        f"server took_ms p50 {result['server_p50_ms']} ms  p99 {result['server_p99_ms']} ms\n"
        f"target p50 < 50 ms and no errors: {verdict(result['p50_ms'] < 50 and not result['errors'])}"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
