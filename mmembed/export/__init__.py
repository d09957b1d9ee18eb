"""``mmembed export``: a query (text or image) and/or a ``--where`` filter over an index -> the selected
samples copied byte for byte into new WebDataset shards, with a Parquet manifest and a summary.

``run(ExportConfig(...))`` does it; the names below load on first use (``mmembed --help`` imports the config).
"""

from mmembed.lazy import lazy_exports

_HOMES = {"ExportConfig": "mmembed.export.config", "run": "mmembed.export.run"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
