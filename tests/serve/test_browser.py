"""End to end in headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download).

Type a query, see the result thumbnails load, open a detail view, upload an image, save screenshots.
Without /usr/bin/chromium the test is skipped, except under CI (``CI`` set), where it fails: install it with
``apt-get install -y chromium``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
ALL_IMAGES_LOADED = """() => {
  const images = [...document.querySelectorAll('#results img.thumb')];
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


def _require_chromium() -> None:
    if CHROMIUM.is_file():
        return
    message = f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium`"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def page(base_url: str, tmp_path: Path) -> Iterator[object]:
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


def test_search_see_thumbnails_open_detail(page, tmp_path: Path) -> None:  # noqa: ANN001 - playwright Page
    page.wait_for_function("() => document.querySelector('#index-info').textContent.includes('38 samples')")
    page.fill("#query", "a rocket on the launch pad")
    page.select_option("#k", "12")
    page.click("#search-button")
    page.wait_for_selector("#results .result img.thumb")
    page.wait_for_function(ALL_IMAGES_LOADED, timeout=20_000)
    assert page.locator("#results .result").count() == 12
    assert "12 images" in page.text_content("#status")
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

    first = page.locator("#results .result").first
    caption = first.locator(".caption").text_content()
    assert "score" in first.locator(".score").text_content()
    first.click()
    page.wait_for_selector("#detail[open]")
    page.wait_for_function(
        "() => { const img = document.querySelector('#detail-image'); return img.complete && img.naturalWidth > 0; }"
    )
    assert page.text_content("#detail-caption") == caption
    assert '"source": "skimage.data.' in page.text_content("#detail-metadata")
    assert "sha256" in page.text_content("#detail-fields")
    page.screenshot(path=str(tmp_path / "detail.png"))
    assert (tmp_path / "detail.png").stat().st_size > 10_000
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail:not([open])", state="attached")


def test_image_upload_finds_the_photo_and_errors_are_shown(page, demo_photos: Path, tmp_path: Path) -> None:  # noqa: ANN001
    photo = next(p for p in demo_photos.glob("coffee-original.*") if p.suffix in (".jpg", ".png"))
    page.set_input_files("#image", str(photo))
    page.wait_for_function(ALL_IMAGES_LOADED, timeout=20_000)
    assert page.locator("#results .result .caption").first.text_content() == (
        (demo_photos / "coffee-original.txt").read_text().strip()
    )
    page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"plain text, not a picture")
    page.set_input_files("#image", str(not_an_image))
    page.wait_for_selector("#status.error")
    assert "415" in page.text_content("#status") and "not a decodable image" in page.text_content("#status")
    expected = [p for p in page.problems if "415" in p and ("/search" in p or "Failed to load resource" in p)]
    assert len(expected) == 2  # the response and the console's note of it
    for problem in expected:
        page.problems.remove(problem)
