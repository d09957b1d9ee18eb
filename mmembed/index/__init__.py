"""FAISS indexes over an embed job's Parquet outputs: choose, train, add, tune, save, load, append.

``build_index(IndexBuildConfig(...))`` writes ``<out_dir>/{image,text}.index``, ``ids.parquet`` and
``infos.json``; ``load_index(out_dir).search(vectors, k, modality)`` returns (scores, row_ids). Image-only
samples are never returned by the text index, and embeddings without any text vectors get no text index
(``mmembed.index.selection`` says how).
"""

from mmembed.index.config import IndexBuildConfig
from mmembed.index.job import append, build_index
from mmembed.index.load import IndexSet, SearchIndex, load_index

__all__ = ["IndexBuildConfig", "IndexSet", "SearchIndex", "append", "build_index", "load_index"]
