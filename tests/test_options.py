"""Options declared once in config dataclasses: the parsers of ``mmembed CMD`` and ``python -m pipelines.X`` and
the job-file reader are generated from them, so all three give equal configs; aliases, hints and defaults."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mmembed.cli import build_parser, main
from mmembed.config import ConfigError
from mmembed.dedup.config import DedupConfig
from mmembed.jobs import parse_job
from mmembed.options import Parser, add_options, config_from_args, declared, option
from mmembed.stages import STAGES, add_stage_options, config_of, parse_pipeline_args, stage

REPO = Path(__file__).resolve().parents[1]


def cli_config(argv: list[str]) -> Any:
    """The config ``mmembed ARGV`` would run with (parsed, not run)."""
    args, extra = build_parser().parse_known_args(argv)
    assert extra == []
    return config_of(args.stage, args)


def help_text(name: str) -> str:
    parser = Parser(prog=f"mmembed {name}")
    add_stage_options(parser, stage(name))
    return " ".join(parser.format_help().split())  # argparse wraps lines: compare with single spaces


def test_a_field_added_to_a_config_appears_in_help_with_its_default_and_reaches_the_config() -> None:
    extended = dataclasses.make_dataclass(
        "Extended",
        [("new_knob", int, option(7, help="a knob added later")), ("plain", str, dataclasses.field(default="p"))],
        bases=(DedupConfig,),
        frozen=True,
    )
    parser = Parser(prog="x")
    add_options(parser, extended)
    text = " ".join(parser.format_help().split())
    assert "--new-knob NEW_KNOB a knob added later (default: 7)" in text
    assert "--plain PLAIN (default: p)" in text  # a field without a declaration still gets its option
    config = config_from_args(extended, parser.parse_args(["--embeddings", "e", "--out", "o", "--new-knob", "9"]))
    assert (config.new_knob, config.plain, config.keep) == (9, "p", DedupConfig("e", "o").keep)


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_option_is_in_its_help_with_its_default(name: str) -> None:
    text = help_text(name)
    found = stage(name)
    items = declared(found.config_class(), found.skip)
    assert items, name
    for item in items:
        assert ", ".join(item.flags) in text, (name, item.flags)
        default = item.field.default
        if isinstance(default, int | float | str) and not isinstance(default, bool) and "%" not in str(default):
            assert f"(default: {default})" in text or "default" in item.option.help, (name, item.path)


def test_skipped_and_internal_fields_stay_off_the_command_line() -> None:
    train = help_text("train")
    assert "--decode-threads" in train and "--captions" not in train and "--fingerprints" not in train
    assert "--batch-size, --batch_size BATCH_SIZE samples per optimizer step (default: 256)" in train
    assert "samples per model call" not in train  # the encoder's inference batch is not a training option


EQUAL = {
    "embed": (
        ["--shards", "a.tar", "b.tar", "--out", "o", "--model", "mmembed-tiny", "--random-init", "--batch-size", "8"]
        + ["--decode-threads", "3", "--captions", "optional", "--output-dtype", "float16", "--overwrite"],
        {
            "shards": ["a.tar", "b.tar"],
            "out": "o",
            "encoder": {"model": "mmembed-tiny", "random_init": True, "batch_size": 8},
            "decode": {"threads": 3, "captions": "optional"},
            "output_dtype": "float16",
            "overwrite": True,
        },
    ),
    "index": (
        ["--embeddings", "e", "--out", "i", "--max-index-memory", "1G", "--index-key", "IVF8,Flat"]
        + ["--files-per-part", "2", "--recall-target", "0.9"],
        {
            "embeddings_dir": "e",
            "out_dir": "i",
            "max_index_memory": "1G",
            "index_key": "IVF8,Flat",
            "files_per_part": 2,
            "recall_target": 0.9,
        },
    ),
    "dedup": (
        ["--embeddings", "e", "--out", "d", "--methods", "exact,semantic", "--eps", "0.1", "--n-clusters", "4"],
        {"embeddings_dir": "e", "out_dir": "d", "methods": "exact, semantic", "eps": 0.1, "n_clusters": 4},
    ),
    "train": (
        ["--shards", "t.tar", "--out", "r", "--model", "mmembed-small", "--random-init", "--lr", "5e-4"]
        + ["--no-augment", "--decode-threads", "1", "--adam-betas", "0.8", "0.9"],
        {
            "shards": "t.tar",
            "out": "r",
            "init": {"model": "mmembed-small", "random_init": True},
            "lr": "5e-4",  # YAML 1.1 reads 5e-4 as text; the config is a float either way
            "augment": False,
            "decode": {"threads": 1},
            "betas": [0.8, 0.9],
        },
    ),
    "make-shards": (
        ["--manifest", "m.csv", "--out", "s", "--samples-per-shard", "5", "--prefix", ""],
        {"manifest": "m.csv", "out": "s", "samples_per_shard": 5, "prefix": ""},
    ),
    "eval-index": (
        ["--index", "i", "--queries", "20", "--device", "cpu"],
        {"index_dir": "i", "queries": 20, "device": "cpu"},
    ),
    "search": (
        ["--index", "i", "--image", "a.jpg", "b.jpg", "--image", "c.jpg", "--text", "at night", "--text-weight", "0.5"]
        + ["-k", "5", "--target", "text", "--where", "width > 1", "--device", "cpu"],
        {
            "index_dir": "i",
            "image": ["a.jpg", "b.jpg", "c.jpg"],
            "text": "at night",
            "text_weight": 0.5,
            "k": 5,
            "target": "text",
            "where": "width > 1",
            "device": "cpu",
        },
    ),
    "export": (
        ["--index", "i", "--shards", "a.tar", "b.tar", "--out", "x", "--query", "a cat", "-k", "7"]
        + ["--min-score", "0.2", "--overwrite"],
        {
            "index_dir": "i",
            "shards": ["a.tar", "b.tar"],
            "out": "x",
            "query": "a cat",
            "k": 7,
            "min_score": "0.2",
            "overwrite": True,
        },
    ),
    "serve": (
        ["--index", "i", "--shards", "a/*.tar", "b.tar", "--shards", "c.tar", "--port", "9000", "--max-k", "20"]
        + ["--thumbnail-cache", "0", "--torch-threads", "2", "--device", "auto"],
        {
            "index_dir": "i",
            "shards": ["a/*.tar", "b.tar", "c.tar"],
            "port": 9000,
            "max_k": 20,
            "thumbnail_cache_items": 0,
            "threads": 2,
            "device": "auto",
        },
    ),
}


@pytest.mark.parametrize("name", list(STAGES))
def test_a_job_file_and_the_command_line_give_equal_configs(name: str) -> None:
    argv, config = EQUAL[name]
    from_cli = cli_config([name, *argv])
    assert from_cli == parse_job({"job": name, "config": config}).config
    assert type(from_cli) is stage(name).config_class()


@pytest.mark.parametrize("name", [name for name, found in STAGES.items() if found.beam])
def test_the_pipelines_entry_takes_the_same_options(name: str) -> None:
    argv, _ = EQUAL[name]
    config, beam_args = parse_pipeline_args(name, [*argv, "--runner", "DirectRunner"], f"python -m x.{name}", None)
    assert config == cli_config([name, *argv]) and beam_args == ["--runner", "DirectRunner"]
    with pytest.raises(ConfigError, match="did you mean --out"):
        parse_pipeline_args(name, [*argv, "--outt", "x"], "x", None)


def test_python_m_pipelines_help_lists_the_declared_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.build_index", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert text.startswith("usage: python -m pipelines.build_index")
    assert "--max-index-memory, --max_index_memory_usage MAX_INDEX_MEMORY" in text and "(default: 4G)" in text


@pytest.mark.parametrize(
    ("name", "canonical", "alias"),
    [
        ("embed", ["--batch-size", "8"], ["--batch_size", "8"]),
        ("embed", ["--shards", "a.tar"], ["--input_dataset", "a.tar"]),
        ("embed", ["--out", "o"], ["--output_folder", "o"]),
        ("embed", ["--caption-key", "caption"], ["--wds_caption_key", "caption"]),
        ("embed", ["--image-extensions", "png"], ["--wds_image_key", "png"]),
        ("embed", ["--decode-threads", "3"], ["--num_prepro_workers", "3"]),
        ("index", ["--max-index-memory", "2G"], ["--max_index_memory_usage", "2G"]),
        ("index", ["--index-key", "Flat"], ["--index_key", "Flat"]),
        ("make-shards", ["--samples-per-shard", "3"], ["--number_sample_per_shard", "3"]),
        ("make-shards", ["--caption-column", "text"], ["--caption_col", "text"]),
    ],
)
def test_other_tools_spellings_of_the_same_option_are_aliases(
    name: str, canonical: list[str], alias: list[str]
) -> None:
    base = {
        "embed": ["--shards", "x.tar", "--out", "x", "--model", "mmembed-tiny", "--random-init"],
        "index": ["--embeddings", "e", "--out", "i"],
        "make-shards": ["--images", "p", "--out", "s"],
    }[name]
    plain, aliased = cli_config([name, *base, *canonical]), cli_config([name, *base, *alias])
    assert plain == aliased and plain != cli_config([name, *base])


def test_shards_take_several_values_everywhere(tmp_path: Path) -> None:
    for name, rest in (
        ("embed", ["--out", "o", "--random-init"]),
        ("train", ["--out", "o", "--random-init"]),
        ("serve", ["--index", "i"]),
        ("export", ["--index", "i", "--out", "o", "--where", "true"]),
    ):
        config = cli_config([name, "--shards", "a.tar", "b.tar", "--shards", "c.tar", *rest])
        assert config.shards == ("a.tar", "b.tar", "c.tar"), name
    args, _ = build_parser().parse_known_args(
        ["dedup", "--embeddings", "e", "--out", "d", "--write-shards", "w", "--shards", "a.tar", "b.tar"]
    )
    assert args.shards == ["a.tar", "b.tar"]


def test_common_options_have_one_name_in_every_command() -> None:
    """The same thing has the same flag: shards, model, checkpoint, device, threads, out."""
    flags = {name: help_text(name) for name in STAGES}
    for name in ("embed", "train"):
        for flag in (
            "--shards SHARD",
            "--model MODEL",
            "--checkpoint CHECKPOINT",
            "--torch-threads",
            "--decode-threads",
        ):
            assert flag in flags[name], (name, flag)
    for name in STAGES:
        assert "--device {auto,cpu,cuda}" in flags[name] or name == "make-shards", name
        assert "--out" in flags[name] or name in ("eval-index", "search", "serve"), name
        assert "--index INDEX" in flags[name] or name in ("make-shards", "embed", "train", "index", "dedup"), name
        assert "--data-threads" not in flags[name] and "--input " not in flags[name]
    assert "--torch-threads, --threads N" in flags["serve"]  # serve's earlier spelling, still accepted
    base = ["serve", "--index", "i"]
    assert cli_config([*base, "--threads", "3"]) == cli_config([*base, "--torch-threads", "3"])
    assert cli_config([*base, "--threads", "3"]).threads == 3 != cli_config(base).threads


def test_the_train_summary_says_samples_per_second(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One summary key style: ``samples_per_second`` as the embed summary has it, not ``samples_per_s``."""
    shards = tmp_path / "shards"
    assert main(["make-shards", "--dataset", "digits", "--limit", "16", "--out", str(shards)]) == 0
    capsys.readouterr()
    argv = ["train", "--shards", str(shards / "*.tar"), "--out", str(tmp_path / "run"), "--model", "mmembed-tiny"]
    argv += ["--random-init", "--batch-size", "8", "--max-steps", "1", "--device", "cpu", "--torch-threads", "1"]
    assert main([*argv, "--decode-threads", "1", "--warmup-steps", "0", "--log-every", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples_per_second"] > 0 and "samples_per_s" not in summary


def test_the_search_query_is_a_positional_argument_or_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    """``mmembed search "a cat"``: the field ``query``, positional on the command line, a key in a job file;
    given both ways (QUERY and --text) it is refused, and a misspelt option is named with the right one."""
    positional = cli_config(["search", "a cat", "--index", "i", "--mode", "keyword"])
    job = parse_job({"job": "search", "config": {"index_dir": "i", "query": "a cat", "mode": "keyword"}})
    assert positional == job.config
    assert positional.text_query == "a cat" == cli_config(["search", "--index", "i", "--text", "a cat"]).text_query
    assert "QUERY text query (or use --text, --image, --queries-file)" in help_text("search")
    with pytest.raises(ConfigError, match="give the text query once"):
        cli_config(["search", "a cat", "--index", "i", "--text", "a dog"])
    with pytest.raises(ConfigError, match="search config needs key"):
        parse_job({"job": "search", "config": {"query": "a cat"}})
    assert main(["search", "--index", "i", "--queries_file", "q.txt"]) == 2
    assert "unknown option --queries_file (mmembed search has none); did you mean --queries-file?" in (
        capsys.readouterr().err
    )
