"""append killed at every point where it touches storage: the index dir always loads and answers queries with
either the old row count or the new one, the old generation's files (an on-disk ``.ivfdata`` included) are
never changed, and a re-run finishes the append and leaves only the new generation's files.

The append runs in a child process that counts its storage calls (each write's start, its bytes written but not
yet in place, each publish and download before and after, each deleted file) and sends itself SIGKILL at the
n-th: no cleanup code runs, as when a machine dies. A first run without a kill lists the points.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmembed.config import ConfigError
from mmembed.index import IndexBuildConfig, append, build_index, load_index
from mmembed.index.sharded import ShardedBuildConfig, build_sharded
from mmembed.index.store import INFOS_FILE, index_file_names
from tests.index.synth import blobs, write_embed_dir

REPO = Path(__file__).resolve().parents[2]
N, NEW, DIM, PER_SHARD = 1000, 250, 16, 250
KEY = "IVF16,Flat"
# The child: append(index_dir, files) with every storage call counted; SIGKILL at the n-th (0: never). It writes
# the points it passed, one a line, to the report file as it goes.
CHILD = """
import os, signal, sys
from mmembed import storage
from mmembed.index import append

kill_at, report, index_dir, files = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
passed = 0

def point(name):
    global passed
    passed += 1
    with open(report, "a") as f:
        f.write(f"{name}\\n")
    if passed == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def around(name, real):
    def call(*args):
        point(f"{name} start {os.path.basename(str(args[-1]))}")
        result = real(*args)
        point(f"{name} done {os.path.basename(str(args[-1]))}")
        return result
    return call

real_write_atomic = storage.write_atomic

def write_atomic(url, write):
    def write_then_pause(f):
        write(f)
        f.flush()
        point(f"write written {os.path.basename(url)}")  # the bytes are in the temporary, not yet in place
    point(f"write start {os.path.basename(url)}")
    real_write_atomic(url, write_then_pause)
    point(f"write done {os.path.basename(url)}")

real_delete = storage.delete

def delete(urls):
    for url in urls:
        point(f"delete {os.path.basename(url)}")
        real_delete([url])

storage.write_atomic = write_atomic
storage.delete = delete
storage.publish = around("publish", storage.publish)
storage.download = around("download", storage.download)
append(index_dir, files)
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[str], np.ndarray]]:
    """Two index dirs over the same rows, in memory (IVF lists inside the .index) and sharded (lists in an
    on-disk .ivfdata), plus an embeddings file to append; per kind (index dir, new files, all image vectors)."""
    root = tmp_path_factory.mktemp("append-crash")
    image, text = blobs(N + NEW, DIM, seed=71), blobs(N + NEW, DIM, seed=72)
    write_embed_dir(root / "emb", image[:N], text[:N], PER_SHARD)
    new = write_embed_dir(root / "new", image[N:], text[N:], PER_SHARD, first_shard=N // PER_SHARD)
    config = IndexBuildConfig(str(root / "emb"), str(root / "memory"), index_key=KEY, tune_queries=50)
    build_index(config)
    build_sharded(ShardedBuildConfig(IndexBuildConfig(str(root / "emb"), str(root / "sharded"), index_key=KEY)))
    return {kind: (root / kind, [str(p) for p in new], image) for kind in ("memory", "sharded")}


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file directly in ``folder``."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def all_files(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden and in sub-folders too, relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def run_child(kill_at: int, index_dir: Path, files: list[str], report: Path) -> tuple[int, list[str]]:
    """Run the append child; its exit status and the points it passed."""
    report.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", CHILD, str(kill_at), str(report), str(index_dir), *files]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=300)
    points = report.read_text().splitlines() if report.exists() else []
    assert done.returncode in (0, -signal.SIGKILL), done.stderr.decode()[-3000:]
    return done.returncode, points


def assert_answers(index_dir: Path, image: np.ndarray, count: int) -> None:
    """The index loads with ``count`` rows and every probed row finds itself under its own row id."""
    loaded = load_index(index_dir)
    assert loaded.infos["count"] == count and loaded.image.count == loaded.text.count == count
    rows = np.r_[np.arange(0, count, 97), count - 1]
    _, found = loaded.search(image[rows], 1, "image")
    np.testing.assert_array_equal(found[:, 0], rows)


@pytest.mark.parametrize("kind", ["memory", "sharded"])
def test_append_killed_at_any_point_leaves_the_old_or_the_new_index(pristine, kind: str, tmp_path: Path) -> None:
    source, files, image = pristine[kind]
    before = digests(source)
    old_infos = json.loads((source / INFOS_FILE).read_text())
    old_files = [INFOS_FILE, *index_file_names(old_infos)]

    reference = tmp_path / "reference"
    shutil.copytree(source, reference)
    status, points = run_child(0, reference, files, tmp_path / "report")
    assert status == 0 and len(points) >= 10, points
    copied = [p for p in points if p.startswith("download") and not p.endswith(".sqlite")]  # keywords: always
    assert bool(copied) == (kind == "sharded")  # the .ivfdata is copied
    assert_answers(reference, image, N + NEW)

    outcomes = []
    for kill_at in range(1, len(points) + 1):
        folder = tmp_path / f"killed-{kill_at}"
        shutil.copytree(source, folder)
        status, passed = run_child(kill_at, folder, files, tmp_path / "report")
        assert status == -signal.SIGKILL and passed == points[:kill_at], (kill_at, passed)
        count = load_index(folder).infos["count"]
        assert count in (N, N + NEW), (passed[-1], count)
        assert_answers(folder, image, count)
        left = digests(folder)
        if count == N:  # the old generation, every file as it was; the re-run finishes the append
            assert {name: left[name] for name in old_files} == {name: before[name] for name in old_files}
            infos = append(folder, files)
            assert all_files(folder) == sorted([INFOS_FILE, *index_file_names(infos)])  # no leftovers
        else:  # the new generation, whole; at most old files not yet removed are left over
            assert set(left) - {INFOS_FILE, *index_file_names(load_index(folder).infos)} <= set(old_files)
            with pytest.raises(ConfigError, match="already in"):
                append(folder, files)
        assert_answers(folder, image, N + NEW)
        outcomes.append((passed[-1], count))
    first_new = next(i for i, (_, count) in enumerate(outcomes) if count == N + NEW)
    assert outcomes[first_new][0] == f"write done {INFOS_FILE}", outcomes  # the one atomic switch
    assert [count for _, count in outcomes] == [N] * first_new + [N + NEW] * (len(outcomes) - first_new)


@pytest.mark.parametrize(
    ("point", "leftovers"),
    [
        # the new indexes published and the new ids file written, not yet in place
        (
            "write written ids.g00001.parquet",
            ["image.g00001.ivfdata", "text.g00001.ivfdata", ".ids.g00001.parquet.tmp-"],
        ),
        # the image index published, the text index's copies staged
        (
            "download done text.ivfdata",
            ["image.g00001.index", ".staging.tmp-*/current-text.index", ".staging.tmp-*/text.ivfdata"],
        ),
    ],
)
def test_a_rerun_after_a_crash_leaves_only_the_new_generation(
    pristine, point: str, leftovers: list[str], tmp_path: Path
) -> None:
    """Killed before the switch: the dir answers with the old index, and the next append removes the unfinished
    generation, the half-written temporaries and the staging copies, leaving exactly the files infos.json names."""
    source, files, image = pristine["sharded"]
    shutil.copytree(source, tmp_path / "reference")
    _, points = run_child(0, tmp_path / "reference", files, tmp_path / "report")
    folder = tmp_path / "index"
    shutil.copytree(source, folder)
    assert run_child(points.index(point) + 1, folder, files, tmp_path / "report")[0] == -signal.SIGKILL
    for pattern in leftovers:
        assert list(folder.glob(f"{pattern}*")), (pattern, sorted(p.name for p in folder.rglob("*")))
    assert_answers(folder, image, N)
    infos = append(folder, files)
    assert infos["generation"] == 1 and infos["ids_file"] == "ids.g00001.parquet"
    assert all_files(folder) == sorted([INFOS_FILE, *index_file_names(infos)])
    assert_answers(folder, image, N + NEW)
