"""Tune search-time parameters (efSearch, nprobe, k_factor) until recall@10 vs exact search meets a target."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import faiss
import numpy as np

from mmembed.index.evaluate import recall_at_k
from mmembed.index.selection import RowFilter, search

log = logging.getLogger(__name__)

EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
K_FACTORS = (1, 2, 4, 8, 16, 32)
TUNE_K = 10


@dataclass
class TuneResult:
    """The cheapest parameter string meeting the target (or the best tried), its recall and every trial."""

    params: str
    recall: float
    target_met: bool
    trials: list[tuple[str, float]] = field(default_factory=list)


def candidate_params(index: faiss.Index) -> list[str]:
    """Parameter strings for ParameterSpace, cheapest first: more nprobe/efSearch/k_factor costs more time."""
    ivf = _ivf_or_none(index)
    if ivf is not None:
        nprobes = sorted({min(2**i, ivf.nlist) for i in range(ivf.nlist.bit_length() + 1)})
        hnsw_quantizer = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
        k_factors = K_FACTORS if isinstance(faiss.downcast_index(index), faiss.IndexRefine) else (None,)
        return [
            ",".join(
                [f"nprobe={p}"]
                + ([f"quantizer_efSearch={max(2 * p, 32)}"] if hnsw_quantizer else [])
                + ([f"k_factor_rf={kf}"] if kf else [])
            )
            for p in nprobes
            for kf in k_factors
        ]
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return [f"efSearch={ef}" for ef in EF_SEARCH]
    return [""]  # exact (flat): nothing to tune


def apply_params(index: faiss.Index, params: str) -> None:
    """Set a 'name=value,...' parameter string on an index (descends OPQ, refine and IVF wrappers)."""
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)


def tune(
    index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float, allowed: RowFilter | None = None
) -> TuneResult:
    """Try candidates cheapest first; stop at the first whose 10-recall@10 on ``queries`` reaches ``target``
    (searching the rows ``allowed`` admits, as every search of the index will)."""
    k = min(TUNE_K, truth.shape[1])
    best = TuneResult("", -1.0, False)
    for params in candidate_params(index):
        apply_params(index, params)
        _, found = search(index, queries, k, allowed)
        recall = recall_at_k(found, truth, k)
        best.trials.append((params, round(recall, 4)))
        if recall > best.recall:
            best.params, best.recall = params, recall
        if recall >= target:
            best.params, best.recall, best.target_met = params, recall, True
            break
    if not best.target_met:
        log.warning(
            "recall@%d %.3f < target %.3f even with %r; consider a larger index", k, best.recall, target, best.params
        )
    apply_params(index, best.params)
    return best


def _ivf_or_none(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
