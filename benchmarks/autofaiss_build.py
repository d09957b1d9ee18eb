"""One autofaiss ``build_index`` call, run by ``benchmarks/index_bench.py`` through ``harness.run_function`` inside
the autofaiss virtualenv (numpy<2): imports nothing of mmembed, so that environment needs only autofaiss. Imported
before the call is timed, so its seconds leave the imports out (its peak RSS holds them, as mmembed's does)."""

from __future__ import annotations

from typing import Any

from autofaiss import build_index


def build(args: dict[str, Any]) -> dict[str, Any]:
    """autofaiss' index and infos for ``args`` (paths, memory budget, query-time bound, k, cores)."""
    index, infos = build_index(
        embeddings=args["embeddings"],
        index_path=args["index_path"],
        index_infos_path=args["infos_path"],
        max_index_memory_usage=args["max_index_memory"],
        current_memory_available=args["current_memory"],
        max_index_query_time_ms=args["query_ms"],
        min_nearest_neighbors_to_retrieve=args["k"],
        metric_type="ip",
        nb_cores=args["cores"],
    )
    return {"ok": index is not None, "infos": infos}
