"""FAISS indexes over an embed job's Parquet outputs: choose, train, add, tune, save, load, append.

``build_index(IndexBuildConfig(...))`` writes ``<out_dir>/{image,text}.index``, ``ids.parquet`` and
``infos.json``; ``load_index(out_dir).search(vectors, k, modality)`` returns (scores, row_ids). Image-only
samples are never returned by the text index, and embeddings without any text vectors get no text index
(``mmembed.index.selection`` says how).

The names below load on first use, so light submodules (``mmembed.index.config``) can be
imported without faiss: ``mmembed --help`` must start at once.
"""

from __future__ import annotations

from mmembed.lazy import lazy_exports

_HOMES = {
    "IndexBuildConfig": "mmembed.index.config",
    "append": "mmembed.index.job",
    "build_index": "mmembed.index.job",
    "IndexSet": "mmembed.index.load",
    "SearchIndex": "mmembed.index.load",
    "load_index": "mmembed.index.load",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
