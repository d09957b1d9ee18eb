"""``mmembed embed`` exit status and console: 0 when every shard was read to its end, 3 when a shard failed as
a whole or nothing was embedded, 2 for bad arguments; the console ends with the summary and the first reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmembed.cli import main
from tests.tarmaker import write_tar

TINY = ["--model", "mmembed-tiny", "--random-init", "--device", "cpu", "--batch-size", "8"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    """Exit status, the printed summary and stderr of ``mmembed embed argv``."""
    status = main(["embed", *argv, *TINY])
    captured = capsys.readouterr()
    return status, json.loads(captured.out), captured.err


def test_all_shards_read_exits_0_even_with_sample_errors(
    demo_shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = write_tar(tmp_path / "in" / "mixed.tar", [("broken.jpg", b"not an image"), ("broken.txt", b"x")])
    status, summary, err = run(["--shards", demo_shards[0], str(shard), "--out", str(tmp_path / "out")], capsys)
    assert status == 0 and summary["errors_by_reason"] == {"bad_image": 1} and summary["embedded"] == 10
    assert "1 error(s); the first 1" in err and "shard mixed: member broken.jpg: not a decodable image" in err


def test_failed_shards_exit_3_and_their_reasons_come_first(
    demo_shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_tar = tmp_path / "in" / "page.tar"
    not_tar.parent.mkdir()
    not_tar.write_bytes(b"<html>404</html>" * 40)
    folder = tmp_path / "in" / "folder.tar"
    folder.mkdir()
    bad = write_tar(tmp_path / "in" / "mixed.tar", [("broken.jpg", b"not an image"), ("broken.txt", b"x")])
    argv = ["--shards", demo_shards[0], str(not_tar), str(folder), str(bad), "--out", str(tmp_path / "out")]
    status, summary, err = run(argv, capsys)
    assert status == 3, err
    assert summary["failed_shards"] == ["folder", "page"] and summary["embedded"] == 10
    assert summary["shard_errors"] == {"not_a_tar": 1, "unreadable_shard": 1}
    lines = err.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if "error(s); the first" in line) :]  # after the log
    assert lines[0] == f"3 error(s); the first 3 (all are in {tmp_path / 'out'}/errors/):"
    assert (
        "shard folder: cannot open" in lines[1]
        and f"pass the shard files in it, e.g. --shards '{folder}/*.tar'" in lines[1]
    )
    assert "shard page: not a readable tar archive" in lines[2] and "broken.jpg" in lines[3]


def test_nothing_embedded_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = write_tar(tmp_path / "in" / "only-bad.tar", [("a.jpg", b"not an image"), ("a.txt", b"x")])
    status, summary, _ = run(["--shards", str(shard), "--out", str(tmp_path / "out")], capsys)
    assert status == 3 and summary["embedded"] == 0 and summary["failed_shards"] == []


def test_bad_arguments_exit_2_before_any_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "--shards", str(tmp_path / "none-*.tar"), "--out", str(tmp_path / "out"), *TINY]) == 2
    assert "matched no files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
