"""POST /search with ``where`` and ``mode`` (JSON and multipart), composed image + text uploads, and the errors a
bad condition or a wrong combination gets; keyword mode calls no model. A real server on loopback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmembed.config import DEFAULT_TEXT_WEIGHT
from mmembed.search import Searcher

ROCKET = "a rocket on the launch pad under a blue sky"
FLIPPED = "metadata->>'variant' = 'flipped'"


def photo_file(folder: Path, stem: str) -> Path:
    return next(p for p in folder.glob(f"{stem}.*") if p.suffix in (".jpg", ".png"))


def encoded_texts(client: httpx.Client) -> float:
    """How many text queries the server's model has encoded so far."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "mmembed_query_encode_seconds_count" and sample.labels.get("query") == "text":
                return sample.value
    return 0.0


def post(client: httpx.Client, status: int = 200, **body: object) -> dict:
    response = client.post("/search", json=body)
    assert response.status_code == status, response.text
    return response.json()


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_json_queries_take_where_and_mode(client: httpx.Client, mode: str) -> None:
    body = post(client, query="rocket", k=4, where=FLIPPED, mode=mode)
    assert body["mode"] == mode and body["where"] == FLIPPED and body["results"]
    assert all(h["metadata"]["variant"] == "flipped" for h in body["results"])
    assert all(h["width"] > 0 and h["similarity"] is not None for h in body["results"])
    if mode != "vector":
        assert body["results"][0]["caption"] == ROCKET


def test_a_blank_where_is_no_filter(client: httpx.Client) -> None:
    body = post(client, query="rocket", k=3, where="  ")
    assert body["where"] is None and len(body["results"]) == 3


def test_the_hits_equal_the_python_apis(client: httpx.Client, served_index: Path) -> None:
    searcher = Searcher.from_dir(served_index, device="cpu")
    expected = searcher.search_text("coins", k=3, mode="keyword", where="width > 100")[0]
    found = post(client, query="coins", k=3, mode="keyword", where="width > 100")["results"]
    assert [{k: h[k] for k in e.to_dict()} for h, e in zip(found, expected, strict=True)] == [
        e.to_dict() for e in expected
    ]


def test_keyword_mode_calls_no_model(client: httpx.Client) -> None:
    before = encoded_texts(client)
    post(client, query="coins", k=3, mode="keyword")
    assert encoded_texts(client) == before
    post(client, query="coins", k=3, mode="hybrid")
    assert encoded_texts(client) == before + 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query": "a cat", "where": "colour = 'red'"}, 400, "unknown column 'colour'"),
        ({"query": "a cat", "where": "width > 3; DROP TABLE x"}, 400, "is not one SQL condition"),
        ({"query": "cat AND", "mode": "keyword"}, 400, "keyword query 'cat AND' is not valid"),
        ({"query": "a cat", "mode": "fuzzy"}, 422, "mode"),
    ],
)
def test_bad_conditions_and_modes_are_refused(client: httpx.Client, body: dict, status: int, message: str) -> None:
    assert message in post(client, status, **body)["detail"]


def test_multipart_text_and_image_queries_take_where(client: httpx.Client, demo_photos: Path) -> None:
    form = {"query": "rocket", "mode": "keyword", "where": FLIPPED, "k": "3"}
    body = client.post("/search", files={name: (None, value) for name, value in form.items()}).json()  # multipart
    assert body["mode"] == "keyword" and all(h["metadata"]["variant"] == "flipped" for h in body["results"])
    photo = photo_file(demo_photos, "rocket-original")
    upload = {"image": (photo.name, photo.read_bytes())}
    response = client.post("/search", files=upload, data={"k": "3", "where": FLIPPED})
    assert response.status_code == 200, response.text
    hits = response.json()["results"]
    assert hits[0]["caption"] == ROCKET and all(h["metadata"]["variant"] == "flipped" for h in hits)
    response = client.post("/search", files=upload, data={"k": "3", "mode": "keyword"})
    assert response.status_code == 422 and "ranks text queries" in response.json()["detail"]
    response = client.post("/search", files=upload, data={"where": "width >"})
    assert response.status_code == 400 and "--where 'width >'" in response.json()["detail"]


def test_an_upload_with_a_text_is_a_composed_query(client: httpx.Client, demo_photos: Path, served_index: Path) -> None:
    """image + text: the text's share is ``text_weight`` (default DEFAULT_TEXT_WEIGHT), as in the Python API."""
    photo = photo_file(demo_photos, "coffee-original")
    searcher = Searcher.from_dir(served_index, device="cpu")
    for form, weight in (({"text": "at night"}, DEFAULT_TEXT_WEIGHT), ({"text": "at night", "text_weight": "1"}, 1.0)):
        response = client.post("/search", files={"image": (photo.name, photo.read_bytes())}, data={"k": "5", **form})
        assert response.status_code == 200, response.text
        expected = searcher.search_image(photo, k=5, text="at night", text_weight=weight)[0]
        found = response.json()["results"]
        assert [h["key"] for h in found] == [h.key for h in expected]
        assert [h["score"] for h in found] == pytest.approx([h.score for h in expected], abs=1e-4)
    response = client.post("/search", files={"image": (photo.name, photo.read_bytes())}, data={"text_weight": "x"})
    assert response.status_code == 422 and "text_weight" in response.json()["detail"]
