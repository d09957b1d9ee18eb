"""Search filters benchmark: latency of plain, filtered (``where``), keyword and hybrid queries side by side, and
recall of filtered IVF search against exact search over the same filtered rows.

It PRINTS figures (it is not a pass/fail test). Data: ``--n`` synthetic samples (default 1,000,000) of
``--dim``-d clustered unit vectors (``tests.index.synth.blobs``) with captions from a small vocabulary, json
metadata (``src`` one of 4 sources, ``n`` 0..99) and random sizes (``tests.index.filtered``), written as the
embed job's Parquet files and indexed by ``build_index`` with ``--index-key`` (default ``IVF1024,Flat``: the
filtered-IVF case; tuned for recall 0.95 as usual). Generated and built once per parameter set under
``--workdir`` and reused.

Queries (``--queries``, seeded): data vectors plus a small gaussian perturbation, and two-word keyword queries
drawn like the captions' words (Zipf over a 2,040-word vocabulary: the commonest word is in half the
captions, as "the" is in real ones). Each kind is timed one query per call through ``mmembed.search.Searcher``
with ONE faiss thread, after a warm-up; nearest-rank p50 and p99 in milliseconds (``benchmarks.harness``). Kinds:

* vector: plain image-index search; filtered 1 %: ``json_extract(metadata, '$.n')::INT = 7``; filtered 50 %:
  ``metadata->>'src' IN ('flickr', 'coco')`` (the condition's row set is evaluated once and cached by the
  Searcher, as in the server: its one-off DuckDB cost is reported as "where eval");
* keyword (BM25 over captions), keyword under the 1 % filter, hybrid (vector + keyword, reciprocal rank fusion),
  hybrid under the 1 % filter.

Recall: 10-recall@10 of the IVF search (tuned parameters) against exact inner-product search over the rows
the condition admits (faiss ``knn`` brute force over those rows' stored vectors), for no filter, the 1 % and the
50 % filter; "no widening" repeats the filtered searches with the IVF probes not widened for the filter's
selectivity (``mmembed.index.selection``), to show what widening buys.

Run it from the repository root; ``--n 200000`` finishes in a few minutes on the 2-core dev machine::

    .venv/bin/python benchmarks/search_filters.py --n 200000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: mmembed and tests

from benchmarks.harness import fmt, machine, machine_line, measure, percentile, print_table, say  # noqa: E402
from mmembed.index import IndexBuildConfig, build_index  # noqa: E402
from mmembed.index.evaluate import recall_at_k  # noqa: E402
from mmembed.index.selection import _selector_params  # noqa: E402
from mmembed.index.where import rows_matching  # noqa: E402
from mmembed.search import Searcher  # noqa: E402
from tests.index.filtered import WORDS, write_filter_dir, zipf_words  # noqa: E402
from tests.index.synth import blobs  # noqa: E402

SELECTIVE = "json_extract(metadata, '$.n')::INT = 7"
VOCABULARY = (*WORDS, *(f"w{i:04d}" for i in range(2000)))  # Zipf-distributed: a few words in most captions
BROAD = "metadata->>'src' IN ('flickr', 'coco')"


def prepare(args: argparse.Namespace) -> tuple[Path, np.ndarray]:
    """The index dir for these parameters (built unless already there) and the image vectors."""
    root = Path(args.workdir) / f"v2-n{args.n}-d{args.dim}-{args.index_key.replace(',', '_')}-s{args.seed}"
    image = blobs(args.n, args.dim, args.seed, centres=args.centres)
    if not (root / "index" / "infos.json").exists():
        with measure() as wrote:
            text = blobs(args.n, args.dim, args.seed + 1, centres=args.centres)
            write_filter_dir(root / "emb", image, text, args.rows_per_file, seed=args.seed + 2, vocabulary=VOCABULARY)
        say(f"wrote {args.n:,} samples in {wrote.wall_s:.1f}s")
        config = IndexBuildConfig(
            str(root / "emb"),
            str(root / "index"),
            index_key=args.index_key,
            max_train_vectors=args.max_train,
            tune_queries=200,
            overwrite=True,
        )
        with measure() as built:
            build_index(config)
        say(f"built the index (image, text, keywords) in {built.wall_s:.1f}s")
    return root / "index", image


def timed(calls: list[Callable[[], Any]]) -> dict[str, float]:
    """p50 / p99 milliseconds of each call (one query each), after one warm-up call."""
    calls[0]()
    times = []
    for call in calls:
        with measure() as m:
            call()
        times.append(m.wall_s * 1000)
    return {"p50_ms": round(percentile(times, 50), 3), "p99_ms": round(percentile(times, 99), 3)}


def filtered_recall(searcher: Searcher, image: np.ndarray, queries: np.ndarray, where: str | None) -> dict[str, Any]:
    """Recall@10 of the image index under ``where`` (None: no filter) vs exact search over the admitted rows,
    with the probes widened for the filter (as searches run) and not."""
    index = searcher.index.image
    rows = np.ones(len(image), bool) if where is None else rows_matching(searcher.index, where)
    subset = np.flatnonzero(rows)
    _, local = faiss.knn(queries, np.ascontiguousarray(image[subset]), 10, metric=faiss.METRIC_INNER_PRODUCT)
    truth = subset[local]
    allowed = None if where is None else index.restricted(rows)
    _, found = index.search(queries, 10, allowed)
    result = {"admitted": round(float(rows.mean()), 4), "recall@10": round(recall_at_k(found, truth, 10), 4)}
    if allowed is not None:
        keep: list[Any] = []
        params = _selector_params(index.index, allowed.selector, keep, widen=1.0)
        _, plain = index.index.search(queries, 10, params=params)
        result["recall@10 no widening"] = round(recall_at_k(plain, truth, 10), 4)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="samples")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--centres", type=int, default=500, help="gaussian blobs the vectors gather in")
    parser.add_argument("--index-key", default="IVF1024,Flat")
    parser.add_argument("--max-train", type=int, default=50_000, help="k-means training vectors")
    parser.add_argument("--rows-per-file", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=str(Path.home() / ".cache" / "mmembed-bench" / "search-filters"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    faiss.omp_set_num_threads(1)
    before = machine()

    index_dir, image = prepare(args)
    searcher = Searcher.from_dir(index_dir)
    rng = np.random.default_rng(args.seed + 3)
    picked = rng.choice(args.n, args.queries, replace=False)
    noisy = image[picked] + 0.3 * rng.normal(size=(args.queries, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    queries = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    drawn = zipf_words(rng, VOCABULARY, (args.queries, 2))
    words = [" ".join(VOCABULARY[w] for w in pair) for pair in drawn]

    rows_matching(searcher.index, "row_id >= 0")  # DuckDB's first query sets it up: not a condition's cost
    where_eval = {}
    for name, expr in (("1%", SELECTIVE), ("50%", BROAD)):
        with measure() as m:
            rows_matching(searcher.index, expr)
        where_eval[name] = round(m.wall_s * 1000, 1)
        searcher.rows_where(expr)  # cached from here on, as in the server

    k = 10
    pairs = list(zip(queries, words, strict=True))
    latency = {
        "vector": timed([lambda q=q: searcher.search_vectors(q[None], k) for q in queries]),
        "vector where 1%": timed([lambda q=q: searcher.search_vectors(q[None], k, where=SELECTIVE) for q in queries]),
        "vector where 50%": timed([lambda q=q: searcher.search_vectors(q[None], k, where=BROAD) for q in queries]),
        "keyword": timed([lambda w=w: searcher.search_encoded([w], None, k, mode="keyword") for w in words]),
        "keyword where 1%": timed(
            [lambda w=w: searcher.search_encoded([w], None, k, where=SELECTIVE, mode="keyword") for w in words]
        ),
        "hybrid": timed([lambda q=q, w=w: searcher.search_encoded([w], q[None], k, mode="hybrid") for q, w in pairs]),
        "hybrid where 1%": timed(
            [
                lambda q=q, w=w: searcher.search_encoded([w], q[None], k, where=SELECTIVE, mode="hybrid")
                for q, w in pairs
            ]
        ),
    }
    recall = {
        "no filter": filtered_recall(searcher, image, queries, None),
        "where 1%": filtered_recall(searcher, image, queries, SELECTIVE),
        "where 50%": filtered_recall(searcher, image, queries, BROAD),
    }
    infos = searcher.index.infos
    figures = {
        "machine": {"start": before, "end": machine()},
        "n": args.n,
        "dim": args.dim,
        "index_key": infos["index_key"],
        "search_params": infos["indexes"]["image"]["search_params"],
        "queries": args.queries,
        "where_eval_ms": where_eval,
        "latency": latency,
        "recall": recall,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{args.n:,} x {args.dim}-d, {infos['index_key']} ({figures['search_params']}), {args.queries} queries")
    print(f"{machine_line(before)}; one faiss thread")
    print(f"where eval (DuckDB, once per condition, then cached): {where_eval} ms")
    rows = [[name, fmt(row["p50_ms"], ".3f"), fmt(row["p99_ms"], ".3f")] for name, row in latency.items()]
    print_table(["query kind", "p50 ms", "p99 ms"], rows, indent="")
    rows = [
        [name, fmt(row["admitted"], ".4f"), fmt(row["recall@10"], ".4f"), fmt(row.get("recall@10 no widening"), ".4f")]
        for name, row in recall.items()
    ]
    print_table(["recall@10 vs exact", "admitted", "recall", "no widen"], rows, indent="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
