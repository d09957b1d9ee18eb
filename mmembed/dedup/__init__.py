"""Duplicate detection over an embed job's outputs: exact (sha256), perceptual (pHash) and semantic (SemDeDup)
links, unioned into groups with one member kept per group.

Plain numpy / pyarrow / faiss; each method has a per-bucket or per-cluster function a Beam job can call
(``exact.bucket_links``, ``perceptual.bucket_pairs``, ``semantic.cluster_duplicates``), and ``run_dedup``
composes them on one machine.
"""

from mmembed.dedup.config import DedupConfig
from mmembed.dedup.run import run_dedup

__all__ = ["DedupConfig", "run_dedup"]
