"""Searches that return only some rows of an index: the text index never returns an image-only sample.

Design: row ids are positional and shared by ``image.index``, ``text.index`` and ``ids.parquet``, so the text
index holds one vector per row; an image-only row (no caption, or ``--captions none``) holds the zero vector
there. It is never trained on, and a search never returns it: ``RowFilter`` is the set of rows with text (a
bitmap, from ``ids.parquet``'s ``has_text``) and ``search`` hands it to faiss as an ``IDSelectorBitmap``, so
top-k is taken over the allowed rows only, not filtered afterwards. faiss' per-call search parameters replace
the index's own settings rather than add to them, so the parameters built here repeat the tuned ones (nprobe,
max_codes, efSearch, k_factor) through every layer the index builder makes: refine wrappers, OPQ/PCA
pre-transforms, IVF of any codes, HNSW and flat codes. An index that takes no selector (a custom key such as
``PQ16``), or ignores it, is searched for more neighbours instead, doubling until each query has k allowed
rows or the whole index was asked (over-fetch and filter).

Cost: in an IVF text index every zero vector lands in one inverted list; a query probing that list skips
those entries by the bitmap (a bit test each) rather than scoring them.

Selective filters (``--where``, ``mmembed.index.where``): a filter that admits a fraction f of the rows leaves
about f of the candidates an unfiltered search would score, so the probe settings are widened by 1/f: an IVF
layer scans ``nprobe / f`` lists (at most all of them), an HNSW one keeps ``efSearch / f`` candidates (at most
``MAX_EF_SEARCH``). Scoring stays about as costly as an unfiltered search (only admitted rows are scored; the
extra lists cost a bit test per entry), and recall against exact search over the admitted rows stays at least
that of the unfiltered search: a 1 % filter probes every list, i.e. an exhaustive search of the admitted
rows' codes (``benchmarks/search_filters.py`` measures both).
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

MISSING_SCORE = -np.finfo(np.float32).max  # what faiss reports for an absent inner-product neighbour
# Why there is nothing to search where text vectors are needed (no text index, no text -> image queries).
NO_TEXT = (
    "the embeddings hold no text vectors (embedded with --captions none, or no sample had a caption): "
    "search images, or re-embed with captions"
)
MAX_EF_SEARCH = 4096  # the widest an HNSW search is widened for a selective filter


class RowFilter:
    """The rows a search may return (bool per row id), as a faiss ``IDSelectorBitmap`` over a packed copy."""

    def __init__(self, allowed: np.ndarray) -> None:
        self.allowed = np.asarray(allowed, dtype=bool)
        self._bits = np.packbits(self.allowed, bitorder="little")  # faiss tests bit (id & 7) of byte id >> 3
        self.selector = faiss.IDSelectorBitmap(len(self._bits), faiss.swig_ptr(self._bits))

    @classmethod
    def of(cls, allowed: np.ndarray) -> RowFilter | None:
        """A filter for ``allowed``, or None when it allows every row (a plain search is the same, and faster)."""
        allowed = np.asarray(allowed, dtype=bool)
        return None if allowed.all() else cls(allowed)

    @property
    def count(self) -> int:
        """How many rows a search may return."""
        return int(np.count_nonzero(self.allowed))

    def admits(self, ids: np.ndarray) -> np.ndarray:
        """Per result id: True when it is a real neighbour (>= 0) this filter allows."""
        ok = (ids >= 0) & (ids < len(self.allowed))
        ok[ok] = self.allowed[ids[ok]]
        return ok


def modality_filter(modality: str, has_text: np.ndarray) -> RowFilter | None:
    """The rows a search of ``modality``'s index may return: every row of the image index (None), the rows
    with a text vector (``has_text``) of the text index."""
    return RowFilter.of(has_text) if modality == "text" else None


def search(
    index: faiss.Index, queries: np.ndarray, k: int, allowed: RowFilter | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(queries, k)`` over the rows ``allowed`` admits (all without a filter): (scores, ids),
    -1 ids and ``MISSING_SCORE`` where fewer than k such rows are found."""
    if allowed is None:
        return index.search(queries, k)
    if allowed.count == 0:
        return np.full((len(queries), k), MISSING_SCORE, np.float32), np.full((len(queries), k), -1, np.int64)
    keep: list[Any] = []  # faiss holds raw pointers to nested parameters: they must outlive the search
    widen = max(int(index.ntotal), 1) / allowed.count
    try:
        scores, ids = index.search(queries, k, params=_selector_params(index, allowed.selector, keep, widen))
    except RuntimeError:  # a layer that refuses search parameters; over-fetch below re-raises real errors
        pass
    else:
        if allowed.admits(ids)[ids >= 0].all():  # a layer that ignored the selector is caught here
            return scores, ids
    return _over_fetch(index, queries, k, allowed)


def _selector_params(
    index: faiss.Index, selector: faiss.IDSelector, keep: list[Any], widen: float = 1.0
) -> faiss.SearchParameters:
    """Search parameters carrying ``selector`` to the layer that searches, with each layer's current settings,
    its probes widened by ``widen`` (1 / the fraction of rows the selector admits)."""
    layer = faiss.downcast_index(index)
    if isinstance(layer, faiss.IndexRefine):
        base = _selector_params(layer.base_index, selector, keep, widen)
        params = faiss.IndexRefineSearchParameters(k_factor=layer.k_factor, base_index_params=base)
    elif isinstance(layer, faiss.IndexPreTransform):
        params = faiss.SearchParametersPreTransform(index_params=_selector_params(layer.index, selector, keep, widen))
    elif isinstance(layer, faiss.IndexIVF):
        nprobe = min(layer.nlist, math.ceil(layer.nprobe * widen))
        params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe, max_codes=layer.max_codes)
    elif isinstance(layer, faiss.IndexHNSW):
        hnsw = layer.hnsw
        params = faiss.SearchParametersHNSW(
            sel=selector,
            efSearch=max(hnsw.efSearch, min(math.ceil(hnsw.efSearch * widen), MAX_EF_SEARCH)),
            check_relative_distance=hnsw.check_relative_distance,
            bounded_queue=hnsw.search_bounded_queue,
        )
    else:
        params = faiss.SearchParameters(sel=selector)
    keep.append(params)
    return params


def _over_fetch(index: faiss.Index, queries: np.ndarray, k: int, allowed: RowFilter) -> tuple[np.ndarray, np.ndarray]:
    """Search for more neighbours (2k, then x4) until each query has k allowed ones or the whole index was
    asked, then keep each query's first k allowed ones in rank order."""
    total = max(int(index.ntotal), 1)
    fetch = min(2 * k, max(total, k))  # never below k: the result always has k columns
    while True:
        scores, ids = index.search(queries, fetch)
        ok = allowed.admits(ids)
        if fetch >= total or bool(np.all(ok.sum(axis=1) >= k)):
            break
        fetch = min(4 * fetch, total)
    first = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # allowed positions first, each in rank order
    found = np.take_along_axis(ok, first, axis=1)
    out_scores = np.where(found, np.take_along_axis(scores, first, axis=1), MISSING_SCORE).astype(np.float32)
    out_ids = np.where(found, np.take_along_axis(ids, first, axis=1), -1).astype(np.int64)
    return out_scores, out_ids
