"""Dedup tests run faiss single-threaded: on a busy 2-core box its spinning OpenMP workers make k-means and
range search many times slower than one thread (as in tests/index/conftest.py)."""

from collections.abc import Iterator

import faiss
import pytest


@pytest.fixture(scope="package", autouse=True)
def _faiss_one_thread() -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
