"""End to end in headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download).

Type a query, see the result thumbnails load, open a detail view, upload an image; the random sample shown
first, the query kept in the URL (a link reproduces it, Back and Forward restore earlier ones), "more like
this", images dropped or pasted, the filter and the mode; screenshots of each.
Without /usr/bin/chromium the test is skipped, except under CI (``CI`` set), where it fails (the ``page``
fixture, in conftest.py).
"""

from __future__ import annotations

import base64
from pathlib import Path

ALL_IMAGES_LOADED = """() => {
  const images = [...document.querySelectorAll('#results img.thumb')];
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


def expect_failed_search(page, status: str) -> None:  # noqa: ANN001
    """Take the failed /search a test provoked out of ``page.problems``: the response and the console's note."""
    expected = [p for p in page.problems if status in p and ("/search" in p or "Failed to load resource" in p)]
    assert len(expected) == 2
    for problem in expected:
        page.problems.remove(problem)


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
    expect_failed_search(page, "415")


def results_of(page) -> list[str]:  # noqa: ANN001
    """The (shard/key) of the result cards on screen, in order."""
    return page.eval_on_selector_all(
        "#results .result", "cards => cards.map((c) => `${c.dataset.shard}/${c.dataset.key}`)"
    )


def wait_for_results(page, status: str) -> list[str]:  # noqa: ANN001
    """Wait until the status line reports ``status`` and every thumbnail has loaded; the cards on screen."""
    page.wait_for_function(
        "(text) => document.querySelector('#status').textContent.includes(text)", arg=status, timeout=20_000
    )
    page.wait_for_function(ALL_IMAGES_LOADED, timeout=20_000)
    return results_of(page)


def test_a_random_sample_is_shown_before_the_first_query(page, client, tmp_path: Path) -> None:  # noqa: ANN001
    shown = wait_for_results(page, "a random sample of 24 of the 38 samples (seed 0")
    expected = [f"{h['shard']}/{h['key']}" for h in client.get("/browse?n=24&seed=0").json()["results"]]
    assert shown == expected
    assert page.locator("#results .result .score").first.text_content().count("×") == 1  # its size, no score
    assert page.is_hidden("#query-panel")
    page.screenshot(path=str(tmp_path / "browse.png"), full_page=True)
    assert (tmp_path / "browse.png").stat().st_size > 10_000

    page.click("#shuffle")
    other = wait_for_results(page, "a random sample of 24 of the 38 samples (seed ")
    page.wait_for_url("**/?seed=*")
    assert other != shown
    page.go_back()
    assert wait_for_results(page, "(seed 0;") == shown and page.url.endswith("/")


def test_the_url_holds_the_query_and_back_restores_it(page, base_url: str) -> None:  # noqa: ANN001
    page.goto(base_url + "/?q=a+rocket+on+the+launch+pad&target=text&k=12")
    rockets = wait_for_results(page, "12 captions for “a rocket on the launch pad”")
    assert len(rockets) == 12
    assert page.input_value("#query") == "a rocket on the launch pad"
    assert (page.input_value("#target"), page.input_value("#k")) == ("text", "12")

    page.fill("#query", "a cup of coffee")
    page.select_option("#target", "image")
    page.select_option("#k", "24")
    page.click("#search-button")
    coffee = wait_for_results(page, "24 images for “a cup of coffee”")
    assert page.url == base_url + "/?q=a+cup+of+coffee"
    assert coffee[:12] != rockets

    page.go_back()
    assert wait_for_results(page, "12 captions for “a rocket") == rockets
    assert page.url == base_url + "/?q=a+rocket+on+the+launch+pad&target=text&k=12"
    assert page.input_value("#query") == "a rocket on the launch pad"
    assert (page.input_value("#target"), page.input_value("#k")) == ("text", "12")
    page.go_forward()
    assert wait_for_results(page, "24 images for “a cup of coffee”") == coffee
    assert page.input_value("#query") == "a cup of coffee"

    shared = page.context.new_page()  # the copied link, opened elsewhere, runs the same query
    shared.goto(base_url + "/?q=a+cup+of+coffee")
    assert wait_for_results(shared, "24 images for “a cup of coffee”") == coffee
    shared.close()


def test_more_like_this_finds_the_clicked_sample_first(page, base_url: str, tmp_path: Path) -> None:  # noqa: ANN001
    sample = wait_for_results(page, "a random sample")[5]
    shard, key = sample.split("/", 1)
    page.locator("#results .result").nth(5).locator("button.like").click()
    found = wait_for_results(page, f"24 images like sample {key}")
    assert found[0] == sample
    assert "score 1.0000" in page.locator("#results .result .score").first.text_content()
    assert page.url == f"{base_url}/?like={shard}%2F{key}"
    page.wait_for_function("() => document.querySelector('#query-image').naturalWidth > 0")
    assert key in page.text_content("#query-image-name")
    page.screenshot(path=str(tmp_path / "like.png"), full_page=True)

    page.reload()  # the link alone runs it again
    assert wait_for_results(page, f"24 images like sample {key}") == found

    page.locator("#results .result").nth(3).locator("button.open").click()  # from the detail view too
    page.wait_for_selector("#detail[open]")
    third = found[3]
    page.click("#detail-like")
    assert wait_for_results(page, f"like sample {third.split('/', 1)[1]}")[0] == third
    assert page.is_hidden("#detail")
    page.go_back()
    assert wait_for_results(page, f"like sample {key}") == found


DROP = """([b64, name, type, how]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  const event = how === "drop"
    ? new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true })
    : new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true });
  document.querySelector(how === "drop" ? "#results" : "body").dispatchEvent(event);
  return event.defaultPrevented;
}"""


def test_dropped_or_pasted_images_are_searched_and_shown(page, demo_photos: Path, tmp_path: Path) -> None:  # noqa: ANN001
    wait_for_results(page, "a random sample")
    shown = {}
    for stem, how in (("coffee-original", "drop"), ("chelsea-original", "paste")):
        photo = next(p for p in demo_photos.glob(f"{stem}.*") if p.suffix in (".jpg", ".png"))
        kind = "image/jpeg" if photo.suffix == ".jpg" else "image/png"
        data = base64.b64encode(photo.read_bytes()).decode()
        assert page.evaluate(DROP, [data, photo.name, kind, how])  # the page took it
        shown[stem] = wait_for_results(page, f"24 images for image {photo.name}")
        first_caption = page.locator("#results .result .caption").first.text_content()
        assert first_caption == (demo_photos / f"{stem}.txt").read_text().strip()
        page.wait_for_function("() => document.querySelector('#query-image').naturalWidth > 0")
        assert page.get_attribute("#query-image", "src").startswith("blob:")
        assert page.url.endswith(f"/?image={photo.name}")
        if how == "drop":
            page.screenshot(path=str(tmp_path / "drop.png"), full_page=True)

    page.go_back()  # the dropped image's query, results and preview come back
    assert wait_for_results(page, "for image coffee-original") == shown["coffee-original"]
    page.wait_for_function("() => document.querySelector('#query-image').naturalWidth > 0")

    assert not page.evaluate(DROP, ["aGVsbG8=", "notes.txt", "text/plain", "paste"])  # text pastes as text
    page.evaluate(DROP, ["aGVsbG8=", "notes.txt", "text/plain", "drop"])
    assert "notes.txt is not an image" in page.text_content("#status.error")

    page.reload()  # the entry keeps its results; the image's preview died with the page that made it
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('reloaded')")
    assert results_of(page) == shown["coffee-original"] and page.is_hidden("#query-image")

    shared = page.context.new_page()  # a link cannot carry the upload: the page asks for the image
    shared.goto(page.url)
    shared.wait_for_selector("#status.error")
    assert "a link cannot carry" in shared.text_content("#status")
    assert shared.is_visible("#query-panel") and "coffee-original.jpg" in shared.text_content("#query-image-name")
    shared.close()


FLIPPED = "metadata->>'variant' = 'flipped'"


def test_a_filter_and_the_mode_narrow_the_results(page, client, base_url: str, tmp_path: Path) -> None:  # noqa: ANN001
    wait_for_results(page, "a random sample")
    page.fill("#query", "a cat sitting on a sofa")
    page.click("#search-button")
    everything = wait_for_results(page, "24 images for “a cat sitting on a sofa” (")

    page.fill("#where", FLIPPED)
    page.press("#where", "Enter")
    flipped = wait_for_results(page, f"19 images for “a cat sitting on a sofa”, filtered by {FLIPPED}")
    body = {"query": "a cat sitting on a sofa", "k": 24, "where": FLIPPED}
    expected = client.post("/search", json=body).json()["results"]
    assert [h["metadata"]["variant"] for h in expected] == ["flipped"] * 19
    assert flipped == [f"{h['shard']}/{h['key']}" for h in expected]
    kept = [x for x in everything if x in flipped]  # the unfiltered ranking, its flipped samples only
    assert 0 < len(kept) < len(everything) and flipped[: len(kept)] == kept
    assert "where=metadata-%3E%3E%27variant%27+%3D+%27flipped%27" in page.url
    page.screenshot(path=str(tmp_path / "filtered.png"), full_page=True)

    page.fill("#query", "")  # no query: a random sample of what the filter keeps
    page.click("#search-button")
    sample = wait_for_results(page, f"a random sample of 19 of the 19 samples matching {FLIPPED}")
    assert set(sample) == set(flipped)

    page.fill("#query", "rocket")
    page.fill("#where", "")
    page.select_option("#mode", "keyword")
    page.click("#search-button")
    rockets = wait_for_results(page, "2 images for “rocket”")  # the two captions that hold the word
    assert page.url == base_url + "/?q=rocket&mode=keyword"
    page.select_option("#mode", "hybrid")
    page.click("#search-button")
    wait_for_results(page, "24 images for “rocket”")
    assert results_of(page)[:2] == rockets or set(results_of(page)[:2]) == set(rockets)
    page.go_back()
    assert wait_for_results(page, "2 images for “rocket”") == rockets and page.input_value("#mode") == "keyword"

    page.fill("#where", "no_such_column > 1")  # the API's own message is shown
    page.click("#search-button")
    page.wait_for_selector("#status.error")
    assert page.text_content("#status").startswith("400: ") and "no_such_column" in page.text_content("#status")
    expect_failed_search(page, "400")
