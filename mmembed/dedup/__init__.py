"""Duplicate detection over an embed job's outputs: exact (sha256), perceptual (pHash) and semantic (SemDeDup)
links, unioned into groups with one member kept per group.

Plain numpy / pyarrow / faiss; each method has a per-bucket or per-cluster function a Beam job can call
(``exact.bucket_links``, ``perceptual.bucket_pairs``, ``semantic.cluster_duplicates``), and ``run_dedup``
composes them on one machine. The names below load on first use (``mmembed --help`` imports the options).
"""

from mmembed.lazy import lazy_exports

_HOMES = {"DedupConfig": "mmembed.dedup.config", "run_dedup": "mmembed.dedup.run"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
