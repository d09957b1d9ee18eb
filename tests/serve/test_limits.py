"""Limits and bad input: every refusal is a 4xx with a message that says what to fix, never a 500."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mmembed.serve.config import ServeConfig
from tests.serve.conftest import MAX_K, MAX_QUERY, MAX_UPLOAD, other_server


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's calling card)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR data starts after signature + length + type
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def post_json(client: httpx.Client, body: bytes | str) -> httpx.Response:
    return client.post("/search", content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "malformed JSON"),
        (b'{"query": "a cat", "k": 5,}', 400, "malformed JSON"),
        (b"\xff\xfe\x00garbage", 400, "malformed JSON"),
        (b"[1, 2]", 422, "object"),
        (b'"a cat"', 422, "object"),
        (b"{}", 422, "query"),
        (b'{"query": 42}', 422, "query"),
        (b'{"query": "a cat", "k": "5"}', 422, "k"),
        (b'{"query": "a cat", "k": true}', 422, "k"),
        (b'{"query": "a cat", "k": 2.5}', 422, "k"),
        (b'{"query": "a cat", "k": 0}', 422, f"1..{MAX_K}"),
        (b'{"query": "a cat", "k": -3}', 422, f"1..{MAX_K}"),
        (f'{{"query": "a cat", "k": {MAX_K + 1}}}'.encode(), 422, f"1..{MAX_K}"),
        (b'{"query": "a cat", "k": 100000000000000000000000}', 422, "k"),
        (b'{"query": "a cat", "target": "audio"}', 422, "target"),
        (b'{"query": "a cat", "extra": 1}', 422, "extra"),
        (b'{"query": "   "}', 422, "empty"),
        (('{"query": "' + "x" * (MAX_QUERY + 1) + '"}').encode(), 413, "characters"),
    ],
)
def test_bad_json_queries_are_refused_with_a_reason(client: httpx.Client, body: bytes, status: int, words: str) -> None:
    response = post_json(client, body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_max_k_is_accepted(client: httpx.Client) -> None:
    response = post_json(client, f'{{"query": "a cat", "k": {MAX_K}}}')
    assert response.status_code == 200 and len(response.json()["results"]) == 38  # all there is


def test_non_image_uploads_are_refused(client: httpx.Client) -> None:
    for name, data in (("notes.txt", b"hello, I am text"), ("fake.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 100)):
        response = client.post("/search", files={"image": (name, data)})
        assert response.status_code == 415, response.text
        assert "not a decodable image" in response.json()["detail"] and name in response.json()["detail"]


def test_an_empty_upload_is_refused(client: httpx.Client) -> None:
    response = client.post("/search", files={"image": ("empty.png", b"")})
    assert response.status_code == 400 and "empty" in response.json()["detail"]


def test_decompression_bomb_is_refused_before_decoding(client: httpx.Client) -> None:
    response = client.post("/search", files={"image": ("bomb.png", png_claiming(60_000, 60_000))})
    assert response.status_code == 413, response.text
    assert "decompression-bomb guard" in response.json()["detail"]


def test_an_oversize_upload_is_refused(client: httpx.Client) -> None:
    response = client.post("/search", files={"image": ("big.jpg", b"\xff" * (MAX_UPLOAD + 100_000))})
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]


def test_an_oversize_chunked_body_is_refused_while_streaming(client: httpx.Client) -> None:
    def chunks():  # no Content-Length: the limit is enforced on the bytes as they arrive
        for _ in range(MAX_UPLOAD // 65536 + 4):
            yield b" " * 65536

    response = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]


def field(value: str) -> tuple[None, str]:
    return (None, value)


@pytest.mark.parametrize(
    ("parts", "status", "words"),
    [
        ([("k", field("3"))], 422, "no query"),
        ([("image", field("not a file"))], 422, "must be a file"),
        ([("image", ("a.png", png_claiming(4, 4))), ("query", field("a cat"))], 422, "not both"),
        ([("image", ("a.png", b"x")), ("k", field("many"))], 422, "k must be"),
        ([("image", ("a.png", b"x")), ("target", field("audio"))], 422, "target"),
        ([("image", ("a.png", b"x")), ("colour", field("red"))], 422, "unknown form fields"),
        ([("image", ("a.png", b"x")), ("image", ("b.png", b"y"))], 400, "files"),
    ],
)
def test_bad_forms_are_refused(client: httpx.Client, parts: list, status: int, words: str) -> None:
    response = client.post("/search", files=parts)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_a_text_query_may_come_as_a_form_field(client: httpx.Client) -> None:
    response = client.post("/search", files=[("query", field("a rocket")), ("k", field("2"))])
    assert response.status_code == 200 and len(response.json()["results"]) == 2


def test_malformed_multipart_is_a_400(client: httpx.Client) -> None:
    for ctype in ("multipart/form-data", "multipart/form-data; boundary=xyz"):
        response = client.post("/search", content=b"--abc\r\ngarbage", headers={"content-type": ctype})
        assert 400 <= response.status_code < 500, (ctype, response.text)


def test_wrong_methods_and_paths_are_4xx(client: httpx.Client) -> None:
    assert client.get("/search").status_code == 405
    assert client.delete("/items/00000/000000001").status_code == 405
    assert client.get("/nothing-here").status_code == 404


def test_random_garbage_never_gets_a_500(client: httpx.Client) -> None:
    rng = random.Random(1234)
    pieces = [b"{", b"}", b'"query"', b":", b",", b'"k"', b"1e309", b"null", b"\x00", b"\xc3(", b"[", b"]", b'"a"']
    for _ in range(150):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        ctype = rng.choice(["application/json", "text/plain", "multipart/form-data; boundary=q", ""])
        response = client.post("/search", content=body, headers={"content-type": ctype} if ctype else {})
        assert 200 <= response.status_code < 500, (body, ctype, response.text)


def test_without_shards_thumbnails_say_how_to_get_them(serve_config: ServeConfig, tmp_path: Path) -> None:
    with other_server(serve_config, shards=()) as client:
        hit = client.post("/search", json={"query": "a cat", "k": 1}).json()["results"][0]
        assert hit["thumbnail"] is None
        response = client.get(f"/thumbnails/{hit['shard']}/{hit['key']}")
        assert response.status_code == 404 and "--shards" in response.json()["detail"]
        assert client.get(f"/items/{hit['shard']}/{hit['key']}").json()["metadata"]["source"]  # items still work


def test_gzip_shards_get_a_clear_404(serve_config: ServeConfig, demo_shards: list[str], tmp_path: Path) -> None:
    import gzip

    gz = tmp_path / "00000.tar.gz"
    gz.write_bytes(gzip.compress(Path(demo_shards[0]).read_bytes()))
    with other_server(serve_config, shards=(str(gz),)) as client:
        hits = client.post("/search", json={"query": "a cat", "k": 38}).json()["results"]
        hit = next(h for h in hits if h["shard"] == "00000")
        response = client.get(hit["thumbnail"])
        assert response.status_code == 404 and "gzip" in response.json()["detail"]
        assert client.get("/healthz").json()["shards_known"] == 1
