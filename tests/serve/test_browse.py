"""GET /browse (a seeded random sample of the index) and "more like this" (POST /search with ``like``) against
the real demo server."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import MAX_K, other_server


def like(client: httpx.Client, shard: str, key: str, **fields: object) -> httpx.Response:
    return client.post("/search", json={"like": {"shard": shard, "key": key}, **fields})


def test_browse_is_a_seeded_sample_shaped_like_search_hits(client: httpx.Client) -> None:
    first = client.get("/browse", params={"n": 12, "seed": 7})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["seed"] == 7 and body["count"] == 38 and len(body["results"]) == 12
    hits = body["results"]
    assert [h["rank"] for h in hits] == list(range(1, 13))
    assert len({(h["shard"], h["key"]) for h in hits}) == 12  # drawn without repeats
    search_hit = client.post("/search", json={"query": "a cat", "k": 1}).json()["results"][0]
    for hit in hits:
        assert set(hit) == set(search_hit)
        assert hit["score"] is None  # no query, no score
        assert hit["thumbnail"] == f"/thumbnails/{hit['shard']}/{hit['key']}"
        assert hit["metadata"]["source"].startswith("skimage.data.") and hit["width"] > 0
    assert client.get("/browse", params={"n": 12, "seed": 7}).json()["results"] == hits  # reproducible
    other = client.get("/browse", params={"n": 12, "seed": 8}).json()["results"]
    assert [h["key"] for h in other] != [h["key"] for h in hits]
    assert client.get("/browse").json()["seed"] == 0  # the default seed: a plain GET is reproducible too


def test_browse_takes_at_most_the_whole_index_and_checks_its_arguments(client: httpx.Client) -> None:
    everything = client.get("/browse", params={"n": MAX_K}).json()["results"]
    assert len(everything) == 38 and len({h["row_id"] for h in everything}) == 38
    for params, text in (({"n": 0}, "n must be"), ({"n": MAX_K + 1}, "n must be"), ({"seed": -1}, "seed must")):
        response = client.get("/browse", params=params)
        assert response.status_code == 422 and text in response.json()["detail"], response.text
    response = client.get("/browse", params={"n": "many"})
    assert response.status_code == 422 and "n" in response.json()["detail"]


def test_more_like_this_finds_the_sample_itself_first(client: httpx.Client) -> None:
    for sample in client.get("/browse", params={"n": 3, "seed": 1}).json()["results"]:
        response = like(client, sample["shard"], sample["key"], k=4)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["kind"] == "image" and body["query"] == f"{sample['shard']}/{sample['key']}"
        first = body["results"][0]
        assert (first["shard"], first["key"]) == (sample["shard"], sample["key"])
        assert first["score"] == pytest.approx(1.0, abs=1e-4) and len(body["results"]) == 4


def test_more_like_this_ranks_captions_too(client: httpx.Client) -> None:
    sample = client.post("/search", json={"query": "a rocket", "k": 1, "target": "text"}).json()["results"][0]
    response = like(client, sample["shard"], sample["key"], k=3, target="text")
    assert response.status_code == 200 and response.json()["target"] == "text"
    assert len(response.json()["results"]) == 3


def test_more_like_this_refusals_say_what_to_fix(client: httpx.Client) -> None:
    response = like(client, "00000", "no-such-key")
    assert response.status_code == 404 and "no sample with key 'no-such-key'" in response.json()["detail"]
    sample = client.get("/browse", params={"n": 1}).json()["results"][0]
    both = {"query": "a cat", "like": {"shard": sample["shard"], "key": sample["key"]}}
    for body in (both, {"k": 3}, {"like": {"shard": "00000"}}):
        response = client.post("/search", json=body)
        assert response.status_code == 422, body
    assert 'either "query"' in client.post("/search", json=both).json()["detail"]
    assert "like.key" in client.post("/search", json={"like": {"shard": "00000"}}).json()["detail"]


def test_without_shards_browse_has_no_thumbnails_and_like_says_to_pass_them(
    client: httpx.Client,
    serve_config,  # noqa: ANN001
) -> None:
    sample = client.get("/browse", params={"n": 1, "seed": 2}).json()["results"][0]
    with other_server(serve_config, shards=()) as bare:
        hits = bare.get("/browse", params={"n": 5}).json()["results"]
        assert len(hits) == 5 and all(h["thumbnail"] is None for h in hits)
        response = like(bare, sample["shard"], sample["key"])
        assert response.status_code == 404
        assert "cannot search like this sample" in response.json()["detail"]
        assert "--shards" in response.json()["detail"]


def test_more_like_this_over_the_upload_limit_names_the_flag(client: httpx.Client, serve_config) -> None:  # noqa: ANN001
    sample = client.get("/browse", params={"n": 1, "seed": 2}).json()["results"][0]
    with other_server(serve_config, max_upload_bytes=1024) as small:
        response = like(small, sample["shard"], sample["key"])
        assert response.status_code == 413 and "--max-upload-bytes" in response.json()["detail"]


def test_the_request_schema_documents_like_inline(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()["paths"]["/search"]["post"]["requestBody"]["content"]
    json_schema = schema["application/json"]["schema"]
    assert "$defs" not in json_schema and "$ref" not in str(json_schema)
    like_schema = json_schema["properties"]["like"]["anyOf"][0]
    assert set(like_schema["properties"]) == {"shard", "key"}
    assert {"query", "k", "target"} <= set(json_schema["properties"])
    assert "/browse" in client.get("/openapi.json").json()["paths"]


FLIPPED = "metadata->>'variant' = 'flipped'"


def test_browse_and_like_take_a_filter(client: httpx.Client) -> None:
    body = client.get("/browse", params={"n": MAX_K, "seed": 3, "where": FLIPPED}).json()
    assert body["count"] == 19 and body["where"] == FLIPPED and len(body["results"]) == 19
    assert {h["metadata"]["variant"] for h in body["results"]} == {"flipped"}
    bad = client.get("/browse", params={"where": "no_such_column > 1"})
    assert bad.status_code == 400 and "no_such_column" in bad.json()["detail"]

    original = client.get("/browse", params={"n": 1, "where": "metadata->>'variant' = 'original'"}).json()
    sample = original["results"][0]
    found = like(client, sample["shard"], sample["key"], k=5, where=FLIPPED).json()
    assert found["where"] == FLIPPED and len(found["results"]) == 5
    assert {h["metadata"]["variant"] for h in found["results"]} == {"flipped"}  # itself is filtered out
    mirrored = found["results"][0]["metadata"]["source"]
    assert mirrored == sample["metadata"]["source"]  # its flipped twin is the nearest that is left

    keyword = like(client, sample["shard"], sample["key"], mode="keyword")
    assert keyword.status_code == 422 and "mode 'keyword' ranks text queries" in keyword.json()["detail"]
