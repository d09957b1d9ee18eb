"""Pick a faiss index factory string from vector count, dimension and a memory budget (autofaiss-like).

Rules, in order (inner product on L2-normalised vectors throughout):

- ``Flat`` (exact ``IndexFlatIP``) up to ``FLAT_MAX_VECTORS`` when ``count * dim * 4`` fits: exact results,
  no training, and a brute-force scan of 200k x 512 floats is ~0.1 GFLOP per query (milliseconds, batched).
- ``HNSW32`` up to ``HNSW_MAX_VECTORS`` when the graph fits: high recall at low latency, but the graph must
  sit in RAM (no mmap) and its build time grows quickly, so larger sets go to IVF.
- ``IVF{nlist}_HNSW32,PQ{m}x8np`` for anything larger or when the budget is tight: compact codes, inverted
  lists loadable memory-mapped, appendable. Re-ranking follows when it fits, best first: ``RFlat`` (the
  float vectors), then ``Refine(SQ8)`` (8-bit scalar-quantised vectors, a quarter of the size; PQ codes alone
  cap recall@10 near 0.7 on 1M x 512 clustered vectors, SQ8 re-ranking lifts it above 0.95).
  ``OPQ{m}_{d}`` is prepended when there is no re-ranking (codes must carry the accuracy) or ``m`` does
  not divide ``dim``. ``np`` turns off polysemous training, which only helps Hamming-filtered search.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mmembed.config import ConfigError

FAMILIES = ("auto", "flat", "hnsw", "ivfpq")
FLAT_MAX_VECTORS = 200_000
HNSW_MAX_VECTORS = 2_000_000
HNSW_M = 32
PQ_CANDIDATES = (64, 48, 32, 24, 16, 8, 4)  # code bytes per vector, best recall first
MIN_POINTS_PER_LIST = 39  # faiss warns below 39 training points per k-means centroid
PQ_MIN_TRAIN = 256  # 8-bit PQ codebooks have 256 centroids each
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class IndexChoice:
    """The chosen factory string, its family, its estimated size in RAM and why it was picked."""

    key: str
    family: str
    memory_bytes: int
    reason: str


def parse_memory(value: str | int) -> int:
    """'4G', '512M', '1.5GB', '2GiB' or a byte count -> bytes (binary units: 1K = 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"memory budget must be > 0 bytes, got {value}")
        return value
    match = _MEMORY_RE.match(str(value))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"memory budget {value!r} is not a size; write it like '4G', '512M' or '1.5GB'")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_bytes(n: int) -> str:
    """Bytes -> a short human string ('1.5G') for messages and logs."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return f"{n}B"


def flat_memory(count: int, dim: int) -> int:
    return count * dim * 4


def hnsw_memory(count: int, dim: int, m: int = HNSW_M) -> int:
    """Float vectors plus ~2M+1 int32 neighbours per node and per-node offsets/levels."""
    return count * (dim * 4 + 8 * m + 16)


# Re-ranking stages, best first: factory suffix -> bytes per vector per dimension.
REFINES = {"RFlat": 4, "Refine(SQ8)": 1}


def ivf_memory(count: int, dim: int, nlist: int, code_bytes: int, opq_dim: int | None, refine: str | None) -> int:
    """Codes and int64 ids per vector, the HNSW coarse quantizer, PQ codebooks, OPQ matrix, re-rank vectors."""
    d = opq_dim or dim
    per_vector = code_bytes + 8 + (dim * REFINES[refine] if refine else 0)
    fixed = hnsw_memory(nlist, d) + (256 * d * 4 if code_bytes < d * 4 else 0) + (dim * d * 4 if opq_dim else 0)
    return count * per_vector + fixed


def estimate_memory(key: str, count: int, dim: int) -> int:
    """RAM of an index of ``count`` vectors built from ``key``; ValueError for keys this module doesn't make."""
    if key == "Flat":
        return flat_memory(count, dim)
    if m := re.fullmatch(r"HNSW(\d+)(?:,Flat)?", key):
        return hnsw_memory(count, dim, int(m.group(1)))
    refines = "|".join(re.escape(r) for r in REFINES)
    pattern = rf"(?:OPQ\d+(?:_(\d+))?,)?IVF(\d+)(?:_HNSW\d+)?,(?:PQ(\d+)(?:x8)?(?:np)?|(Flat))(?:,({refines}))?"
    ivf = re.fullmatch(pattern, key)
    if not ivf:
        raise ValueError(f"no memory model for index key {key!r}")
    opq_dim, nlist, pq, flat, refine = ivf.groups()
    code_bytes = dim * 4 if flat else int(pq)
    return ivf_memory(count, dim, int(nlist), code_bytes, int(opq_dim) if opq_dim else None, refine)


def choose_nlist(count: int, train_count: int) -> int:
    """Power of two near 4*sqrt(count), capped so every list gets >= 39 training points."""
    target = min(4 * math.sqrt(count), train_count / MIN_POINTS_PER_LIST)
    return 2 ** max(0, int(math.floor(math.log2(max(target, 1)))))


def ivfpq_key(nlist: int, m: int, dim: int, refine: str | None) -> tuple[str, int | None]:
    """The factory string for one IVF-PQ variant (``refine``: a REFINES suffix or None) and its OPQ output
    dimension (None without OPQ)."""
    opq_dim = None if refine and dim % m == 0 else m * (dim // m)
    prefix = f"OPQ{m}_{opq_dim}," if opq_dim else ""
    return f"{prefix}IVF{nlist}_HNSW{HNSW_M},PQ{m}x8np{',' + refine if refine else ''}", opq_dim


def choose_index(
    count: int, dim: int, budget: int, family: str = "auto", max_train_vectors: int = 500_000
) -> IndexChoice:
    """The index for ``count`` vectors of ``dim`` within ``budget`` bytes; ``family`` forces flat/hnsw/ivfpq."""
    if family not in FAMILIES:
        raise ConfigError(f"index family {family!r} is not one of {FAMILIES}")
    if count < 1 or dim < 1:
        raise ConfigError(f"nothing to index: {count} vectors of dim {dim}")
    size = f"{count:,} x {dim}-d vectors"
    for name, limit, key, memory in (
        ("flat", FLAT_MAX_VECTORS, "Flat", flat_memory(count, dim)),
        ("hnsw", HNSW_MAX_VECTORS, f"HNSW{HNSW_M}", hnsw_memory(count, dim)),
    ):
        if family == name and memory > budget:
            raise ConfigError(
                f"{name} index for {size} needs ~{format_bytes(memory)}, over the budget {format_bytes(budget)}; "
                "raise max_index_memory or use family 'auto'"
            )
        if family == name or (family == "auto" and count <= limit and memory <= budget):
            reason = "forced" if family == name else f"<= {limit:,} vectors and fits {format_bytes(budget)}"
            return IndexChoice(key, name, memory, f"{size}: {reason}")
    if family == "auto" and count < 4 * PQ_MIN_TRAIN:
        raise ConfigError(
            f"{size} need ~{format_bytes(flat_memory(count, dim))} even as a flat index, over the budget "
            f"{format_bytes(budget)}; raise max_index_memory"
        )
    return _choose_ivfpq(count, dim, budget, min(count, max_train_vectors), size)


def _choose_ivfpq(count: int, dim: int, budget: int, train_count: int, size: str) -> IndexChoice:
    if train_count < PQ_MIN_TRAIN:
        raise ConfigError(f"IVF-PQ needs >= {PQ_MIN_TRAIN} training vectors, have {train_count}; use flat")
    nlist = choose_nlist(count, train_count)
    candidates = [m for m in PQ_CANDIDATES if m <= dim // 2] or [1]
    smallest = None
    for refine in (*REFINES, None):
        for m in candidates:
            key, opq_dim = ivfpq_key(nlist, m, dim, refine)
            memory = ivf_memory(count, dim, nlist, m, opq_dim, refine)
            smallest = memory
            if memory <= budget:
                why = f"re-ranked with {refine}" if refine else "no room to re-rank"
                return IndexChoice(key, "ivfpq", memory, f"{size}: IVF-PQ with {m}-byte codes, {why}")
    raise ConfigError(
        f"{size} need at least ~{format_bytes(smallest or 0)} as IVF-PQ with the smallest codes, over the "
        f"budget {format_bytes(budget)}; raise max_index_memory"
    )
