"""A real index of the demo photos (tiny model) and a real server on loopback, shared by the serve tests; and
``page``: the search page of ``base_url`` in headless Chromium (skipped without /usr/bin/chromium, except
under CI, where it fails: install it with ``apt-get install -y chromium``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import faiss
import httpx
import pytest
import torch

from mmembed.serve.config import ServeConfig
from mmembed.serve.server import running

MAX_K = 50
MAX_UPLOAD = 4 * 1024 * 1024
MAX_QUERY = 200


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


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_chromium() -> None:
    """Skip without Debian's chromium (fail under CI, where it must be installed)."""
    if CHROMIUM.is_file():
        return
    message = f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium`"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def page(base_url: str, tmp_path: Path) -> Iterator[object]:
    """``base_url``'s search page in headless Chromium; when the test ends no script error, CSP violation or
    failed load may be left in ``page.problems`` (a test that provokes one removes it)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.problems = problems  # a test that provokes an error removes what it expects
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(base_url + "/")
            yield page
            assert problems == [], problems  # no script errors, no CSP violations, no failed loads
        finally:
            browser.close()
