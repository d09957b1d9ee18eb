"""A real index of the demo photos (tiny model) and a real server on loopback, shared by the serve tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import faiss
import httpx
import pytest
import torch

from mmembed.index import IndexBuildConfig, build_index
from mmembed.serve.config import ServeConfig
from mmembed.serve.server import running
from tests.conftest import TINY
from tests.helpers import embed

MAX_K = 50
MAX_UPLOAD = 4 * 1024 * 1024
MAX_QUERY = 200


@pytest.fixture(scope="session")
def served_index(demo_shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo shards embedded with the tiny model and indexed; returns the index dir."""
    emb = tmp_path_factory.mktemp("serve_emb")
    embed(demo_shards, emb, TINY)
    build_index(IndexBuildConfig(embeddings_dir=str(emb), out_dir=str(emb / "index")))
    return emb / "index"


@pytest.fixture(scope="session")
def serve_config(served_index: Path, demo_shards: list[str]) -> ServeConfig:
    shard_dir = Path(demo_shards[0]).parent
    return ServeConfig(
        index_dir=str(served_index),
        shards=(str(shard_dir / "*.tar"),),
        port=0,
        max_k=MAX_K,
        max_upload_bytes=MAX_UPLOAD,
        max_query_chars=MAX_QUERY,
        max_image_pixels=10_000_000,
        thumbnail_size=128,
        detail_size=384,
    )


@pytest.fixture(scope="session")
def base_url(serve_config: ServeConfig) -> Iterator[str]:
    """The server over the demo index, with the demo shards for thumbnails, on a free loopback port."""
    with restoring_threads(), running(serve_config) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


@contextlib.contextmanager
def restoring_threads() -> Iterator[None]:
    """The server pins torch and faiss to its thread count; give the rest of the test session its own back."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


@contextlib.contextmanager
def other_server(config: ServeConfig, **changes: object) -> Iterator[httpx.Client]:
    """A second server with some settings changed, for one test."""
    with restoring_threads(), running(replace(config, **changes)) as url, httpx.Client(base_url=url) as c:
        yield c
