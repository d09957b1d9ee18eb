"""clip-retrieval's back-end protocol (/indices-list, /knn-service, /metadata) against the real demo server: the
request bodies exactly as clip-retrieval 2.45.0's ClipClient (``clip_client.py``) and clip-front
(``front/src/clip-service.js``) send them, and the real ClipClient, loaded from its wheel (``make install``
downloads it without dependencies; its client module needs only requests)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import types
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmembed.config import ConfigError
from mmembed.index import IndexBuildConfig, build_index
from mmembed.serve.clipcompat import DUPLICATE_SIMILARITY, index_name, near_duplicates, repeated, stored_vectors
from mmembed.serve.config import ServeConfig
from tests.serve.conftest import MAX_K, other_server
from tests.serve.test_api import ROCKET, photo_file

NAME = "index"  # the demo index dir is <tmp>/index
CLIP_CLIENT_WHEEL = Path(sys.prefix) / "wheels" / "clip_retrieval-2.45.0-py3-none-any.whl"
CLIP_CLIENT_SHA256 = "07f52947727b75fa0b22f0f938f352c90ea0f4fa3d4c0b2e3d284a42c1a497e4"
RESULT_FIELDS = {"id", "similarity", "caption", "url", "shard", "key", "source_url"}


def client_body(**fields: Any) -> dict[str, Any]:
    """ClipClient.__search_knn_api__'s JSON, with ClipClient's defaults (num_result_ids = num_images)."""
    body = {
        "text": None,
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "deduplicate": True,
        "use_safety_model": True,
        "use_violence_detector": True,
        "indice_name": NAME,
        "use_mclip": False,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "image",
        "num_images": 40,
    }
    body.update(fields)
    body["num_result_ids"] = body["num_images"]
    return body


def knn(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    """POST as requests does for ``data=json.dumps(...)``: a str body and no Content-Type."""
    return client.post("/knn-service", content=json.dumps(body))


def knn_ok(client: httpx.Client, **fields: Any) -> list[dict[str, Any]]:
    response = knn(client, client_body(**fields))
    assert response.status_code == 200, response.text
    return response.json()


def front_post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST as clip-front's fetch() with a string body does: Content-Type text/plain."""
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "text/plain;charset=UTF-8"})


def stored(served_index: Path, column: str = "image_embedding") -> dict[tuple[str, str], np.ndarray]:
    """(shard, key) -> the embed job's vector, read from its Parquet files (not through the index)."""
    out = {}
    for path in sorted((served_index.parent / "embeddings").glob("*.parquet")):
        table = pq.read_table(path, columns=["shard", "key", column]).to_pylist()
        out.update({(r["shard"], r["key"]): np.asarray(r[column], np.float32) for r in table})
    return out


def test_indices_list_names_the_served_index(client: httpx.Client, serve_config: ServeConfig) -> None:
    assert client.get("/indices-list").json() == [NAME] == [index_name(serve_config.index_dir)]
    assert index_name("s3://bucket/runs/index-2024/") == "index-2024"


def test_client_text_query_returns_ranked_ids_with_links(client: httpx.Client, base_url: str) -> None:
    response = knn(client, client_body(text="a cat sitting on a sofa", num_images=7, deduplicate=False))
    assert response.status_code == 200, response.text
    results = response.json()
    assert len(results) == 7 and all(set(r) == RESULT_FIELDS for r in results)
    assert [r["similarity"] for r in results] == sorted((r["similarity"] for r in results), reverse=True)
    ours = client.post("/search", json={"query": "a cat sitting on a sofa", "k": 7}).json()["results"]
    assert [(r["id"], r["shard"], r["key"], r["caption"]) for r in results] == [
        (h["row_id"], h["shard"], h["key"], h["caption"]) for h in ours
    ]
    assert [r["similarity"] for r in results] == pytest.approx([h["score"] for h in ours], abs=1e-6)
    first = results[0]
    assert first["url"] == f"{base_url}/thumbnails/{first['shard']}/{first['key']}?size=large"
    image = client.get(first["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).format == "JPEG"
    ignored = set(response.headers["x-ignored-options"].split(","))
    assert ignored == {"use_safety_model", "use_violence_detector", "aesthetic_score", "aesthetic_weight"}
    assert response.headers["x-deduplicated-by"] == "off"


def test_metadata_resolves_ids_to_samples(client: httpx.Client) -> None:
    ids = [r["id"] for r in knn_ok(client, text="a horse", num_images=4)]
    response = front_post(client, "/metadata", {"ids": ids, "indice_name": NAME})
    assert response.status_code == 200, response.text
    entries = response.json()
    assert [e["id"] for e in entries] == ids
    for entry in entries:
        meta = entry["metadata"]
        item = client.get(f"/items/{meta['shard']}/{meta['key']}").json()
        assert item["row_id"] == entry["id"]
        assert (meta["caption"], meta["metadata"], meta["sha256"]) == (
            item["caption"],
            item["metadata"],
            item["sha256"],
        )
        assert meta["url"].endswith(item["image"]) and meta["source_url"] == item["url"]
    assert front_post(client, "/metadata", {"ids": [], "indice_name": NAME}).json() == []


def test_front_body_returns_ids_only_past_num_images(client: httpx.Client) -> None:
    body = {
        "text": "coffee",
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "modality": "image",
        "num_images": 3,
        "indice_name": NAME,
        "num_result_ids": 10,
        "use_mclip": False,
        "deduplicate": False,
        "use_safety_model": False,
        "use_violence_detector": False,
        "aesthetic_score": "",
        "aesthetic_weight": 0.5,
    }
    response = front_post(client, "/knn-service", body)
    assert response.status_code == 200, response.text
    results = response.json()
    assert len(results) == 10
    assert all(set(r) == RESULT_FIELDS for r in results[:3]) and all(
        set(r) == {"id", "similarity"} for r in results[3:]
    )
    assert response.headers["x-ignored-options"] == "aesthetic_weight"


def test_counts_over_max_k_are_capped(client: httpx.Client) -> None:
    response = knn(client, client_body(text="a boat", num_images=MAX_K + 10, deduplicate=False))
    assert response.status_code == 200 and response.headers["x-results-capped"] == str(MAX_K)
    assert len(response.json()) == 38  # the whole demo index (38 < MAX_K)
    assert "x-results-capped" not in knn(client, client_body(text="a boat", num_images=5)).headers


def test_deduplicate_drops_the_identical_caption(client: httpx.Client) -> None:
    plain = knn_ok(client, text=ROCKET, modality="text", num_images=3, deduplicate=False)
    assert [r["caption"] for r in plain[:2]] == [ROCKET, ROCKET]  # the original and its flipped copy
    response = knn(client, client_body(text=ROCKET, modality="text", num_images=3))
    deduped = response.json()
    assert response.headers["x-deduplicated-by"] == "embedding"
    assert [r["caption"] for r in deduped].count(ROCKET) == 1 and deduped[0]["id"] == plain[0]["id"]
    assert [r["id"] for r in deduped] == [plain[0]["id"]] + [r["id"] for r in plain[2:]]


def test_deduplicate_follows_clip_backs_rule_on_image_vectors(client: httpx.Client, served_index: Path) -> None:
    """Results whose stored image vectors are linked (cosine > 0.94), directly or through a chain of others, form
    a group, and only each group's best-ranked result is kept (clip_back's connected components)."""
    vectors = stored(served_index)
    query = {"text": "a photo", "num_images": MAX_K}
    plain = knn_ok(client, deduplicate=False, **query)
    kept = knn_ok(client, deduplicate=True, **query)
    unit = [vectors[(r["shard"], r["key"])] / np.linalg.norm(vectors[(r["shard"], r["key"])]) for r in plain]
    group = list(range(len(plain)))  # union-find over ranks: a group's label is its best (smallest) rank

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i in range(len(plain)):
        for j in range(i):
            if float(unit[i] @ unit[j]) > DUPLICATE_SIMILARITY:
                a, b = sorted((root(i), root(j)))
                group[b] = a
    expected = [r["id"] for i, r in enumerate(plain) if root(i) == i]
    assert [r["id"] for r in kept] == expected
    assert len(kept) < len(plain)  # the demo holds flipped copies of each photo


def test_base64_image_finds_itself(client: httpx.Client, demo_photos: Path) -> None:
    photo = photo_file(demo_photos, "chelsea-original")
    encoded = base64.b64encode(photo.read_bytes()).decode("utf-8")
    results = knn_ok(client, image=encoded, num_images=3, deduplicate=False)
    assert results[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    meta = front_post(client, "/metadata", {"ids": [results[0]["id"]], "indice_name": NAME}).json()[0]["metadata"]
    assert meta["metadata"]["source_path"] == photo.name
    captions = knn_ok(client, image=encoded, modality="text", num_images=4, deduplicate=False)
    assert len(captions) == 4 and all(r["caption"] for r in captions)
    bad = knn(client, client_body(image="not base64 !!"))
    assert bad.status_code == 422 and "base64" in bad.json()["detail"]


def test_image_url_only_for_this_servers_thumbnails(client: httpx.Client, base_url: str) -> None:
    first = knn_ok(client, text="portrait of an astronaut", num_images=1)[0]
    again = knn_ok(client, image_url=first["url"], num_images=2, deduplicate=False)
    assert again[0]["id"] == first["id"] and again[0]["similarity"] > 0.95
    port = int(base_url.rsplit(":", 1)[1])
    for url in (
        "http://example.com/cat.jpg",
        f"http://127.0.0.1:{port + 1}/thumbnails/{first['shard']}/{first['key']}",  # another server
        f"{base_url}/items/{first['shard']}/{first['key']}",
        "file:///etc/passwd",
    ):
        response = knn(client, client_body(image_url=url))
        assert response.status_code == 422, url
        assert "fetches no URL" in response.json()["detail"] and "'image'" in response.json()["detail"]
    missing = knn(client, client_body(image_url=f"{base_url}/thumbnails/{first['shard']}/no-such-key"))
    assert missing.status_code == 404 and "no sample with key" in missing.json()["detail"]


def test_embedding_input_is_normalised_and_checked(client: httpx.Client, served_index: Path) -> None:
    (shard, key), vector = next(iter(stored(served_index).items()))
    results = knn_ok(client, embedding_input=(3.0 * vector).tolist(), num_images=2)
    assert (results[0]["shard"], results[0]["key"]) == (shard, key)
    assert results[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    for wrong, message in (([0.1] * 3, "has 3 values"), ([0.0] * len(vector), "not all zero")):
        response = knn(client, client_body(embedding_input=wrong))
        assert response.status_code == 422 and message in response.json()["detail"]


def test_bad_requests_say_what_to_fix(client: httpx.Client) -> None:
    cases = [
        (client_body(text="a cat", indice_name="laion5B-L-14"), 404, "available: ['index']"),
        (client_body(text="a cat", embedding_input=[0.5] * 64), 422, "exactly one of"),
        (client_body(), 422, "got none"),
        ({k: v for k, v in client_body(text="a cat").items() if k != "num_images"}, 422, "num_images"),
        (client_body(text="a cat", num_images=0), 422, "num_images"),
        (client_body(text="a cat", modality="audio"), 422, "modality"),
    ]
    for body, status, message in cases:
        response = knn(client, body)
        assert response.status_code == status and message in response.json()["detail"], (body, response.text)
    malformed = client.post("/knn-service", content=b"{not json")
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["detail"]
    unknown = front_post(client, "/metadata", {"ids": [0, 38, -1], "indice_name": NAME})
    assert unknown.status_code == 404 and "[38, -1]" in unknown.json()["detail"]
    other = front_post(client, "/metadata", {"ids": [0], "indice_name": "laion5B-L-14"})
    assert other.status_code == 404 and "'index'" in other.json()["detail"]


def test_openapi_documents_the_protocol(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/indices-list", "/knn-service", "/metadata"} <= set(paths)
    schema = paths["/knn-service"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"text", "image", "image_url", "embedding_input", "modality", "num_images"} <= set(schema["properties"])


# --- the dedup rule on its own ------------------------------------------------------------------------------


def test_near_duplicates_drop_whole_chains_but_their_best() -> None:
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.3), np.sin(0.3), 0.0])  # a~b and b~c, but a and c are 0.6 rad apart (cos 0.83)
    c = np.array([np.cos(0.6), np.sin(0.6), 0.0])
    d = np.array([0.0, 0.0, 1.0])
    close = np.cos(0.3) > DUPLICATE_SIMILARITY > np.cos(0.6)
    assert close
    vectors = np.stack([d, a, b, c, d]).astype(np.float32)
    assert near_duplicates(vectors).tolist() == [2, 3, 4]
    assert near_duplicates(vectors[:1]).tolist() == []
    assert repeated(["x", None, "y", "x", None, "y"]).tolist() == [3, 5]


def test_stored_vectors_come_from_the_index_or_none(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    faiss.normalize_L2(x)
    ids = np.array([3, 599, 42])
    flat = faiss.index_factory(16, "Flat", faiss.METRIC_INNER_PRODUCT)
    flat.add(x)
    assert np.allclose(stored_vectors(flat, ids), x[ids])
    ivfpq = faiss.index_factory(16, "IVF4,PQ4x4np", faiss.METRIC_INNER_PRODUCT)
    ivfpq.train(x)
    ivfpq.add(x)
    assert stored_vectors(ivfpq, ids) is None  # codes only, no id -> list map: exact duplicates are used instead


def test_an_index_without_its_vectors_drops_exact_duplicates(
    serve_config: ServeConfig, served_index: Path, tmp_path: Path
) -> None:
    """IVF-PQ without re-ranking cannot give its vectors back: identical captions (modality text) and identical
    image bytes (modality image) are what is dropped there, and the header says so."""
    out = tmp_path / "ivfpq"
    build_index(IndexBuildConfig(embeddings_dir=str(served_index.parent), out_dir=str(out), index_key="IVF1,PQ8x4np"))
    with other_server(serve_config, index_dir=str(out)) as client:
        assert client.get("/indices-list").json() == ["ivfpq"]
        body = client_body(text=ROCKET, modality="text", num_images=3, indice_name="ivfpq")
        plain = knn(client, {**body, "deduplicate": False}).json()
        assert [r["caption"] for r in plain[:2]] == [ROCKET, ROCKET]
        response = knn(client, body)
        assert response.headers["x-deduplicated-by"] == "caption"
        assert [r["id"] for r in response.json()] == [plain[0]["id"]] + [r["id"] for r in plain[2:]]
        images = knn(client, {**body, "modality": "image"})
        assert images.status_code == 200 and images.headers["x-deduplicated-by"] == "sha256"


def test_only_named_origins_may_read_the_answers(client: httpx.Client, serve_config: ServeConfig) -> None:
    front, other = "https://front.example", "https://elsewhere.example"
    preflight = {"Origin": front, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x"}
    body = client_body(text=ROCKET, num_images=1)
    default = client.post("/knn-service", json=body, headers={"Origin": front})
    assert default.status_code == 200 and "access-control-allow-origin" not in default.headers
    with other_server(serve_config, cors_origins=(front,)) as allowed:
        assert allowed.options("/knn-service", headers=preflight).headers["access-control-allow-origin"] == front
        answer = allowed.post("/knn-service", json=body, headers={"Origin": front})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == front
        stranger = allowed.post("/knn-service", json=body, headers={"Origin": other})
        assert "access-control-allow-origin" not in stranger.headers
    with pytest.raises(ConfigError, match=r"--cors-origin 'front\.example/x' is not an origin"):
        replace(serve_config, cors_origins=("front.example/x",))


# --- the real client ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_client() -> types.ModuleType:
    """clip-retrieval's ``clip_client.py``, loaded alone from its wheel (importing the package would pull in
    flask, torch and the rest of clip-retrieval's server through its ``__init__``)."""
    if not CLIP_CLIENT_WHEEL.is_file():
        pytest.fail(f"{CLIP_CLIENT_WHEEL} is missing: run `make install` (it downloads clip-retrieval's wheel)")
    data = CLIP_CLIENT_WHEEL.read_bytes()
    assert hashlib.sha256(data).hexdigest() == CLIP_CLIENT_SHA256, f"{CLIP_CLIENT_WHEEL}: not the wheel expected"
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        source = wheel.read("clip_retrieval/clip_client.py")
    module = types.ModuleType("clip_retrieval_client")
    exec(compile(source, f"{CLIP_CLIENT_WHEEL.name}/clip_retrieval/clip_client.py", "exec"), module.__dict__)
    return module


def test_the_real_clip_client_works_unchanged(
    clip_client: types.ModuleType, base_url: str, demo_photos: Path, served_index: Path
) -> None:
    client = clip_client.ClipClient(url=f"{base_url}/knn-service", indice_name=NAME, num_images=5)
    by_text = client.query(text="a cat sitting on a sofa")
    assert 0 < len(by_text) <= 5 and all(set(r) == RESULT_FIELDS for r in by_text)
    photo = photo_file(demo_photos, "rocket-original")
    by_file = client.query(image=str(photo))
    assert by_file[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    by_url = client.query(image=by_file[0]["url"])  # starts with http: sent as image_url
    assert by_url[0]["id"] == by_file[0]["id"]
    (shard, key), vector = next(iter(stored(served_index).items()))
    by_vector = client.query(embedding_input=vector.tolist())
    assert (by_vector[0]["shard"], by_vector[0]["key"]) == (shard, key)
    captions = clip_client.ClipClient(
        url=f"{base_url}/knn-service", indice_name=NAME, modality=clip_client.Modality.TEXT, num_images=3
    ).query(text=ROCKET)
    assert captions[0]["caption"] == ROCKET and [r["caption"] for r in captions].count(ROCKET) == 1  # deduplicated
    wrong = clip_client.ClipClient(url=f"{base_url}/knn-service", indice_name="laion5B-L-14").query(text="a cat")
    assert "available: ['index']" in wrong["detail"]
