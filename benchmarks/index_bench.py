"""Index benchmark: mmembed's ``build_index`` vs criteo's autofaiss ``build_index`` on the same vectors.

It PRINTS figures (it is not a pass/fail test). Two data sets, each indexed by both tools in the same run:

* synthetic: ``--n`` x ``--dim`` unit vectors (default 1,000,000 x 512) in ``--clusters`` gaussian blobs
  around random unit centres. Each blob is anisotropic: its spread lies in a random ``--intrinsic-dim``
  dimensional subspace (real embeddings have a low intrinsic dimension), plus a small isotropic noise;
  ``--intrinsic-dim 0`` gives isotropic blobs like ``tests/index/synth.blobs`` (``tests.index.synth.ClusteredVectors``).
  The rows are written as the embed job's Parquet files (``tests.index.synth.write_shard``; text column = a perturbed
  copy of the image column) for
  mmembed and as ``.npy`` files (image column) for autofaiss. Generated once per parameter set under
  ``--workdir`` and reused.
* real: the embed job (``mmembed.embed.job.run_job``, bundled random-init ``mmembed-tiny``, offline) on the
  demo photos (``tests.photos.write_photo_folder`` -> ``mmembed.makeshards.write_shards``): 76 x 64-d, so
  both tools pick an exact flat index there; it checks the end-to-end path, not ANN speed.

Queries and ground truth: 1,000 queries = seeded random data vectors plus a small gaussian perturbation
(renormalised), the same for both tools (real set: the 76 caption embeddings, text -> image search). Exact
top-10 by inner product via faiss ``knn`` brute force over the image vectors in blocks. Recall@10 is
10-recall@10 (|found top-10 ∩ exact top-10| / 10), measured on the image index of each tool.

What is measured, per tool, on the image index:

* build s: wall time of the library's build call in a fresh child process (imports excluded).
  autofaiss builds one index; mmembed's ``build_index`` always builds image AND text indexes, so its
  "1 index" figure is the time from the call until ``image.index`` is saved (read from the library's own
  log record; it includes choosing, sampling, ids.parquet, training, adding, tuning, evaluating and saving
  that index), and its "both" figure is the whole call. Both include each library's own parameter tuning.
  mmembed reads the Parquet files, autofaiss the .npy files (each tool's native input).
* peak RSS: the child process' own high-water mark (``VmHWM`` in /proc/self/status, read right after the build
  call: ``benchmarks/harness.py``), imports included; each tool runs in its own process so the two don't pollute
  each other. (Not the child's ``ru_maxrss``: Linux carries the forking parent's RSS into it across exec.)
* index bytes: the image index file on disk.
* recall@10 and queries/s with ONE thread (``faiss.omp_set_num_threads(1)``) in this process, after a
  warm-up pass: "batch" = one ``search`` of all 1,000 queries (median of ``--repeats``), "1/call" = one
  query per ``search`` call, Python loop included. mmembed's index is opened with ``load_index`` (IVF lists
  memory-mapped, its tuned parameters applied); autofaiss's with ``faiss.read_index`` and the parameters it
  chose (``index_param`` in its infos JSON) applied through ``faiss.ParameterSpace``.

Both tools get the same memory budget (``--max-index-memory``, mmembed ``max_index_memory`` / autofaiss
``max_index_memory_usage``; binary units in both) and both build with all cores. autofaiss tunes its
search parameters for a query-time bound, not a recall target: it gets ``max_index_query_time_ms`` =
``--autofaiss-query-ms`` (default 1.0 ms, i.e. the 1,000 queries/s target) and
``min_nearest_neighbors_to_retrieve`` = 10. Every child process runs with ``OMP_WAIT_POLICY=PASSIVE``
(faiss and torch share libgomp; spinning OpenMP waits hurt on a busy 2-core machine); this script re-execs
itself with it set, too.

autofaiss needs numpy<2, so it runs in its own virtualenv, created on first use from
``benchmarks/requirements-autofaiss.txt`` under ``~/.cache/mmembed-bench/autofaiss-venv`` (not in the repo;
re-created when that file changes). It pins ``pyarrow<26`` (26 needs numpy 2) and ``faiss-cpu<1.14`` (1.14
dropped the keyword arguments autofaiss passes to ``faiss.OPQMatrix``, so its IVF-PQ builds fail). If the
environment cannot be made, the benchmark says so and reports the mmembed figures only.

Targets (from the issue), judged on the synthetic set: recall@10 >= 0.95 at >= 1,000 single-thread
queries/s (batch), and a build (1 index) no slower than autofaiss's at the same memory budget.

Run it from the repository root. The full default run took 67 minutes on the 2-core dev machine (data
1.5 min, mmembed 12.5 min for both indexes, autofaiss 50 min); develop with ``--n 100000``::

    .venv/bin/python benchmarks/index_bench.py --json
    .venv/bin/python benchmarks/index_bench.py --n 100000 --skip-real
    .venv/bin/python benchmarks/index_bench.py --skip-autofaiss --skip-real \\
        --mmembed-index-key 'IVF2048_HNSW32,PQ64x8np,Refine(SQ8)'

Child logs (build progress) go to ``<workdir>/logs/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.harness import (  # noqa: E402
    MIB,
    ChildRun,
    child_env,
    fmt,
    machine_line,
    passive_openmp,
    print_table,
    ratio,
    run_function,
    say,
    verdict,
)
from mmembed.index import IndexBuildConfig, build_index, load_index  # noqa: E402
from mmembed.index.evaluate import recall_at_k  # noqa: E402
from mmembed.index.store import INDEX_FILES  # noqa: E402
from tests.index.synth import ClusteredVectors, encoder_provenance, unit, write_shard  # noqa: E402

REQUIREMENTS = Path(__file__).resolve().parent / "requirements-autofaiss.txt"
DEFAULT_WORKDIR = "/tmp/mmembed-index-bench"
DEFAULT_VENV = str(Path.home() / ".cache" / "mmembed-bench" / "autofaiss-venv")
RECALL_TARGET = 0.95
QPS_TARGET = 1000.0
K = 10


def default_current_memory() -> str:
    """75% of this machine's RAM, for autofaiss' ``current_memory_available`` (it sizes its training set)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{int(total * 0.75 / 2**30)}G"


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of one benchmark run."""

    n: int = 1_000_000
    dim: int = 512
    clusters: int = 1000
    intrinsic_dim: int = 32  # 0: isotropic blobs
    spread: float = 1.0  # norm of a point's offset from its centre inside the blob's subspace (centre norm 1)
    noise: float = 0.25  # norm of the isotropic noise added to every point
    text_noise: float = 0.2  # text column = image column + this much noise (a perturbed copy)
    query_noise: float = 0.2  # queries = data vectors + this much noise
    queries: int = 1000
    rows_per_file: int = 50_000
    seed: int = 0
    max_index_memory: str = "1G"
    recall_target: float = RECALL_TARGET
    mmembed_index_key: str | None = None
    current_memory: str = field(default_factory=default_current_memory)
    autofaiss_query_ms: float = 1.0
    autofaiss_venv: str = DEFAULT_VENV
    autofaiss_timeout: float | None = None
    skip_autofaiss: bool = False
    skip_real: bool = False
    skip_synthetic: bool = False
    repeats: int = 3
    workdir: str = DEFAULT_WORKDIR
    json: bool = False

    def vectors(self) -> ClusteredVectors:
        """The blobs the synthetic image vectors are drawn from."""
        return ClusteredVectors(self.dim, self.seed, self.clusters, self.intrinsic_dim, self.spread, self.noise)

    def synthetic_params(self) -> dict[str, Any]:
        names = ("n", "dim", "clusters", "intrinsic_dim", "spread", "noise", "text_noise", "query_noise")
        return {name: getattr(self, name) for name in (*names, "queries", "rows_per_file", "seed")}


@dataclass
class Dataset:
    """Vectors both tools index: mmembed's embed dir (Parquet), autofaiss' npy dir, queries and exact top-k."""

    name: str
    description: str
    embed_dir: Path
    npy_dir: Path
    count: int
    dim: int
    queries: np.ndarray
    truth: np.ndarray


@dataclass
class SideResult:
    """One tool's figures on one data set (None where not measured)."""

    tool: str
    error: str | None = None
    index_key: str | None = None
    search_params: str | None = None
    build_s: float | None = None  # one (the image) index
    build_s_both: float | None = None  # mmembed only: image + text indexes
    process_s: float | None = None
    peak_rss_bytes: int | None = None
    index_bytes: int | None = None
    recall_at_10: float | None = None
    qps_batch: float | None = None
    qps_one_per_call: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- vectors


def gaussian(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Isotropic gaussian rows with expected norm ~1."""
    return rng.standard_normal((rows, dim), dtype=np.float32) / np.float32(np.sqrt(dim))


def write_synthetic(cfg: BenchConfig, folder: Path) -> list[Path]:
    """Generate the vectors block by block into Parquet (both columns) and npy (image); returns npy paths."""
    blobs = cfg.vectors()
    model = blobs.model()
    provenance = encoder_provenance(cfg.dim, model="synthetic-blobs", seed=cfg.seed, trained=True)
    (folder / "embed" / "embeddings").mkdir(parents=True)
    (folder / "npy").mkdir()
    npy_paths = []
    for block, start in enumerate(range(0, cfg.n, cfg.rows_per_file)):
        rows = min(cfg.rows_per_file, cfg.n - start)
        image = blobs.block(model, rows, np.random.default_rng([cfg.seed, 1, block]))
        text_rng = np.random.default_rng([cfg.seed, 3, block])
        text = unit(image + cfg.text_noise * gaussian(text_rng, rows, cfg.dim))
        shard = f"shard-{block:05d}"
        path = folder / "embed" / "embeddings" / f"{shard}.parquet"
        write_shard(path, shard, image, text, provenance, height=np.full(rows, 64), text_fields=False)
        npy_paths.append(folder / "npy" / f"emb-{block:05d}.npy")
        np.save(npy_paths[-1], image)
        say(f"  wrote {start + rows:,}/{cfg.n:,} vectors")
    return npy_paths


def gather(npy_paths: list[Path], rows: np.ndarray) -> np.ndarray:
    """Rows (sorted global ids) of the concatenation of ``npy_paths``, read through memory maps."""
    out, start = [], 0
    for path in npy_paths:
        block = np.load(path, mmap_mode="r")
        picked = rows[(rows >= start) & (rows < start + len(block))] - start
        out.append(np.asarray(block[picked], dtype=np.float32))
        start += len(block)
    return np.concatenate(out)


def make_queries(cfg: BenchConfig, npy_paths: list[Path]) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 2])
    rows = np.sort(rng.choice(cfg.n, size=min(cfg.queries, cfg.n), replace=False))
    return unit(gather(npy_paths, rows) + cfg.query_noise * gaussian(rng, len(rows), cfg.dim))


def exact_top_k(queries: np.ndarray, npy_paths: list[Path], k: int) -> np.ndarray:
    """Exact inner-product top-k row ids by brute force over the npy blocks (independent of both tools)."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    start = 0
    for path in npy_paths:
        block = np.ascontiguousarray(np.load(path, mmap_mode="r"), dtype=np.float32)
        scores, ids = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(ids >= 0, ids + start, -1))
        start += len(block)
    heap.finalize()
    return heap.I


def prepare_synthetic(cfg: BenchConfig) -> Dataset:
    """Generate (or reuse) the synthetic set, its queries and exact top-k under ``workdir``."""
    params = cfg.synthetic_params()
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cfg.workdir) / f"synth-{cfg.n}x{cfg.dim}-{tag}"
    marker = folder / "complete.json"
    if marker.is_file():
        say(f"synthetic data: reusing {folder}")
    else:
        say(f"synthetic data: generating {cfg.n:,} x {cfg.dim} into {folder}")
        shutil.rmtree(folder, ignore_errors=True)
        began = time.perf_counter()
        npy_paths = write_synthetic(cfg, folder)
        queries = make_queries(cfg, npy_paths)
        say("synthetic data: exact top-10 of the queries (brute force)")
        np.save(folder / "queries.npy", queries)
        np.save(folder / "truth.npy", exact_top_k(queries, npy_paths, K))
        marker.write_text(json.dumps({**params, "seconds": round(time.perf_counter() - began, 1)}))
    blobs = f"{cfg.intrinsic_dim}-d anisotropic" if cfg.intrinsic_dim > 0 else "isotropic"
    return Dataset(
        name="synthetic",
        description=(
            f"synthetic {cfg.n:,} x {cfg.dim}: {cfg.clusters} {blobs} gaussian blobs (spread {cfg.spread}, "
            f"noise {cfg.noise}), {cfg.queries} perturbed data vectors as queries"
        ),
        embed_dir=folder / "embed",
        npy_dir=folder / "npy",
        count=cfg.n,
        dim=cfg.dim,
        queries=np.load(folder / "queries.npy"),
        truth=np.load(folder / "truth.npy"),
    )


def read_columns(embed_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The image and text vectors of an embed output dir, in row-id order (sorted file names)."""
    image, text = [], []
    for path in sorted((embed_dir / "embeddings").glob("*.parquet")):
        table = pq.read_table(path, columns=["image_embedding", "text_embedding"])
        for column, out in (("image_embedding", image), ("text_embedding", text)):
            values = table.column(column).combine_chunks()
            out.append(values.flatten().to_numpy().reshape(len(values), -1).astype(np.float32))
    return np.concatenate(image), np.concatenate(text)


def prepare_real(cfg: BenchConfig) -> Dataset:
    """Run the embed job on the demo photos (once per workdir); queries = caption embeddings (text -> image)."""
    folder = Path(cfg.workdir) / "real"
    if (folder / "complete.json").is_file():
        say(f"real embeddings: reusing {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
        say("real embeddings: embed job (mmembed-tiny, offline) on the demo photos")
        proc = run_function("benchmarks.index_bench:child_embed_demo", str(folder), log=log_path(cfg, "embed-demo"))
        proc.check()
        image, _ = read_columns(folder / "embed")
        (folder / "npy").mkdir()
        np.save(folder / "npy" / "emb-00000.npy", image)
        (folder / "complete.json").write_text(json.dumps({"embed_s": round(proc.wall_s, 1)}))
    image, text = read_columns(folder / "embed")
    return Dataset(
        name="real",
        description=(
            f"real embed-job output: {len(image)} demo photos x {image.shape[1]}-d (mmembed-tiny, random init); "
            f"the {len(text)} caption embeddings as queries (text -> image)"
        ),
        embed_dir=folder / "embed",
        npy_dir=folder / "npy",
        count=len(image),
        dim=image.shape[1],
        queries=np.ascontiguousarray(text),
        truth=exact_top_k(np.ascontiguousarray(text), [folder / "npy" / "emb-00000.npy"], min(K, len(image))),
    )


# ------------------------------------------------------------------------------------- child processes


def log_path(cfg: BenchConfig, name: str) -> Path:
    return Path(cfg.workdir) / "logs" / f"{name}.log"


class _Milestones(logging.Handler):
    """Keeps (time, message) of every record, to read when the library saved each index."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.created, record.getMessage()))

    def first(self, prefix: str) -> float | None:
        return next((t for t, message in self.records if message.startswith(prefix)), None)


def child_mmembed_build(args: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process (``run_function``, which reads its peak RSS right after): one ``build_index`` call,
    timed, with the time each index file was saved."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    marks = _Milestones()
    logging.getLogger("mmembed.index").addHandler(marks)
    config = IndexBuildConfig(
        embeddings_dir=args["embeddings_dir"],
        out_dir=args["out_dir"],
        max_index_memory=args["max_index_memory"],
        recall_target=args["recall_target"],
        index_key=args["index_key"],
        device="cpu",
        overwrite=True,
    )
    began = time.time()
    infos = build_index(config)
    ended = time.time()
    # job._build_one logs "<modality>.index: <key>, params ..., {metrics}" right after saving each index.
    saved = {modality: marks.first(f"{name}: ") for modality, name in INDEX_FILES.items()}
    image_s = saved["image"] - began if saved["image"] else None
    text_s = saved["text"] - saved["image"] if saved["text"] and saved["image"] else None
    return {"build_s": ended - began, "image_s": image_s, "text_s": text_s, "infos": infos}


def child_embed_demo(folder: str) -> dict[str, Any]:
    """In a fresh process (``run_function``): demo photos -> tar shards -> the embed job (tiny model, CPU, offline)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mmembed.config import EmbedJobConfig, EncoderConfig
    from mmembed.embed.job import run_job
    from mmembed.makeshards import ShardSpec, samples_from_folder, write_shards
    from tests.photos import write_photo_folder

    root = Path(folder)
    write_photo_folder(root / "images")
    spec = ShardSpec(out=str(root / "shards"), samples_per_shard=32)
    shards = write_shards(samples_from_folder(root / "images"), spec)
    encoder = EncoderConfig(model="mmembed-tiny", random_init=True, device="cpu")  # offline: bundled, random weights
    config = EmbedJobConfig(shards=tuple(shards["shards"]), out=str(root / "embed"), encoder=encoder)
    summary = run_job(config)
    return {"samples": shards["samples"], "summary": {k: v for k, v in summary.items() if k != "provenance"}}


# ---------------------------------------------------------------------------------------------- search


def measure_search(search: Callable[[np.ndarray, int], tuple], data: Dataset, repeats: int) -> dict[str, float]:
    """Single-thread recall@10 and queries/s: a warm-up pass, timed batch searches, then one query per call."""
    k = data.truth.shape[1]
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        search(data.queries, k)  # warm-up: pages in memory-mapped lists, first-call allocations
        times, found = [], None
        for _ in range(max(1, repeats)):
            began = time.perf_counter()
            _, found = search(data.queries, k)
            times.append(time.perf_counter() - began)
        began = time.perf_counter()
        for row in data.queries:
            search(row[None, :], k)
        one_per_call = time.perf_counter() - began
    finally:
        faiss.omp_set_num_threads(previous)
    return {
        "recall_at_10": recall_at_k(found, data.truth, K),
        "qps_batch": len(data.queries) / statistics.median(times),
        "qps_one_per_call": len(data.queries) / one_per_call,
    }


# --------------------------------------------------------------------------------------------- mmembed


def run_mmembed(cfg: BenchConfig, data: Dataset, out_dir: Path) -> SideResult:
    args = {
        "embeddings_dir": str(data.embed_dir),
        "out_dir": str(out_dir),
        "max_index_memory": cfg.max_index_memory,
        "recall_target": cfg.recall_target,
        "index_key": cfg.mmembed_index_key,
    }
    log = log_path(cfg, f"{data.name}-mmembed-build")
    say(f"{data.name}: mmembed build_index (log: {log})")
    proc = run_function("benchmarks.index_bench:child_mmembed_build", args, log=log)
    if not proc.ok:
        return SideResult("mmembed", error=f"build failed: {proc.error}")
    result = proc.result
    infos = result["infos"]
    image, text = infos["indexes"]["image"], infos["indexes"]["text"]
    say(f"{data.name}: mmembed built {infos['index_key']} in {result['build_s']:.1f}s; measuring search")
    index_set = load_index(out_dir)
    return SideResult(
        tool="mmembed",
        index_key=infos["index_key"],
        search_params=image["search_params"] or "(none)",
        build_s=result["image_s"],
        build_s_both=result["build_s"],
        process_s=proc.wall_s,
        peak_rss_bytes=proc.measured.peak_rss_bytes,
        index_bytes=image["file_bytes"],
        **measure_search(index_set.image.search, data, cfg.repeats),
        details={
            "choice_reason": infos["choice_reason"],
            "estimated_memory_bytes": infos["estimated_memory_bytes"],
            "image": {k: image[k] for k in ("train_seconds", "add_seconds", "tuning_recall_at_10", "tuning_trials")},
            "text": {k: text[k] for k in ("train_seconds", "add_seconds", "tuning_recall_at_10", "file_bytes")},
            "text_s": result["text_s"],
            "library_build_seconds": infos["build_seconds"],
            "library_peak_memory_bytes": infos["peak_memory_bytes"],
            "load_avg_1min_before_after": proc.load,
        },
    )


# ------------------------------------------------------------------------------------------- autofaiss


def ensure_autofaiss_venv(venv: Path, log: Path) -> tuple[Path | None, str]:
    """The autofaiss venv's python (created on first use), or None and why it could not be made."""
    python, stamp = venv / "bin" / "python", venv / ".mmembed-bench-ready"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if stamp.is_file() and python.is_file():
        made_from, _, versions = stamp.read_text().partition("\n")
        if made_from == wanted:
            return python, versions.strip()
    say(f"autofaiss: creating {venv} (pip install -r {REQUIREMENTS.name}; log: {log})")
    log.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
    ]
    with open(log, "w") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, env=autofaiss_env()).returncode != 0:
                return None, f"could not set up the autofaiss environment ({' '.join(step)} failed; see {log})"
    probe = "import autofaiss, faiss, numpy; print(autofaiss.__version__, faiss.__version__, numpy.__version__)"
    check = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=autofaiss_env())
    if check.returncode != 0:
        return None, f"autofaiss does not import in {venv}: {check.stderr.strip()[-500:]}"
    versions = "autofaiss {} / faiss-cpu {} / numpy {}".format(*check.stdout.split())
    stamp.write_text(f"{wanted}\n{versions}\n")
    return python, versions


def autofaiss_env() -> dict[str, str]:
    """The children's environment with only the repository on the path (for ``benchmarks.harness`` and
    ``benchmarks.autofaiss_build``): nothing of this virtualenv leaks into the autofaiss one."""
    env = child_env()
    env["PYTHONPATH"] = str(REPO)
    return env


def run_autofaiss(cfg: BenchConfig, data: Dataset, out_dir: Path, python: Path) -> SideResult:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    args = {
        "embeddings": str(data.npy_dir),
        "index_path": str(out_dir / "knn.index"),
        "infos_path": str(out_dir / "infos.json"),
        "max_index_memory": cfg.max_index_memory,
        "current_memory": cfg.current_memory,
        "query_ms": cfg.autofaiss_query_ms,
        "k": K,
        "cores": os.cpu_count() or 1,
    }
    log = log_path(cfg, f"{data.name}-autofaiss-build")
    say(f"{data.name}: autofaiss build_index (log: {log})")
    proc: ChildRun = run_function(
        "benchmarks.autofaiss_build:build",
        args,
        log=log,
        timeout=cfg.autofaiss_timeout,
        env=autofaiss_env(),
        python=python,
    )
    if not proc.ok:
        return SideResult("autofaiss", error=f"build failed: {proc.error}")
    result = proc.result
    if not result["ok"]:
        return SideResult("autofaiss", error=f"build_index returned no index; see {log}")
    infos = result["infos"]
    say(f"{data.name}: autofaiss built {infos['index_key']} in {proc.measured.wall_s:.1f}s; measuring search")
    index = faiss.read_index(str(out_dir / "knn.index"))
    if infos.get("index_param"):
        faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
    return SideResult(
        tool="autofaiss",
        index_key=infos["index_key"],
        search_params=infos.get("index_param") or "(none)",
        build_s=proc.measured.wall_s,
        process_s=proc.wall_s,
        peak_rss_bytes=proc.measured.peak_rss_bytes,
        index_bytes=(out_dir / "knn.index").stat().st_size,
        **measure_search(index.search, data, cfg.repeats),
        details={
            **{k: v for k, v in infos.items() if k not in ("index_key", "index_param", "index_path")},
            "load_avg_1min_before_after": proc.load,
        },
    )


# ---------------------------------------------------------------------------------------------- report


def compare(mm: SideResult, af: SideResult | None) -> dict[str, float | None]:
    af = af or SideResult("autofaiss")
    return {
        "build_1_index_mmembed_over_autofaiss": ratio(mm.build_s, af.build_s),
        "build_both_mmembed_over_autofaiss": ratio(mm.build_s_both, af.build_s),
        "qps_batch_mmembed_over_autofaiss": ratio(mm.qps_batch, af.qps_batch),
        "index_bytes_mmembed_over_autofaiss": ratio(mm.index_bytes, af.index_bytes),
        "peak_rss_mmembed_over_autofaiss": ratio(mm.peak_rss_bytes, af.peak_rss_bytes),
    }


def targets(mm: SideResult, af: SideResult | None) -> dict[str, bool | None]:
    faster = None if af is None or af.build_s is None or mm.build_s is None else mm.build_s <= af.build_s
    return {
        f"recall@10 >= {RECALL_TARGET}": None if mm.recall_at_10 is None else mm.recall_at_10 >= RECALL_TARGET,
        f"qps (1 thread, batch) >= {QPS_TARGET:,.0f}": None if mm.qps_batch is None else mm.qps_batch >= QPS_TARGET,
        "build (1 index) <= autofaiss at the same memory budget": faster,
    }


def table_rows(side: SideResult) -> list[str]:
    return [
        fmt(side.index_key),
        fmt(side.search_params),
        fmt(side.build_s, ".1f"),
        fmt(side.build_s_both, ".1f"),
        fmt(side.process_s, ".1f"),
        fmt(side.peak_rss_bytes and side.peak_rss_bytes / MIB, ",.0f"),
        fmt(side.index_bytes and side.index_bytes / MIB, ",.1f"),
        fmt(side.recall_at_10, ".4f"),
        fmt(side.qps_batch, ",.0f"),
        fmt(side.qps_one_per_call, ",.0f"),
        " / ".join(f"{x:.1f}" for x in side.details.get("load_avg_1min_before_after") or ()) or "-",
    ]


LABELS = [
    "index key",
    "search params",
    "build s (1 index: image)",
    "build s (image + text)",
    "child process wall s",
    "peak RSS MiB",
    "index MiB (file)",
    "recall@10 vs exact",
    "queries/s 1 thread, batch",
    "queries/s 1 thread, 1 per call",
    "load avg 1 min before / after build",
]


def print_dataset(data: Dataset, sides: dict[str, SideResult | None], cfg: BenchConfig) -> None:
    print(f"\n== {data.description}")
    print(f"   memory budget {cfg.max_index_memory} for both; recall and queries/s on the image index")
    shown = {name: side for name, side in sides.items() if side is not None}
    columns = [table_rows(side) for side in shown.values()]
    print_table(["", *shown], [[label, *(rows[i] for rows in columns)] for i, label in enumerate(LABELS)], "   ")
    for name, side in shown.items():
        if side.error:
            print(f"   {name}: {side.error}")
    mm = sides["mmembed"]
    if mm is not None and mm.details:
        image, text = mm.details["image"], mm.details["text"]
        print(f"   mmembed choice: {mm.details['choice_reason']}")
        print(
            f"   mmembed per index: image train {image['train_seconds']}s add {image['add_seconds']}s, "
            f"text train {text['train_seconds']}s add {text['add_seconds']}s; "
            f"text index saved {fmt(mm.details['text_s'], '.1f')}s after the image index"
        )
        print(f"   mmembed tuning trials (image): {image['tuning_trials']}")


def print_report(cfg: BenchConfig, report: dict[str, Any], datasets: dict[str, Dataset]) -> None:
    print("\nmmembed index benchmark vs autofaiss", f"({report['autofaiss_env']})")
    print(f"{machine_line()}; OMP_WAIT_POLICY=PASSIVE in every process")
    for name, data in datasets.items():
        entry = report["datasets"][name]
        sides = {tool: SideResult(**entry[tool]) if entry[tool] else None for tool in ("mmembed", "autofaiss")}
        print_dataset(data, sides, cfg)
        print("   ratios mmembed / autofaiss: " + ", ".join(f"{k} {fmt(v, '.2f')}" for k, v in entry["ratios"].items()))
        if name == "synthetic":
            print("   targets: " + "; ".join(f"{k}: {verdict(v)}" for k, v in entry["targets"].items()))


def run_dataset(cfg: BenchConfig, data: Dataset, autofaiss_python: Path | None) -> dict[str, Any]:
    runs = Path(cfg.workdir) / "runs" / data.name
    mm = run_mmembed(cfg, data, runs / "mmembed")
    af = run_autofaiss(cfg, data, runs / "autofaiss", autofaiss_python) if autofaiss_python else None
    return {
        "description": data.description,
        "mmembed": asdict(mm),
        "autofaiss": asdict(af) if af else None,
        "ratios": compare(mm, af),
        "targets": targets(mm, af),
    }


def run(cfg: BenchConfig) -> dict[str, Any]:
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    python, env_note = None, "autofaiss skipped (--skip-autofaiss)"
    if not cfg.skip_autofaiss:
        python, env_note = ensure_autofaiss_venv(Path(cfg.autofaiss_venv), log_path(cfg, "autofaiss-venv"))
        if python is None:
            say(f"autofaiss: {env_note}; continuing with the mmembed figures only")
    datasets = {}
    if not cfg.skip_synthetic:
        datasets["synthetic"] = prepare_synthetic(cfg)
    if not cfg.skip_real:
        datasets["real"] = prepare_real(cfg)
    report = {
        "config": asdict(cfg),
        "autofaiss_env": env_note,
        "datasets": {name: run_dataset(cfg, data, python) for name, data in datasets.items()},
    }
    print_report(cfg, report, datasets)
    if cfg.json:
        print(json.dumps(report, indent=2, default=str))
    return report


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=d.n, help="synthetic vector count")
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--clusters", type=int, default=d.clusters)
    p.add_argument("--intrinsic-dim", type=int, default=d.intrinsic_dim, help="blob subspace dim; 0: isotropic")
    p.add_argument("--spread", type=float, default=d.spread)
    p.add_argument("--noise", type=float, default=d.noise)
    p.add_argument("--queries", type=int, default=d.queries)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-index-memory", default=d.max_index_memory, help="index RAM budget for both tools ('1G')")
    p.add_argument("--recall-target", type=float, default=d.recall_target, help="mmembed's tuning target")
    p.add_argument("--mmembed-index-key", help="force mmembed's faiss factory string (e.g. autofaiss' choice)")
    p.add_argument("--current-memory", default=d.current_memory, help="autofaiss current_memory_available")
    p.add_argument("--autofaiss-query-ms", type=float, default=d.autofaiss_query_ms)
    p.add_argument("--autofaiss-venv", default=d.autofaiss_venv)
    p.add_argument("--autofaiss-timeout", type=float, help="seconds before the autofaiss build is given up")
    p.add_argument("--skip-autofaiss", action="store_true")
    p.add_argument("--skip-real", action="store_true", help="skip the embed-job (real embeddings) part")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed batch searches (median)")
    p.add_argument("--workdir", default=d.workdir, help="data, indexes and logs (data is reused across runs)")
    p.add_argument("--json", action="store_true", help="also print the whole report as JSON")
    a = p.parse_args(argv)
    return BenchConfig(**{k: v for k, v in vars(a).items() if k in BenchConfig.__dataclass_fields__ and v is not None})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    passive_openmp(__file__, argv)
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
