"""Shared fixtures: offline settings, real-photo shards and a tiny random-weight OpenCLIP model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import random
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from mmembed.config import EncoderConfig
from mmembed.makeshards import ShardSpec, samples_from_folder, write_shards
from tests.photos import write_photo_folder

TINY = EncoderConfig(model="mmembed-tiny", random_init=True, device="cpu", batch_size=8, seed=0)


@pytest.fixture(scope="session", autouse=True)
def _faiss_one_thread() -> Iterator[None]:
    """faiss on one thread: on a busy 2-core box its spinning OpenMP workers (sharing torch's libgomp) make
    k-means, PQ training and range search many times slower than a single thread."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every random source seeded before each test."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's real photos (two variants each) with captions and json sidecars."""
    folder = tmp_path_factory.mktemp("photos")
    write_photo_folder(folder, variants=("original", "flipped"))
    return folder


@pytest.fixture(scope="session")
def demo_shards(demo_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The demo photos as WebDataset shards of 10 samples (38 samples, 4 shards)."""
    out = tmp_path_factory.mktemp("shards")
    result = write_shards(samples_from_folder(demo_photos), ShardSpec(out=str(out), samples_per_shard=10))
    return result["shards"]


@pytest.fixture(scope="session")
def served_index(demo_shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo shards embedded with the tiny model and indexed (read-only for tests); returns the index dir."""
    from mmembed.index import IndexBuildConfig, build_index
    from tests.helpers import embed

    emb = tmp_path_factory.mktemp("served_emb")
    embed(demo_shards, emb, TINY)
    build_index(IndexBuildConfig(embeddings_dir=str(emb), out_dir=str(emb / "index")))
    return emb / "index"


@pytest.fixture
def tiny_config() -> EncoderConfig:
    """The bundled tiny OpenCLIP config with seeded random weights, on CPU."""
    return TINY


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol server (moto) on loopback for the session; the AWS environment variables point
    every client at it (fsspec/s3fs, boto3, Beam, child processes)."""
    from tests.objectstore import CREDENTIALS, s3_server

    with s3_server() as endpoint, pytest.MonkeyPatch.context() as env:
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            env.setenv(name, value)
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A new empty bucket on the test S3 server, as ``s3://name``."""
    from tests.objectstore import create_bucket

    return create_bucket()
