"""End to end in headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download).

Type a query, see the result thumbnails load, open a detail view, upload an image, save screenshots.
Without /usr/bin/chromium the test is skipped, except under CI (``CI`` set), where it fails (the ``page``
fixture, in conftest.py).
"""

from __future__ import annotations

from pathlib import Path

ALL_IMAGES_LOADED = """() => {
  const images = [...document.querySelectorAll('#results img.thumb')];
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


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
