"""``mmembed serve`` over a bucket, against a real S3-protocol server (moto) on loopback: shards made into the
bucket by ``make-shards``, embedded into it by ``embed``, an index beside them; the server reads each image by
byte ranges of its shard object. A counting proxy between the clients and the S3 server records every request
and the bytes each response carried, so "never a whole shard" is measured on the wire, not assumed."""

from __future__ import annotations

import http.client
import json
import logging
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pyarrow.parquet as pq
import pytest

from mmembed import storage
from mmembed.cli import main
from mmembed.config import DecodeConfig
from mmembed.index import load_index
from mmembed.serve.catalog import Catalog
from mmembed.serve.config import ServeConfig
from mmembed.serve.server import running
from mmembed.serve.thumbnails import make_thumbnail
from mmembed.tarread import FIRST_READ, read_range
from tests.objectstore import create_bucket
from tests.serve.conftest import restoring_threads

TINY = ["--model", "mmembed-tiny", "--random-init", "--device", "cpu", "--batch-size", "8"]
THUMB, DETAIL = 64, 160
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}


@dataclass(frozen=True)
class Exchange:
    """One request the proxy forwarded: method, object path (``/bucket/key``), Range header, body bytes back."""

    method: str
    path: str
    range: str | None
    body_bytes: int


class _Forward(BaseHTTPRequestHandler):
    """Forwards a request to the S3 server as is (its Host header too, so signatures still match), returns the
    answer as is, and logs the exchange."""

    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        body = self._request_body()
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        path = urlsplit(self.path).path
        self.server.exchanges.append(Exchange(self.command, path, self.headers.get("Range"), len(data)))
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_HEADERS and not (name.lower() == "content-length" and self.command != "HEAD"):
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _request_body(self) -> bytes | None:
        """The request's body, whether sent with a length or in chunks."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the exchanges are the log


class CountingProxy(ThreadingHTTPServer):
    """An HTTP proxy on loopback in front of the S3 server that logs every exchange (``exchanges``)."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.exchanges: list[Exchange] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self, object_path: str) -> list[Exchange]:
        """The GETs of one object (``/bucket/key``) logged so far."""
        return [e for e in self.exchanges if e.method == "GET" and e.path == object_path]


@pytest.fixture(scope="module")
def proxy(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingProxy]:
    """Every S3 client of this module talks to the S3 server through a CountingProxy; remote indexes are
    cached in a temporary folder."""
    import s3fs

    server = CountingProxy(s3_endpoint)
    thread = threading.Thread(target=server.serve_forever, name="s3-counting-proxy", daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        env.setenv("MMEMBED_CACHE", str(tmp_path_factory.mktemp("index-cache")))
        s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep the direct endpoint
        try:
            yield server
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Stack:
    """What the module builds: the bucket, its index URL, and local copies of the shards for comparison."""

    bucket: str
    index: str
    shards: dict[str, Path]  # shard name -> a local copy of the object


@pytest.fixture(scope="module")
def stack(proxy: CountingProxy, demo_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """make-shards into a bucket, embed from it into it, index the embeddings into it; local shard copies."""
    bucket = create_bucket()
    shards, out, index = f"{bucket}/shards", f"{bucket}/emb", f"{bucket}/emb/index"
    assert main(["make-shards", "--images", str(demo_photos), "--out", shards, "--samples-per-shard", "10"]) == 0
    assert main(["embed", "--shards", f"{shards}/*.tar", "--out", out, *TINY]) == 0
    assert main(["index", "--embeddings", out, "--out", index]) == 0
    local = tmp_path_factory.mktemp("shard-copies")
    copies = {}
    for url in storage.glob(f"{shards}/*.tar"):
        copies[Path(url).stem] = local / Path(url).name
        storage.download(url, str(copies[Path(url).stem]))
    return Stack(bucket, index, copies)


def object_path(url: str) -> str:
    """``s3://bucket/key`` as the path of its path-style request (``/bucket/key``)."""
    return "/" + url.split("://", 1)[1]


def members_at(shard: Path) -> dict[int, bytes]:
    """A tar's regular members by the offset of their data, read by tarfile's own scan of the local copy."""
    with tarfile.open(shard) as tar:
        return {m.offset_data: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def embedded_rows(out: str) -> dict[tuple[str, str], dict]:
    """(shard, key) -> the embed job's row (metadata, offset, ...) from the bucket's embeddings files."""
    rows = {}
    for url in storage.glob(f"{out}/embeddings/*.parquet"):
        with storage.open_read(url) as f:
            for row in pq.read_table(f, columns=["key", "shard", "offset", "metadata", "sha256"]).to_pylist():
                rows[(row["shard"], row["key"])] = row
    return rows


def config(stack: Stack, **changes: object) -> ServeConfig:
    """The server over the bucket's index and shards, with no thumbnail cache: every image read hits S3."""
    settings = {"shards": (f"{stack.bucket}/shards/*.tar",), "port": 0, "thumbnail_size": THUMB}
    return ServeConfig(index_dir=stack.index, detail_size=DETAIL, thumbnail_cache_items=0, **{**settings, **changes})


def expected_bytes(offset: int, member_size: int, shard_size: int) -> int:
    """What reading one member by ranges costs: its header, then the first read (cut at the shard's end), and
    for a member larger than that first read, the rest of it."""
    return 512 + max(member_size, min(FIRST_READ, shard_size - offset))


def test_items_and_thumbnails_are_range_reads_of_the_bucket(stack: Stack, proxy: CountingProxy) -> None:
    rows = embedded_rows(f"{stack.bucket}/emb")
    assert len(rows) == 38
    members = {name: members_at(path) for name, path in stack.shards.items()}
    fetched = []  # the share of its shard each image read cost
    with restoring_threads(), running(config(stack)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz").json()["shards_known"] == 4
        hits = client.post("/search", json={"query": "a photo of a cat", "k": 5}).json()["results"]
        assert len(hits) == 5 and all(h["thumbnail"] for h in hits)  # the index in the bucket answers queries
        for (shard, key), row in sorted(rows.items()):
            item = client.get(f"/items/{shard}/{key}").json()
            assert (item["offset"], item["sha256"]) == (row["offset"], row["sha256"])
            assert item["metadata"] == json.loads(row["metadata"])  # read from the bucket's embeddings files
            member = members[shard][item["offset"]]  # the image member, found by tarfile's scan
            shard_object, shard_size = (
                object_path(f"{stack.bucket}/shards/{shard}.tar"),
                stack.shards[shard].stat().st_size,
            )
            for link, size in ((item["thumbnail"], THUMB), (item["image"], DETAIL)):
                before = len(proxy.gets(shard_object))
                response = client.get(link)
                assert response.status_code == 200, response.text
                assert response.content == make_thumbnail(member, size, DecodeConfig().max_image_pixels)
                reads = proxy.gets(shard_object)[before:]
                assert reads and all(r.range is not None for r in reads)  # ranged GETs only, never the object
                assert sum(r.body_bytes for r in reads) == expected_bytes(row["offset"], len(member), shard_size)
                assert sum(r.body_bytes for r in reads) < shard_size
                fetched.append(sum(r.body_bytes for r in reads) / shard_size)
    print(f"{len(fetched)} images: each read {min(fetched):.1%}..{max(fetched):.1%} of its shard's bytes")


def test_a_range_past_the_end_reads_nothing_remote_or_local(stack: Stack) -> None:
    """A shard cut since it was embedded: S3 refuses the range (416), a local file reads nothing; both give b""
    (then "no tar header", a clear 404), while a range that starts inside the object is cut at its end."""
    name, local = next(iter(sorted(stack.shards.items())))
    size = local.stat().st_size
    for url in (f"{stack.bucket}/shards/{name}.tar", str(local)):
        assert read_range(url, size + 512, size + 1024) == b""
        assert read_range(url, size - 100, size + 100) == local.read_bytes()[-100:]


def test_embeddings_moved_with_the_index_are_found_beside_it(stack: Stack) -> None:
    """An embed output moved within the store: the paths recorded in infos.json are gone, and the metadata is
    read from ``<index URL>/../embeddings/`` instead (the URL, not the local cache of the index)."""
    moved = f"{stack.bucket}/moved"
    for url in storage.glob(f"{stack.bucket}/emb/index/*") + storage.glob(f"{stack.bucket}/emb/embeddings/*"):
        storage.write_bytes(url.replace("/emb/", "/moved/"), storage.read_bytes(url))
    infos = json.loads(storage.read_bytes(f"{moved}/index/infos.json"))
    for source in infos["sources"]["files"]:
        source["path"] = source["path"].replace("/emb/", "/gone/")  # where the files were: nothing there now
    storage.write_bytes(f"{moved}/index/infos.json", json.dumps(infos).encode())
    catalog = Catalog(load_index(f"{moved}/index"))
    rows = embedded_rows(f"{stack.bucket}/emb")
    for row in catalog.rows(list(range(catalog.count))):
        assert row["metadata"] == json.loads(rows[(row["shard"], row["key"])]["metadata"])


def copy_of_shards(stack: Stack) -> str:
    """The shards copied into a new bucket (which a test may then empty and delete); the new pattern."""
    bucket = create_bucket("mmembed-doomed")
    for name, path in stack.shards.items():
        storage.write_bytes(f"{bucket}/shards/{name}.tar", path.read_bytes())
    return f"{bucket}/shards/*.tar"


def delete_bucket(bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    name = bucket.split("://", 1)[1]
    for found in client.list_objects_v2(Bucket=name).get("Contents", []):
        client.delete_object(Bucket=name, Key=found["Key"])
    client.delete_bucket(Bucket=name)


def test_a_missing_shard_object_or_bucket_is_a_404_naming_only_the_sample(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    pattern = copy_of_shards(stack)
    doomed = pattern.split("/shards/", 1)[0]
    sample = dict(sorted(embedded_rows(f"{stack.bucket}/emb")))  # shard -> one of its keys
    first, gone, in_gone_bucket = sorted(sample)[:3]
    with restoring_threads(), running(config(stack, shards=(pattern,))) as url, httpx.Client(base_url=url) as client:
        assert client.get(f"/thumbnails/{first}/{sample[first]}").status_code == 200
        storage.delete([f"{doomed}/shards/{gone}.tar"])
        with caplog.at_level(logging.WARNING, logger="mmembed.serve.thumbnails"):
            answers = {gone: client.get(f"/thumbnails/{gone}/{sample[gone]}")}
            delete_bucket(doomed)
            answers[in_gone_bucket] = client.get(f"/thumbnails/{in_gone_bucket}/{sample[in_gone_bucket]}")
        for shard, response in answers.items():
            detail = response.json()["detail"]
            assert response.status_code == 404, detail
            assert detail.startswith(
                f"sample {sample[shard]}: cannot read shard '{shard}': its file, object or bucket is missing"
            )
            assert "s3://" not in detail and doomed.split("://")[1] not in detail  # no bucket, no URL for clients
            assert f"{doomed}/shards/{shard}.tar" in caplog.text  # the operator's log has the URL
        assert client.get(f"/items/{gone}/{sample[gone]}").status_code == 200  # items need no shard


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{bucket}/nothing-here/*.tar", "shard pattern '{bucket}/nothing-here/*.tar' matched no files"),
        ("{bucket}/shards/{{00010..00012}}.tar", "no shard of '{bucket}/shards/{{00010..00012}}.tar' exists"),
        (
            "s3://no-such-bucket-mmembed/shards/*.tar",
            "s3://no-such-bucket-mmembed/shards/*.tar: the bucket 'no-such-bucket-mmembed' does not",
        ),
    ],
)
def test_start_up_names_shards_that_match_nothing(
    stack: Stack, pattern: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = pattern.format(bucket=stack.bucket)
    assert main(["serve", "--index", stack.index, "--shards", shards, "--port", "0"]) == 2
    assert f"serve --shards: {message.format(bucket=stack.bucket)}" in capsys.readouterr().err
