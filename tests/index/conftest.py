"""Index tests run faiss single-threaded: on a busy 2-core box its spinning OpenMP workers (sharing torch's
libgomp, already initialised by tests/conftest.py) make PQ training 10x slower than one thread."""

from collections.abc import Iterator

import faiss
import pytest


@pytest.fixture(scope="package", autouse=True)
def _faiss_one_thread() -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
