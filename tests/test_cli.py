"""The ``mmembed`` command line: make-shards then embed on the default offline runner, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from mmembed.cli import main
from tests.test_makeshards import photo_folder


def test_make_shards_then_embed_on_the_default_runner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = photo_folder(tmp_path / "photos")
    manifest = tmp_path / "captions.csv"
    manifest.write_text("image,caption,source\nastronaut.jpg,an astronaut,nasa\ncoffee.jpg,a coffee,skimage\n")
    assert main(["make-shards", "--images", str(photos), "--out", str(tmp_path / "a"), "--samples-per-shard", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 3
    code = main(
        [
            "make-shards", "--manifest", str(manifest), "--image-column", "image", "--caption-column", "caption",
            "--image-root", str(photos), "--out", str(tmp_path / "b"), "--samples-per-shard", "1000",
        ]
    )  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)["shards"] == [str(tmp_path / "b" / "captions-00000.tar")]

    out = tmp_path / "emb"
    tiny = ["--model", "mmembed-tiny", "--random-init"]
    assert (
        main(["embed", "--shards", str(tmp_path / "a" / "*.tar"), "--out", str(out), "--batch-size", "2", *tiny]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples_in"] == summary["embedded"] == 3 and summary["errors"] == 0
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == ["photos-00000.parquet", "photos-00001.parquet"]
    assert pq.read_metadata(out / "embeddings" / "photos-00000.parquet").num_rows == 2
    assert json.loads((out / "summary.json").read_text())["embedded"] == 3

    # brace patterns work, and a re-run skips both complete shards
    assert main(["embed", "--shards", str(tmp_path / "a" / "photos-{00000..00001}.tar"), "--out", str(out), *tiny]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["shards_skipped"] == 2 and again["embedded"] == 3


def test_cli_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "--shards", str(tmp_path / "nothing-*.tar"), "--out", str(tmp_path / "o")]) == 2
    assert "matched no files" in capsys.readouterr().err
    assert main(["embed", "--shards", "x.tar", "--out", "o", "--checkpoint", str(tmp_path / "no.pt")]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert main(["make-shards", "--images", str(tmp_path / "none"), "--out", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_without_cuda_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo_folder(tmp_path / "photos")
    main(["make-shards", "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "s")])
    capsys.readouterr()
    code = main(["embed", "--shards", str(tmp_path / "s" / "*.tar"), "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "o" / "embeddings").exists()


def test_demo_runs_end_to_end_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "emb" / "summary.json").read_text())
    assert summary["embedded"] == summary["samples_in"] == 360 and summary["errors"] == 0  # the digits' test split
    assert summary["provenance"]["checkpoint"] == str((tmp_path / "model" / "model.pt").resolve())
    assert (tmp_path / "index" / "infos.json").is_file() and "search: 'a handwritten seven'" in out
    assert (tmp_path / "search-results.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "model" / "loss.png").is_file()


def test_make_shards_exits_3_when_inputs_were_skipped_and_2_when_nothing_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo_folder(tmp_path / "photos")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,caption\nastronaut.jpg,an astronaut\nmissing.jpg,gone\n")
    argv = ["make-shards", "--manifest", str(manifest), "--image-root", str(tmp_path / "photos")]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 3
    captured = capsys.readouterr()
    assert json.loads(captured.out)["samples"] == 1
    assert "1 input(s) skipped" in captured.err and str(tmp_path / "photos" / "missing.jpg") in captured.err

    manifest.write_text("image,caption\nmissing.jpg,gone\n")
    assert main([*argv, "--out", str(tmp_path / "b")]) == 2
    assert "no sample could be written" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["make-shards", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "c")]) == 2

    manifest.write_text("image,caption\nastronaut.jpg,an astronaut\nmissing.jpg,gone\n")  # as a job file: same status
    job = tmp_path / "job.yaml"
    config = {"manifest": str(manifest), "image_root": str(tmp_path / "photos"), "out": str(tmp_path / "d")}
    job.write_text(json.dumps({"job": "make-shards", "config": config}))  # JSON is YAML
    assert main(["run", str(job)]) == 3
    assert "1 input(s) skipped" in capsys.readouterr().err


def test_make_shards_names_shards_after_their_source_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = photo_folder(tmp_path / "trip", ("astronaut", "coffee"))
    second = photo_folder(tmp_path / "garden", ("chelsea", "rocket"))
    out = tmp_path / "shards"
    for folder in (first, second):  # two folders into one --out: both kept
        assert main(["make-shards", "--images", str(folder), "--out", str(out), "--samples-per-shard", "1"]) == 0
    capsys.readouterr()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["garden-00000.tar", "garden-00001.tar", "trip-00000.tar", "trip-00001.tar"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    assert main(["make-shards", "--images", str(first), "--out", str(out)]) == 2  # the same source again
    err = capsys.readouterr().err
    assert f"{out / 'trip-00000.tar'} already exists" in err and "--overwrite" in err and "nothing was written" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    (first / "astronaut.jpg").unlink()  # fewer samples now: --overwrite leaves no stale shard of the first run
    assert main(["make-shards", "--images", str(first), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["garden-00000.tar", "garden-00001.tar", "trip-00000.tar"]
    assert all((out / n).read_bytes() == before[n] for n in ("garden-00000.tar", "garden-00001.tar"))

    assert main(["make-shards", "--images", str(second), "--out", str(out), "--prefix", "garden-b"]) == 0
    assert (out / "garden-b-00000.tar").is_file()  # a prefix that extends another is not the other's shards


def test_the_installed_entry_point_exits_with_the_commands_status_and_its_output(tmp_path: Path) -> None:
    """``entry`` leaves through ``os._exit`` (past pyarrow's teardown abort): the status and every line of
    output must still come through, as must an atexit handler's work."""
    folder = photo_folder(tmp_path / "photos")
    script = (
        "import atexit, sys\n"
        "from mmembed.cli import entry\n"
        f"atexit.register(lambda: open({str(tmp_path / 'atexit-ran')!r}, 'w').close())\n"
        "entry(sys.argv[1:])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env)

    made = run("make-shards", "--images", str(folder), "--out", str(tmp_path / "shards"))
    assert made.returncode == 0 and json.loads(made.stdout)["samples"] > 0, made.stderr
    assert (tmp_path / "atexit-ran").exists()
    again = run("make-shards", "--images", str(folder), "--out", str(tmp_path / "shards"))
    assert again.returncode == 2 and "already exists" in again.stderr
    usage = run("make-shards", "--no-such-option")
    assert usage.returncode == 2 and "the following arguments are required" in usage.stderr
    assert run("--help").returncode == 0


def test_the_command_line_starts_without_the_heavy_libraries() -> None:
    """``mmembed --help`` and every ``CMD --help`` build all parsers: none of them may import torch, faiss,
    Beam or pyarrow (seconds of start-up each on a 2-core machine)."""
    probe = (
        "import sys\n"
        "from mmembed.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('torch', 'open_clip', 'faiss', 'apache_beam', 'pyarrow', 'numpy', 'PIL', 'fastapi', 'fsspec')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_version_global_flags_anywhere_and_no_abbreviations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip().startswith("mmembed ")
    assert main(["search", "--index", "x", "--tex", "a cat"]) == 2  # --tex is neither --text nor --text-weight
    assert "unknown option --tex (mmembed search has none); did you mean --text?" in capsys.readouterr().err
    assert main(["embed", "--shards", "x.tar", "--out", "o", "--mod", "mmembed-tiny"]) == 2  # --mod is not --model
    assert "unknown option --mod " in capsys.readouterr().err
    assert main(["make-shards", "--images", "/no/such/folder", "--out", "/tmp/x", "-v"]) != 0  # -v after the command
    import logging

    assert logging.getLogger().level == logging.INFO and logging.getLogger("mmembed").level == logging.DEBUG
    main(["make-shards", "--images", "/no/such/folder", "--out", "/tmp/x"])
    assert logging.getLogger().level == logging.WARNING  # other libraries' INFO lines are off without -v
    assert logging.getLogger("mmembed").level == logging.INFO


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        (["--enable_text", "False"], "use --captions none"),  # clip-retrieval's: no alias, the right flag named
        (["--clip_model", "ViT-B/32"], "use --model with an open_clip name"),
        (["--batch-sise", "16"], "did you mean --batch-size?"),  # a typo: the closest option
    ],
)
def test_options_neither_mmembed_nor_beam_knows_are_refused_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: list[str], hint: str
) -> None:
    argv = ["embed", "--shards", str(tmp_path / "x.tar"), "--out", str(tmp_path / "out"), "--random-init"]
    assert main([*argv, *given]) == 2  # Beam would drop an option it does not know with a log line
    error = capsys.readouterr().err
    assert f"unknown option {given[0]} (neither mmembed embed nor Beam has it); {hint}" in error
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_commands_without_beam_refuse_unknown_options_naming_the_right_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--shards", "x.tar", "--out", str(tmp_path / "run"), "--data-threads", "2"]
    assert main(argv) == 2  # train's old spelling of the decode threads, which every command now calls one name
    assert "unknown option --data-threads (mmembed train has none); did you mean --decode-threads?" in (
        capsys.readouterr().err
    )
    assert main(["make-shards", "--out", str(tmp_path / "s"), "--images", str(tmp_path), "--url_col", "u"]) == 2
    assert "use --image-column" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()
