"""What a dedup run leaves in its out dir (a local path or an object-store URL): duplicates.parquet, keep.parquet,
summary.json and a histogram of nearest-neighbour similarities for picking eps. Every file is written with
``storage.write_atomic``, so no reader ever sees a partial one."""

from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmembed import storage
from mmembed.dedup.groups import METHOD_BITS, method_names

DUPLICATES_FILE = "duplicates.parquet"
KEEP_FILE = "keep.parquet"
SUMMARY_FILE = "summary.json"
HISTOGRAM_FILE = "nearest_similarity.png"
OUTPUT_FILES = (DUPLICATES_FILE, KEEP_FILE, SUMMARY_FILE, HISTOGRAM_FILE)

DUPLICATES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("group_id", pa.int64(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("methods", pa.list_(pa.string()), nullable=False),  # methods by which it is near its kept row
        pa.field("similarity_to_kept", pa.float32(), nullable=False),  # image-embedding cosine to the kept row
    ]
)
_METHOD_LISTS = pa.array([method_names(bits) for bits in range(1 << len(METHOD_BITS))], type=pa.list_(pa.string()))
KEEP_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("shard", pa.string(), nullable=False)])


def write_parquet(url: str, table: pa.Table) -> None:
    """``table`` as one Parquet file at ``url``, atomically."""
    storage.write_atomic(url, lambda f: pq.write_table(table, f))


def write_summary(url: str, summary: dict[str, Any]) -> None:
    """``summary`` as indented JSON with sorted keys at ``url``, atomically."""
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    storage.write_bytes(url, text.encode("utf-8"))


def duplicates_table(
    key: pa.ChunkedArray,
    shard: pa.ChunkedArray,
    rows: np.ndarray,
    group: np.ndarray,
    kept: np.ndarray,
    methods: np.ndarray,
    similarity: np.ndarray,
) -> pa.Table:
    """One row per group member (``rows``), ordered by group, kept row first; ``methods`` are bitmasks."""
    order = np.lexsort((~np.asarray(kept, dtype=bool), group))
    take = pa.array(np.asarray(rows, dtype=np.int64)[order])
    return pa.table(
        {
            "key": key.take(take),
            "shard": shard.take(take),
            "group_id": pa.array(np.asarray(group, dtype=np.int64)[order]),
            "kept": pa.array(np.asarray(kept, dtype=bool)[order]),
            "methods": _METHOD_LISTS.take(pa.array(np.asarray(methods, dtype=np.int64)[order])),
            "similarity_to_kept": pa.array(np.asarray(similarity, dtype=np.float32)[order]),
        },
        schema=DUPLICATES_SCHEMA,
    )


def keep_table(key: pa.ChunkedArray, shard: pa.ChunkedArray, keep: np.ndarray) -> pa.Table:
    """Every surviving row's (key, shard), in row order: the full keep list, non-duplicates included."""
    take = pa.array(np.flatnonzero(keep))
    return pa.table({"key": key.take(take), "shard": shard.take(take)}, schema=KEEP_SCHEMA)


def write_histogram(url: str, nearest: np.ndarray, eps: float, source: str) -> dict[str, Any]:
    """Histogram of each vector's best cosine to another vector, with 1 - eps marked, so a user can see where
    the duplicate mass starts and pick eps; returns the plotted counts."""
    values = np.asarray(nearest, dtype=np.float64)
    values = values[np.isfinite(values)]
    threshold = 1.0 - eps
    above = int(np.count_nonzero(values > threshold))
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if len(values):
        axes.hist(values, bins=100, range=(min(float(values.min()), threshold - 0.05), 1.0), color="#4477aa", log=True)
    axes.axvline(threshold, color="#cc3311", linestyle="--", label=f"1 - eps = {threshold:.3f} ({above} above)")
    axes.set_xlabel("cosine similarity to the nearest other image")
    axes.set_ylabel("images (log scale)")
    axes.set_title(f"Nearest-neighbour similarity of {len(values)} images ({source})")
    axes.legend(loc="upper left")
    figure.tight_layout()
    storage.write_atomic(url, lambda f: figure.savefig(f, format="png"))
    return {"file": posixpath.basename(url), "images": len(values), "above_threshold": above, "source": source}
