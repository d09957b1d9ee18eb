"""The HTTP API against a real server on loopback: search, items, thumbnails, health, metrics, OpenAPI."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageChops, ImageStat
from prometheus_client.parser import text_string_to_metric_families

from mmembed.serve.config import ServeConfig

ROCKET = "a rocket on the launch pad under a blue sky"


def photo_file(folder: Path, stem: str) -> Path:
    return next(p for p in folder.glob(f"{stem}.*") if p.suffix in (".jpg", ".png"))


def search(client: httpx.Client, query: str, k: int = 5, target: str = "image") -> dict:
    response = client.post("/search", json={"query": query, "k": k, "target": target})
    assert response.status_code == 200, response.text
    return response.json()


def test_text_search_returns_keys_scores_captions_metadata_and_links(client: httpx.Client) -> None:
    body = search(client, "a cat sitting on a sofa", k=7)
    hits = body["results"]
    assert body["kind"] == "text" and body["target"] == "image" and len(hits) == 7
    assert [h["rank"] for h in hits] == list(range(1, 8))
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        assert hit["caption"] and hit["metadata"]["source"].startswith("skimage.data.")
        assert hit["item"] == f"/items/{hit['shard']}/{hit['key']}"
        assert hit["thumbnail"] == f"/thumbnails/{hit['shard']}/{hit['key']}"
        assert hit["width"] > 0 and hit["height"] > 0


def test_caption_search_finds_the_exact_caption(client: httpx.Client) -> None:
    hits = search(client, ROCKET, k=2, target="text")["results"]
    assert [h["caption"] for h in hits] == [ROCKET, ROCKET]  # the original and the flipped copy
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_an_uploaded_image_finds_itself_first(client: httpx.Client, demo_photos: Path) -> None:
    photo = photo_file(demo_photos, "chelsea-original")
    response = client.post("/search", files={"image": (photo.name, photo.read_bytes())}, data={"k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "image" and body["query"] == photo.name and len(body["results"]) == 3
    first = body["results"][0]
    assert first["score"] == pytest.approx(1.0, abs=1e-4)
    assert first["metadata"]["source_path"] == photo.name


def test_image_to_caption_search(client: httpx.Client, demo_photos: Path) -> None:
    photo = photo_file(demo_photos, "rocket-original")
    files = {"image": (photo.name, photo.read_bytes(), "image/jpeg")}
    response = client.post("/search", files=files, data={"k": "4", "target": "text"})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 4


def test_item_has_the_embed_jobs_metadata(client: httpx.Client, served_index: Path) -> None:
    emb = pq.read_table(served_index.parent / "embeddings" / "00001.parquet").to_pylist()[3]
    item = client.get(f"/items/00001/{emb['key']}").json()
    assert item["key"] == emb["key"] and item["shard"] == "00001" and item["offset"] == emb["offset"]
    assert item["caption"] == emb["caption"] and item["sha256"] == emb["sha256"]
    assert item["metadata"] == json.loads(emb["metadata"])
    assert (item["width"], item["height"]) == (emb["width"], emb["height"])
    assert item["image"] == f"/thumbnails/00001/{emb['key']}?size=large"


def _difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB").resize(a.size))).mean) / 3


def test_thumbnail_is_the_samples_image_resized_and_cached(
    client: httpx.Client, demo_photos: Path, serve_config: ServeConfig
) -> None:
    hit = search(client, "portrait of an astronaut", k=1, target="text")["results"][0]
    response = client.get(hit["thumbnail"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert max(thumb.size) == serve_config.thumbnail_size
    source = hit["metadata"]["source_path"]
    sibling = source.replace("original", "flipped") if "original" in source else source.replace("flipped", "original")
    same = _difference(thumb, Image.open(demo_photos / source))
    assert same < 8 < _difference(thumb, Image.open(demo_photos / sibling))

    large = client.get(hit["thumbnail"], params={"size": "large"})
    assert max(Image.open(io.BytesIO(large.content)).size) == min(
        serve_config.detail_size, max(hit["width"], hit["height"])
    )
    assert client.get(hit["thumbnail"]).content == response.content  # served from the cache
    assert _metric(client, "mmembed_thumbnail_cache_total", result="hit") >= 1


def test_unknown_or_hostile_keys_are_404_without_touching_files(client: httpx.Client) -> None:
    paths = ("/items/00000/nope", "/thumbnails/00000/nope", "/items/..%2F..%2Fetc/passwd", "/thumbnails/x/%2Fetc")
    for path in paths:
        response = client.get(path)
        assert response.status_code == 404, path
        assert "no sample with key" in response.json()["detail"]
    assert client.get("/thumbnails/00000/" + "x" * 5000).status_code == 404
    assert client.get("/items/nope", follow_redirects=True).status_code == 404  # a key alone names no sample


def test_thumbnail_size_is_checked(client: httpx.Client) -> None:
    hit = search(client, "coffee", k=1)["results"][0]
    response = client.get(f"/thumbnails/{hit['shard']}/{hit['key']}", params={"size": "huge"})
    assert response.status_code == 422 and "small" in response.json()["detail"]


def test_concurrent_queries_all_succeed_with_the_same_answers(client: httpx.Client, base_url: str) -> None:
    queries = [f"{q} {i}" for i in range(6) for q in ("a cat", "a rocket", "coffee cup", "a horse")]
    expected = {q: [h["key"] for h in search(client, q, k=5)["results"]] for q in queries}

    def one(query: str) -> list[str]:
        with httpx.Client(base_url=base_url, timeout=30) as c:
            return [h["key"] for h in search(c, query, k=5)["results"]]

    with ThreadPoolExecutor(16) as pool:
        got = dict(zip(queries, pool.map(one, queries), strict=True))
    assert got == expected


def test_healthz(client: httpx.Client) -> None:
    health = client.get("/healthz").json()
    assert health == {
        "status": "ok",
        "count": 38,
        "dim": 64,
        "model": "mmembed-tiny",
        "index_key": "Flat",
        "text_rows": 38,
        "shards_known": 4,
    }


def _metric(client: httpx.Client, family: str, **labels: str) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_metrics_in_prometheus_text_format(client: httpx.Client) -> None:
    search(client, "a boat", k=3)
    client.get("/items/00000/definitely-missing")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert _metric(client, "mmembed_http_requests_total", route="/search", status="200", method="POST") >= 1
    assert _metric(client, "mmembed_http_requests_total", route="/items/{shard}/{key:path}", status="404") >= 1
    assert _metric(client, "mmembed_http_request_duration_seconds_count", route="/search") >= 1
    assert _metric(client, "mmembed_http_request_duration_seconds_bucket", route="/search", le="+Inf") >= 1
    assert _metric(client, "mmembed_query_encode_seconds_count", query="text") >= 1
    assert _metric(client, "mmembed_index_vectors", modality="image") == 38
    assert _metric(client, "mmembed_index_file_bytes", modality="text") > 0


def test_unmatched_paths_share_one_metrics_label(client: httpx.Client) -> None:
    for i in range(3):
        assert client.get(f"/no/such/path/{i}").status_code == 404
    text = client.get("/metrics").text
    assert "/no/such/path" not in text and 'route="<unmatched>"' in text


def test_openapi_spec_documents_both_query_kinds(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    routes = {"/search", "/items/{shard}/{key}", "/thumbnails/{shard}/{key}", "/healthz", "/metrics"}
    assert routes <= set(spec["paths"])
    content = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} == set(content)
    assert "image" in content["multipart/form-data"]["schema"]["properties"]
    assert client.get("/docs").status_code == 200


def test_page_and_static_files_are_served(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert client.get("/static/../config.py").status_code == 404


def test_server_listens_on_loopback_by_default() -> None:
    assert ServeConfig(index_dir="x").host == "127.0.0.1"
