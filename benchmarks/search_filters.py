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

``--index-key HNSW32`` measures the same for an HNSW index: there widening raises ``efSearch`` by 1 / the
admitted fraction (at most ``MAX_EF_SEARCH``) instead of ``nprobe``.

``--index DIR`` runs the latency table on an existing ``mmembed index`` output instead (e.g. ``demo/index``,
written by ``mmembed demo``) through ``Searcher.search_text``: queries are a few consecutive words (up to
``QUERY_WORDS``) of captions drawn from the index itself (seeded), so vector and hybrid latency include
encoding the query with the index's recorded model (its time alone is reported too, as "encode"), keyword
latency does not. Filters derived from the ids table, so they fit any index: broad ``width >= <median
width>``; selective a ``metadata->>'field' = 'value'`` condition admitting 1-5 % of the rows (the value
nearest 2 %), else a ``key BETWEEN ... AND ...`` range of about 2 % of the keys. No recall there (it needs the
stored vectors; the synthetic mode measures it).

Run it from the repository root; ``--n 200000`` finishes in a few minutes on the 2-core dev machine::

    .venv/bin/python benchmarks/search_filters.py --n 200000
    .venv/bin/python benchmarks/search_filters.py --n 200000 --index-key HNSW32
    .venv/bin/python benchmarks/search_filters.py --index demo/index
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: mmembed and tests

from benchmarks.harness import fmt, machine, machine_line, measure, percentile, print_table, say  # noqa: E402
from mmembed.index import IndexBuildConfig, build_index  # noqa: E402
from mmembed.index.evaluate import recall_at_k  # noqa: E402
from mmembed.index.selection import _selector_params  # noqa: E402
from mmembed.index.where import rows_matching  # noqa: E402
from mmembed.search import Searcher, parse_metadata  # noqa: E402
from tests.index.filtered import WORDS, write_filter_dir, zipf_words  # noqa: E402
from tests.index.synth import blobs  # noqa: E402

SELECTIVE = "json_extract(metadata, '$.n')::INT = 7"
VOCABULARY = (*WORDS, *(f"w{i:04d}" for i in range(2000)))  # Zipf-distributed: a few words in most captions
BROAD = "metadata->>'src' IN ('flickr', 'coco')"
K = 10
QUERY_WORDS = 3  # --index: a query is up to this many consecutive words of a caption
SELECTIVE_SHARE = (0.01, 0.05, 0.02)  # --index: a selective filter admits this share of rows (low, high, aim)
METADATA_SAMPLE = 100_000  # --index: rows whose json metadata is read to find a selective value


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


def where_costs(searcher: Searcher, filters: dict[str, str]) -> dict[str, float]:
    """Milliseconds of DuckDB's one-off evaluation of each condition, which the Searcher then keeps (as in the
    server), so the latencies after it are of cached conditions."""
    rows_matching(searcher.index, "row_id >= 0")  # DuckDB's first query sets it up: not a condition's cost
    costs = {}
    for name, expr in filters.items():
        with measure() as m:
            rows_matching(searcher.index, expr)
        costs[name] = round(m.wall_s * 1000, 1)
        searcher.rows_where(expr)  # cached from here on, as in the server
    return costs


def latency(query: Callable[[int, str, str | None], Any], count: int, filters: dict[str, str]) -> dict[str, Any]:
    """p50 / p99 of each query kind: plain, selective- and broad-filtered vector; plain and selective-filtered
    keyword and hybrid. ``query(i, mode, where)`` runs query ``i``; ``filters`` is {name: condition}, the
    selective one first."""
    (selective, selective_expr), (broad, broad_expr) = filters.items()
    kinds = {
        "vector": ("vector", None),
        f"vector where {selective}": ("vector", selective_expr),
        f"vector where {broad}": ("vector", broad_expr),
        "keyword": ("keyword", None),
        f"keyword where {selective}": ("keyword", selective_expr),
        "hybrid": ("hybrid", None),
        f"hybrid where {selective}": ("hybrid", selective_expr),
    }
    return {
        name: timed([lambda i=i, m=mode, w=where: query(i, m, w) for i in range(count)])
        for name, (mode, where) in kinds.items()
    }


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


def synthetic_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Latency and filtered recall on the synthetic set of ``--n`` samples (built once under ``--workdir``)."""
    index_dir, image = prepare(args)
    searcher = Searcher.from_dir(index_dir)
    rng = np.random.default_rng(args.seed + 3)
    picked = rng.choice(args.n, args.queries, replace=False)
    noisy = image[picked] + 0.3 * rng.normal(size=(args.queries, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    queries = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    drawn = zipf_words(rng, VOCABULARY, (args.queries, 2))
    words = [" ".join(VOCABULARY[w] for w in pair) for pair in drawn]

    def query(i: int, mode: str, where: str | None) -> Any:
        if mode == "vector":
            return searcher.search_vectors(queries[i][None], K, where=where)
        vectors = None if mode == "keyword" else queries[i][None]
        return searcher.search_encoded([words[i]], vectors, K, where=where, mode=mode)

    filters = {"1%": SELECTIVE, "50%": BROAD}
    where_eval = where_costs(searcher, filters)
    infos = searcher.index.infos
    return {
        "n": args.n,
        "dim": args.dim,
        "index_key": infos["index_key"],
        "search_params": infos["indexes"]["image"]["search_params"],
        "queries": args.queries,
        "where_eval_ms": where_eval,
        "latency": latency(query, args.queries, filters),
        "recall": {
            "no filter": filtered_recall(searcher, image, queries, None),
            "where 1%": filtered_recall(searcher, image, queries, SELECTIVE),
            "where 50%": filtered_recall(searcher, image, queries, BROAD),
        },
    }


def sql_text(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def broad_filter(ids: pa.Table, where: str) -> str:
    """``width >= <median width>``: at least half the rows (all of them where every image has one size)."""
    if "width" not in ids.column_names:
        fix = "mmembed index --embeddings EMB --out DIR --overwrite"
        raise SystemExit(f"{where} predates the width column; rebuild it: {fix}")
    widths = ids.column("width").drop_null().to_numpy()
    return f"width >= {int(np.median(widths))}"


def selective_filter(ids: pa.Table, rng: np.random.Generator) -> str:
    """A condition admitting about 1-5 % of the rows: ``metadata->>'field' = 'value'`` for the top-level json
    field value whose share (in a seeded sample of rows) is nearest 2 % within that range, else a ``key`` range
    of about 2 % of the sorted keys at a seeded place."""
    low, high, aim = SELECTIVE_SHARE
    n = ids.num_rows
    if "metadata" in ids.column_names:
        sample = np.sort(rng.choice(n, min(n, METADATA_SAMPLE), replace=False))
        counts: Counter[tuple[str, str]] = Counter()
        for text in ids.column("metadata").take(pa.array(sample)).to_pylist():
            value = parse_metadata(text)
            if isinstance(value, dict):
                counts.update(
                    (str(field), str(v))
                    for field, v in value.items()
                    if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))
                )
        shares = {pair: count / len(sample) for pair, count in counts.items()}
        fitting = sorted((abs(share - aim), pair) for pair, share in shares.items() if low <= share <= high)
        if fitting:
            field, value = fitting[0][1]
            return f"metadata->>{sql_text(field)} = {sql_text(value)}"
    keys = ids.column("key").combine_chunks()
    ordered = keys.take(pc.array_sort_indices(keys))
    span = max(1, round(aim * n))
    start = int(rng.integers(0, n - span + 1))
    first, last = ordered[start].as_py(), ordered[start + span - 1].as_py()
    return f"key BETWEEN {sql_text(first)} AND {sql_text(last)}"


def caption_queries(ids: pa.Table, count: int, rng: np.random.Generator, where: str) -> list[str]:
    """``count`` queries: up to ``QUERY_WORDS`` consecutive words at a seeded place in seeded captions."""
    captions = ids.column("caption")
    usable = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(captions)), 0), False)
    rows = np.flatnonzero(usable.to_numpy())
    if not len(rows):
        raise SystemExit(f"{where} has no captions: --index needs captioned samples for keyword and hybrid queries")
    picked = rng.choice(rows, count, replace=len(rows) < count)
    queries = []
    for caption in captions.take(pa.array(picked)).to_pylist():
        words = caption.split()
        start = int(rng.integers(0, max(1, len(words) - QUERY_WORDS + 1)))
        queries.append(" ".join(words[start : start + QUERY_WORDS]))
    return queries


def index_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Latency on an existing index dir (``--index``): text queries from its captions, encoded by its model."""
    import torch

    torch.set_num_threads(args.torch_threads)
    searcher = Searcher.from_dir(args.index)
    ids = searcher.index.ids
    rng = np.random.default_rng(args.seed)
    filters = {"selective": selective_filter(ids, rng), "broad": broad_filter(ids, f"index {args.index}")}
    texts = caption_queries(ids, args.queries, rng, f"index {args.index}")
    where_eval = where_costs(searcher, filters)
    with measure() as loaded:
        encoder = searcher.encoder
    encode = timed([lambda t=t: encoder.encode_texts([t]) for t in texts])

    def query(i: int, mode: str, where: str | None) -> Any:
        return searcher.search_text(texts[i], K, where=where, mode=mode)

    infos = searcher.index.infos
    provenance = infos.get("provenance", {})
    return {
        "index": str(args.index),
        "n": searcher.index.count,
        "index_key": infos["index_key"],
        "search_params": infos["indexes"]["image"]["search_params"],
        "model": provenance.get("model"),
        "device": encoder.encoder.device,
        "torch_threads": args.torch_threads,
        "queries": args.queries,
        "query_examples": texts[:3],
        "filters": {
            name: {"where": expr, "admitted": round(float(searcher.rows_where(expr).mean()), 4)}
            for name, expr in filters.items()
        },
        "where_eval_ms": where_eval,
        "model_load_s": round(loaded.wall_s, 2),
        "encode": encode,
        "latency": latency(query, args.queries, filters),
    }


def print_figures(figures: dict[str, Any]) -> None:
    """The figures as text: what was measured, then the latency table and (synthetic mode) the recall table."""
    start = figures["machine"]["start"]
    if "index" in figures:
        print(
            f"index {figures['index']}: {figures['n']:,} rows, {figures['index_key']} ({figures['search_params']}), "
            f"model {figures['model']} on {figures['device']}; {figures['queries']} caption queries, e.g. "
            f"{figures['query_examples']}"
        )
        print(f"{machine_line(start)}; one faiss thread, {figures['torch_threads']} torch thread(s)")
        for name, chosen in figures["filters"].items():
            print(f"{name} filter: {chosen['where']} (admits {chosen['admitted']:.2%} of the rows)")
        print(f"model load {figures['model_load_s']} s (once)")
    else:
        print(
            f"{figures['n']:,} x {figures['dim']}-d, {figures['index_key']} ({figures['search_params']}), "
            f"{figures['queries']} queries"
        )
        print(f"{machine_line(start)}; one faiss thread")
    print(f"where eval (DuckDB, once per condition, then cached): {figures['where_eval_ms']} ms")
    timings = dict(figures["latency"])
    if "encode" in figures:
        timings["encode (in vector, hybrid)"] = figures["encode"]
    rows = [[name, fmt(row["p50_ms"], ".3f"), fmt(row["p99_ms"], ".3f")] for name, row in timings.items()]
    print_table(["query kind", "p50 ms", "p99 ms"], rows, indent="")
    if "recall" in figures:
        rows = [
            [name, *(fmt(row.get(figure), ".4f") for figure in ("admitted", "recall@10", "recall@10 no widening"))]
            for name, row in figures["recall"].items()
        ]
        print_table(["recall@10 vs exact", "admitted", "recall", "no widen"], rows, indent="")


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
    parser.add_argument(
        "--index",
        metavar="DIR",
        help="an existing `mmembed index` output (e.g. demo/index): latency of caption-word text queries there "
        "instead of the synthetic set (--n, --dim, --centres, --index-key, --max-train, --rows-per-file unused)",
    )
    parser.add_argument("--torch-threads", type=int, default=1, help="--index: threads of the query model")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    faiss.omp_set_num_threads(1)
    before = machine()
    figures = index_figures(args) if args.index else synthetic_figures(args)
    figures = {"machine": {"start": before, "end": machine()}, **figures}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
