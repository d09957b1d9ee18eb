"""DedupConfig / SemanticConfig: lists become tuples, every bad value is a ConfigError saying what to fix."""

from __future__ import annotations

import pytest

from mmembed.config import ConfigError
from mmembed.dedup import DedupConfig
from mmembed.dedup.config import SemanticConfig


def test_defaults_and_semantic_part() -> None:
    config = DedupConfig("emb", "out", methods=["semantic", "exact"])
    assert config.methods == ("semantic", "exact") and config.threshold == pytest.approx(0.95)
    semantic = config.semantic("cuda")
    assert isinstance(semantic, SemanticConfig) and semantic.device == "cuda" and semantic.eps == config.eps
    assert semantic.max_cluster_size == config.max_cluster_size and semantic.seed == config.seed


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"embeddings_dir": ""}, "give both"),
        ({"methods": ()}, "methods"),
        ({"methods": ("exact", "exact")}, "distinct"),
        ({"methods": ("fuzzy",)}, "methods"),
        ({"keep": "biggest"}, "keep policy"),
        ({"keep": "semdedup-hard", "methods": ("exact",)}, "add 'semantic'"),
        ({"phash_threshold": 32}, "phash_threshold"),
        ({"phash_threshold": -1}, "phash_threshold"),
        ({"eps": 0}, "eps"),
        ({"eps": 1.5}, "eps"),
        ({"n_clusters": 0}, "n_clusters"),
        ({"max_cluster_size": 1}, "max_cluster_size"),
        ({"sample_size": 0}, "sample_size"),
        ({"block_size": 0}, "block_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"recall_queries": -1}, "recall_queries"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_values_are_config_errors(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DedupConfig(**{"embeddings_dir": "emb", "out_dir": "out", **changes})


def test_object_store_urls_are_accepted() -> None:
    config = DedupConfig("s3://bucket/emb", "gs://bucket/dedup", work_dir="s3://bucket/work")
    assert (config.embeddings_dir, config.out_dir, config.work_dir) == (
        "s3://bucket/emb",
        "gs://bucket/dedup",
        "s3://bucket/work",
    )


def test_single_machine_run_refuses_an_object_store_work_dir(tmp_path) -> None:
    from mmembed.dedup.run import local_work_dir

    with pytest.raises(ConfigError, match="local disk"):
        local_work_dir(DedupConfig("emb", str(tmp_path), work_dir="s3://bucket/work"))
    assert local_work_dir(DedupConfig("emb", "s3://bucket/out")) is None  # the system temp dir
    assert local_work_dir(DedupConfig("emb", str(tmp_path))) == str(tmp_path)
    assert local_work_dir(DedupConfig("emb", "s3://bucket/out", work_dir=f"file://{tmp_path}")) == str(tmp_path)
