"""index, index --sharded, eval-index, search and index --append with ``s3://`` URLs in and out, against a real
S3-protocol server on loopback: every result equals the same command's on local paths, a remote index is
fetched into the local cache once per version, and a missing bucket or index dir is named in the error."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmembed import storage
from mmembed.cli import main
from mmembed.encoders.openclip import embedding_dim, provenance
from mmembed.index import load_index
from mmembed.index.cache import cache_root
from tests.conftest import TINY
from tests.index.synth import blobs, write_embed_dir
from tests.objectstore import create_bucket

N, PER_SHARD, FIRST = 1200, 300, 3  # 4 files; the append tests index the first 3, then add the 4th
SHARDED = ["--sharded", "--index-key", "IVF16,Flat", "--files-per-part", "2", "--tune-queries", "100"]
TIMING_KEYS = {"build_seconds", "peak_memory_bytes", "created_at", "at", "train_seconds", "add_seconds"}
TIMING_KEYS |= {"merge_seconds", "queries_per_second", "file_bytes", "ivfdata_bytes"}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test fetches remote indexes into its own cache (never the user's ~/.cache)."""
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def embeddings(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Synthetic embeddings recorded as the tiny model's (so real queries can be encoded): a local embed dir
    and the same files uploaded to a bucket; (local dir, its URL)."""
    root = tmp_path_factory.mktemp("s3-index")
    dim = embedding_dim(TINY)
    image, text = blobs(N, dim, seed=61), blobs(N, dim, seed=62)
    files = write_embed_dir(root / "emb", image, text, PER_SHARD, provenance=provenance(TINY))
    url = f"{create_bucket()}/emb"
    for path in files:
        storage.upload(str(path), storage.join(url, "embeddings", path.name))
    return root / "emb", url


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main(list(argv)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def without_timings(value: Any) -> Any:
    """``value`` without the fields that differ between two runs of the same build (times, sizes, paths)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS | {"sources", "files"}}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def read_ids(index_dir: str) -> list[dict]:
    """The rows of an index dir's current ids file (local or remote)."""
    infos = json.loads(storage.read_bytes(storage.join(index_dir, "infos.json")))
    with storage.open_read(storage.join(index_dir, infos["ids_file"])) as f:
        return pq.read_table(f).to_pylist()


def assert_same_index(local: str, remote: str) -> None:
    """Same infos (but for timings and where the files are), same ids, same answers to the same queries."""
    a, b = load_index(local), load_index(remote)
    assert without_timings(a.infos) == without_timings(b.infos)
    assert read_ids(local) == read_ids(remote)
    names = [Path(s["path"]).name for s in a.infos["sources"]["files"]]
    assert [s["path"] for s in b.infos["sources"]["files"]] == [
        f"{remote.rsplit('/', 1)[0]}/embeddings/{n}" for n in names
    ]
    queries = blobs(20, a.infos["dim"], seed=63)
    for modality in a.indexes:
        for left, right in zip(a.search(queries, 10, modality), b.search(queries, 10, modality), strict=True):
            np.testing.assert_array_equal(left, right)


def upload_index_copy(local: Path, url: str) -> None:
    for path in sorted(local.iterdir()):
        if path.is_file():
            storage.upload(str(path), storage.join(url, path.name))


def test_index_and_sharded_index_in_a_bucket_equal_the_local_ones(
    embeddings: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local_emb, emb = embeddings
    for extra, name in (([], "index"), (SHARDED, "sharded")):
        local = run_json(capsys, "index", "--embeddings", str(local_emb), "--out", str(tmp_path / name), *extra)
        remote = run_json(capsys, "index", "--embeddings", emb, "--out", f"{emb}/{name}", *extra)
        assert without_timings(local) == without_timings(remote) and remote["count"] == N
        assert_same_index(str(tmp_path / name), f"{emb}/{name}")
    listed = sorted(u.removeprefix(f"{emb}/sharded/") for u in storage.glob(f"{emb}/sharded/**"))
    expected = ["ids.parquet", "image.index", "image.ivfdata", "infos.json", "keywords.sqlite", "text.index"]
    assert listed == [*expected, "text.ivfdata"]


def test_eval_index_on_a_bucket_equals_local(
    embeddings: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local_emb, emb = embeddings
    run_json(capsys, "index", "--embeddings", str(local_emb), "--out", str(tmp_path / "index"))
    run_json(capsys, "index", "--embeddings", emb, "--out", f"{emb}/eval-index")
    queries = tmp_path / "queries.txt"
    queries.write_text("a cat\na dog on a beach\n")
    storage.upload(str(queries), f"{emb}/queries.txt")
    local = run_json(capsys, "eval-index", "--index", str(tmp_path / "index"), "--queries", "50", "--json")
    remote = run_json(capsys, "eval-index", "--index", f"{emb}/eval-index", "--queries", "50", "--json")
    assert without_timings(local) == without_timings(remote) and remote["image_to_image"]["recall@10"] == 1.0
    argv = ["--queries", "10", "--device", "cpu", "--json"]
    local = run_json(capsys, "eval-index", "--index", str(tmp_path / "index"), "--queries-file", str(queries), *argv)
    remote = run_json(
        capsys, "eval-index", "--index", f"{emb}/eval-index", "--queries-file", f"{emb}/queries.txt", *argv
    )
    assert without_timings(local) == without_timings(remote) and remote["text_to_image"]["queries"] == 2


def test_search_a_bucket_index_with_text_and_image_queries(
    embeddings: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], _cache: Path
) -> None:
    local_emb, emb = embeddings
    run_json(capsys, "index", "--embeddings", str(local_emb), "--out", str(tmp_path / "index"))
    run_json(capsys, "index", "--embeddings", emb, "--out", f"{emb}/search-index")
    photo = tmp_path / "query.png"
    Image.new("RGB", (40, 30), (200, 40, 90)).save(photo)
    storage.upload(str(photo), f"{emb}/query.png")
    cpu = ["--device", "cpu", "-k", "7", "--json"]
    for local_query, remote_query in (
        (["a red square"], ["a red square"]),
        (["a red square", "--target", "text"], ["a red square", "--target", "text"]),
        (["--image", str(photo)], ["--image", f"{emb}/query.png"]),
        (["--image", str(photo), "--text", "at night"], ["--image", str(photo), "--text", "at night"]),
    ):
        local = run_json(capsys, "search", *local_query, "--index", str(tmp_path / "index"), *cpu)
        remote = run_json(capsys, "search", *remote_query, "--index", f"{emb}/search-index", *cpu)
        assert local == remote and len(remote) == 7
    versions = list((Path(cache_root())).glob("*/*"))
    assert len(versions) == 1, versions  # four searches, one download
    expected = ["ids.parquet", "image.index", "infos.json", "keywords.sqlite", "text.index"]
    assert sorted(p.name for p in versions[0].iterdir()) == expected


def test_append_in_a_bucket_equals_local_and_refetches_the_new_version(
    embeddings: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local_emb, emb = embeddings
    bucket = create_bucket()
    partial_local, partial = tmp_path / "emb", f"{bucket}/emb"
    files = sorted((local_emb / "embeddings").glob("*.parquet"))
    for path in files[:FIRST]:
        (partial_local / "embeddings").mkdir(parents=True, exist_ok=True)
        (partial_local / "embeddings" / path.name).write_bytes(path.read_bytes())
        storage.upload(str(path), f"{partial}/embeddings/{path.name}")
    for extra, name in (([], "index"), (SHARDED, "sharded")):
        local_out, remote_out = str(tmp_path / name), f"{partial}/{name}"
        run_json(capsys, "index", "--embeddings", str(partial_local), "--out", local_out, *extra)
        run_json(capsys, "index", "--embeddings", partial, "--out", remote_out, *extra)
        assert load_index(remote_out).infos["count"] == FIRST * PER_SHARD  # cached: the version before append
        for path in files[FIRST:]:
            (partial_local / "embeddings" / path.name).write_bytes(path.read_bytes())
            storage.upload(str(path), f"{partial}/embeddings/{path.name}")
        local = run_json(capsys, "index", "--embeddings", str(partial_local), "--out", local_out, "--append")
        remote = run_json(capsys, "index", "--embeddings", partial, "--out", remote_out, "--append")
        assert without_timings(local) == without_timings(remote) and remote["count"] == N
        assert_same_index(local_out, remote_out)  # the new version fetched, the old one dropped from the cache
        assert len(list(Path(cache_root()).glob("*/*"))) == 1 + (name == "sharded")
        names = sorted(u.rsplit("/", 1)[1] for u in storage.glob(f"{remote_out}/*"))
        expected = ["ids.g00001.parquet", "image.g00001.index", "infos.json", "text.g00001.index"]
        expected += ["keywords.g00001.sqlite"]
        if name == "sharded":
            expected += ["image.g00001.ivfdata", "text.g00001.ivfdata"]
        assert names == sorted(expected)  # generation 0 removed once infos.json named generation 1
        for path in files[FIRST:]:  # the next case starts from the partial dir again
            (partial_local / "embeddings" / path.name).unlink()
            storage.delete([f"{partial}/embeddings/{path.name}"])


def test_missing_bucket_and_missing_index_dir_are_named(
    embeddings: tuple[Path, str], bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, emb = embeddings
    capsys.readouterr()
    missing = "s3://no-such-bucket-mmembed"
    for argv, named in (
        (["search", "a cat", "--index", f"{missing}/index"], f"{missing}/index: no infos.json"),
        (["search", "a cat", "--index", f"{bucket}/nothing"], f"{bucket}/nothing: no infos.json"),
        (["eval-index", "--index", f"{bucket}/nothing"], f"{bucket}/nothing: no infos.json"),
        (["index", "--embeddings", emb, "--out", f"{bucket}/nothing", "--append"], f"{bucket}/nothing: no infos.json"),
        (
            ["index", "--embeddings", f"{missing}/emb", "--out", f"{bucket}/x"],
            "bucket 'no-such-bucket-mmembed' does not",
        ),
        (
            ["index", "--embeddings", f"{bucket}/empty", "--out", f"{bucket}/x"],
            f"embeddings/*.parquet under '{bucket}/empty'",
        ),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert named in err, (argv, err)


def test_the_cache_holds_one_whole_copy_per_version(
    embeddings: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Concurrent loads share one download; a rebuild under the same names (new sizes and times) is fetched
    again and replaces the old copy."""
    _, emb = embeddings
    out = f"{emb}/cached"
    run_json(capsys, "index", "--embeddings", emb, "--out", out, "--family", "flat")
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(load_index, [out] * 4))
    assert len({str(index.index_dir) for index in loaded}) == 1 and loaded[0].infos["index_key"] == "Flat"
    home = Path(cache_root())
    assert [p.name for p in home.glob("*/.download-*")] == []
    first = loaded[0].index_dir
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert load_index(out).index_dir == first
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == mtimes  # reused, not fetched again

    run_json(capsys, "index", "--embeddings", emb, "--out", out, "--index-key", "IVF16,Flat", "--overwrite")
    rebuilt = load_index(out)
    assert rebuilt.infos["index_key"] == "IVF16,Flat" and rebuilt.index_dir != first
    assert list(home.glob("*/*")) == [rebuilt.index_dir]  # the old version removed


def test_an_index_appended_to_while_it_is_fetched_is_fetched_again(
    embeddings: tuple[Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first file lands, then an append switches the index to its next generation and removes the old
    files: the fetch notices and starts over on the new version instead of mixing the two."""
    local_emb, _ = embeddings
    emb = f"{create_bucket()}/emb"
    files = sorted((local_emb / "embeddings").glob("*.parquet"))
    for path in files[:FIRST]:
        storage.upload(str(path), f"{emb}/embeddings/{path.name}")
    out = f"{emb}/index"
    run_json(capsys, "index", "--embeddings", emb, "--out", out, "--family", "flat")
    storage.upload(str(files[FIRST]), f"{emb}/embeddings/{files[FIRST].name}")
    real_download, fetched = storage.download, []

    def download_during_an_append(url: str, local: str) -> None:
        real_download(url, local)
        fetched.append(url.rsplit("/", 1)[1])
        if len(fetched) == 1:
            assert main(["index", "--embeddings", emb, "--out", out, "--append"]) == 0

    monkeypatch.setattr(storage, "download", download_during_an_append)
    loaded = load_index(out)
    assert loaded.infos["count"] == N and loaded.infos["generation"] == 1
    assert fetched[0] == "infos.json" and "ids.g00001.parquet" in fetched
    assert [p.name for p in Path(cache_root()).glob("*/*")] == [loaded.index_dir.name]


def test_cleaning_the_cache_tolerates_a_download_renamed_into_place_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process may finish (rename) its download between the listing and the age check of it: the
    cleaner skips that folder instead of failing the load (seen once with four concurrent loads)."""
    from mmembed.index import cache

    for name in ("current", "older", ".download-running", ".download-just-renamed"):
        (tmp_path / name).mkdir()
    real_getmtime = os.path.getmtime

    def renamed_meanwhile(path: str) -> float:
        if path.endswith(".download-just-renamed"):
            raise FileNotFoundError(path)
        return real_getmtime(path)

    monkeypatch.setattr(cache.os.path, "getmtime", renamed_meanwhile)
    cache._remove_others(str(tmp_path), "current")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".download-just-renamed", ".download-running", "current"]
