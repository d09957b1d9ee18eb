"""mmembed.storage against a real S3-protocol server (moto on loopback) and the local disk: the same calls,
objects that appear only when complete, and errors that name the bucket or object."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from mmembed import storage
from mmembed.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty folder: on the local disk, or in a new bucket on the test S3 server."""
    return str(tmp_path / "root") if request.param == "local" else request.getfixturevalue("bucket") + "/root"


def test_write_read_ranges_glob_info_delete(root: str) -> None:
    data = bytes(range(256)) * 40
    storage.write_bytes(storage.join(root, "a", "x.bin"), data)
    storage.write_bytes(storage.join(root, "a", "y.txt"), b"text")
    assert storage.read_bytes(storage.join(root, "a", "x.bin")) == data
    assert storage.read_bytes(storage.join(root, "a", "x.bin"), 1000, 1010) == data[1000:1010]
    with storage.open_read(storage.join(root, "a", "x.bin")) as f:
        f.seek(5000)
        assert f.read(4) == data[5000:5004]
    assert storage.glob(storage.join(root, "a", "*.bin")) == [storage.join(root, "a", "x.bin")]
    found = storage.info(storage.join(root, "a", "x.bin"))
    assert found is not None and found.size == len(data) and found.mtime and abs(found.mtime - time.time()) < 300
    assert storage.info(storage.join(root, "a", "missing.bin")) is None
    assert not storage.exists(storage.join(root, "a", "missing.bin"))
    storage.delete([storage.join(root, "a", "x.bin"), storage.join(root, "a", "never-there.bin")])
    assert storage.glob(storage.join(root, "a", "*")) == [storage.join(root, "a", "y.txt")]


def test_a_failed_write_leaves_nothing_under_the_final_name(root: str) -> None:
    url = storage.join(root, "big.bin")
    storage.write_bytes(url, b"the previous version")

    def fails_midway(f) -> None:  # past s3fs's first 50 MiB part, so a multipart upload is under way
        f.write(b"x" * (52 << 20))
        raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError, match="the writer failed"):
        storage.write_atomic(url, fails_midway)
    assert storage.read_bytes(url) == b"the previous version"
    assert storage.glob(storage.join(root, "*")) == [url]  # no temporary left either


def test_staged_output_and_local_copy_round_trip(root: str, tmp_path: Path) -> None:
    url = storage.join(root, "index", "image.index")
    with storage.staged_output(url) as path:
        Path(path).write_bytes(b"faiss bytes")
        assert not storage.exists(url)  # published only on a clean exit
    with storage.local_copy(url) as path:
        assert Path(path).read_bytes() == b"faiss bytes"


def test_a_missing_bucket_is_named_with_the_fix(s3_endpoint: str) -> None:
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket-mmembed'.*create"):
        storage.glob("s3://no-such-bucket-mmembed/shards/*.tar")
    with pytest.raises(
        FileNotFoundError, match="no-such-bucket-mmembed.*(while writing s3://no-such-bucket-mmembed/x)"
    ):
        storage.write_bytes("s3://no-such-bucket-mmembed/x", b"1")
    with pytest.raises(FileNotFoundError, match="while reading s3://no-such-bucket-mmembed/x"):
        storage.read_bytes("s3://no-such-bucket-mmembed/x")


def test_an_unknown_protocol_is_a_clear_error() -> None:
    from mmembed.config import ConfigError

    with pytest.raises(ConfigError, match="unknown storage protocol 'nosuch'"):
        storage.exists("nosuch://bucket/x")


# A process that uploads 64 MiB to the URL in argv[1] slowly, 4 MiB at a time, printing "part" after each
# (s3fs sends a 50 MiB part once its buffer holds that much).
SLOW_UPLOAD = """
import sys, time
from mmembed import storage
from mmembed.config import ConfigError
def slowly(f):
    for _ in range(16):
        f.write(b"y" * (4 << 20))
        f.flush()
        print("part", flush=True)
        time.sleep(0.3)
storage.write_atomic(sys.argv[1], slowly)
print("done", flush=True)
"""


def test_a_killed_upload_leaves_no_object(bucket: str) -> None:
    url = f"{bucket}/killed.bin"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", SLOW_UPLOAD, url], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    for _ in range(14):  # past the first part's upload
        assert child.stdout.readline().strip() == "part"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=bucket.removeprefix("s3://")).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["killed.bin"]  # parts had reached the server ...
    assert not storage.exists(url) and storage.glob(f"{bucket}/*") == []  # ... but no object appeared


def test_read_lines_strips_and_skips_blank_lines_and_names_a_non_utf8_file(tmp_path: Path) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_bytes(b"  a red car \n\n\t\nsnow\r\n")
    assert storage.read_lines(str(queries)) == ["a red car", "snow"]
    queries.write_bytes(b"caf\xe9\n")
    with pytest.raises(ConfigError, match=r"queries\.txt is not UTF-8 text .* save it as UTF-8"):
        storage.read_lines(str(queries))
