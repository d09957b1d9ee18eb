"""Job files (jobs/*.yaml) and ``mmembed run``: every shipped file parses into its config and Beam arguments,
unknown keys are errors naming them, ``--set`` overrides, the worker image's versions match pyproject's pins, and
the local jobs run end to end: two worker processes give the single-process embed outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner.worker_handlers import SubprocessSdkWorkerHandler
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import mmembed.cli as cli
from mmembed.config import ConfigError, EmbedJobConfig, MakeShardsConfig
from mmembed.dedup.config import DedupConfig
from mmembed.index.sharded import ShardedBuildConfig
from mmembed.jobs import apply_overrides, beam_args, load_job, parse_job, run_job
from tests.helpers import read_dir

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
VECTORS = ("image_embedding", "text_embedding", "similarity")


def test_every_job_file_parses_into_its_config_and_beam_args() -> None:
    assert sorted(p.name for p in JOBS.glob("*.yaml")) == [
        "dedup-local.yaml", "embed-dataflow-gpu.yaml", "embed-local-multiprocess.yaml", "embed-local.yaml",
        "index-local.yaml",
    ]  # fmt: skip
    local = load_job(JOBS / "embed-local.yaml")
    assert isinstance(local.config, EmbedJobConfig) and local.beam_args == ()
    assert local.config.encoder.model == "mmembed-tiny" and local.config.encoder.device == "cpu"
    multi = load_job(JOBS / "embed-local-multiprocess.yaml")
    assert multi.beam_args == ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
    gpu = load_job(JOBS / "embed-dataflow-gpu.yaml")
    assert gpu.config.encoder.device == "cuda" and gpu.config.output_dtype == "float16"
    assert "--runner=DataflowRunner" in gpu.beam_args and "--machine_type=g2-standard-8" in gpu.beam_args
    service = "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    assert service in gpu.beam_args and any(a.startswith("--sdk_container_image=") for a in gpu.beam_args)
    index = load_job(JOBS / "index-local.yaml")
    assert isinstance(index.config, ShardedBuildConfig) and index.config.files_per_part == 2
    assert index.config.index.index_key == "IVF8,Flat"
    dedup = load_job(JOBS / "dedup-local.yaml")
    assert isinstance(dedup.config, DedupConfig) and dedup.config.methods == ("exact", "perceptual", "semantic")


def test_overrides_are_dotted_paths_with_yaml_values() -> None:
    data = {"job": "embed", "config": {"shards": ["a.tar"], "out": "o"}, "beam_options": {}}
    changed = apply_overrides(
        data,
        [
            "config.encoder.batch_size=8",
            "config.overwrite=true",
            "config.shards=[x.tar, y.tar]",
            "beam_options.experiments=[a, b]",
            "beam_options.job_name=my-job",
        ],
    )
    assert data["config"] == {"shards": ["a.tar"], "out": "o"}  # the original is untouched
    job = parse_job(changed)
    assert job.config.encoder.batch_size == 8 and job.config.overwrite is True
    assert job.config.shards == ("x.tar", "y.tar")
    assert job.beam_args == ("--experiments=a", "--experiments=b", "--job_name=my-job")
    with pytest.raises(ConfigError, match=re.escape("unknown top-level key(s) ['options']")):
        parse_job({**data, "options": {}})
    for bad, message in [
        ("config.out", "expected KEY=VALUE"),
        ("out=x", "did you mean config.out or beam_options.out"),
        ("config.shards.first=x", "not a mapping"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_overrides(data, [bad])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("jobs=embed", "'jobs' is not a top-level key"),
        ("job=demo", "'job' must be one of ['make-shards', 'embed', 'train', 'index', 'eval-index', 'dedup', 'search'"),
        ("config.outt=x", "unknown key(s) ['outt'] in embed config"),
        ("config.encoder.batch_size=many", "encoder config key 'batch_size': 'many' is not an int"),
        ("config.encoder.devise=cuda", "unknown key(s) ['devise'] in encoder config"),
        ("config.decode.thread=2", "unknown key(s) ['thread'] in decode config"),
        ("beam_options.runer=DataflowRunner", "'runer' (did you mean 'runner'?)"),
        ("beam_options.runner=[A, B]", "takes one value, not a list"),
        ("beam_options.no_auth=yes please", "is a flag"),
    ],
)
def test_unknown_or_misshapen_keys_are_errors_naming_them(change: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_job(JOBS / "embed-local.yaml", [change])


def test_index_and_dedup_configs_reject_unknown_keys_and_validate() -> None:
    with pytest.raises(ConfigError, match=re.escape("unknown key(s) ['nlist'] in index config")) as info:
        load_job(JOBS / "index-local.yaml", ["config.nlist=8"])
    assert "files_per_part" in str(info.value)  # the known keys are listed, the sharded build's own included
    with pytest.raises(ConfigError, match="family 'flat' has none"):
        load_job(JOBS / "index-local.yaml", ["config.index_key=null", "config.family=flat"])
    with pytest.raises(ConfigError, match=re.escape("unknown key(s) ['method'] in dedup config")):
        load_job(JOBS / "dedup-local.yaml", ["config.method=exact"])
    assert load_job(JOBS / "dedup-local.yaml", ["config.methods=exact,semantic"]).config.methods == (
        "exact",
        "semantic",
    )
    with pytest.raises(ConfigError, match="embeddings_dir"):
        load_job(JOBS / "dedup-local.yaml", ["config.embeddings_dir=null"])


def test_beam_option_shapes() -> None:
    assert beam_args({"no_auth": True, "use_public_ips": False, "save_main_session": None}) == [
        "--no_auth",
        "--no_use_public_ips",
    ]
    assert beam_args({"resource_hints": {"accelerator": "type:nvidia-l4;count:1", "min_ram": "16GB"}}) == [
        "--resource_hints=accelerator=type:nvidia-l4;count:1",
        "--resource_hints=min_ram=16GB",
    ]
    with pytest.raises(ConfigError, match="must not be combined with worker_accelerator"):
        beam_args(
            {"dataflow_service_options": ["worker_accelerator=type:nvidia-l4;count:1"], "resource_hints": ["x=1"]}
        )


def test_dockerfile_versions_match_pyproject_pins() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in pyproject["dependencies"] + pyproject["optional-dependencies"]["gcp"]:
        requirement = Requirement(line)
        pins[requirement.name] = next(iter(requirement.specifier)).version
    text = (JOBS / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", text, flags=re.MULTILINE))
    assert args["BEAM_VERSION"] == pins["apache-beam"]
    assert args["TORCH_VERSION"] == pins["torch"]
    python = args["PYTHON_VERSION"]
    assert SpecifierSet(pyproject["requires-python"]).contains(f"{python}.0")
    assert re.search(r"^FROM apache/beam_python\$\{PYTHON_VERSION\}_sdk:\$\{BEAM_VERSION\} AS beam$", text, re.M)
    assert args["BASE_IMAGE"].startswith("pytorch/pytorch:${TORCH_VERSION}-cuda12.")
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in text
    assert text.rstrip().endswith('ENTRYPOINT ["/opt/apache/beam/boot"]')
    extras = re.search(r'pip install --no-cache-dir "\.\[([\w,]+)\]"', text).group(1).split(",")
    assert set(extras) <= set(pyproject["optional-dependencies"]) and "gcp" in extras
    for extra in extras:  # the extras' own Beam pins agree too
        for line in pyproject["optional-dependencies"][extra]:
            if Requirement(line).name == "apache-beam":
                assert next(iter(Requirement(line).specifier)).version == args["BEAM_VERSION"]


def test_every_stage_is_a_job_and_beam_options_go_to_beam_stages_only(tmp_path: Path) -> None:
    from tests.test_makeshards import photo_folder

    photos = photo_folder(tmp_path / "photos")
    data = {"job": "make-shards", "config": {"images": str(photos), "out": str(tmp_path / "s"), "samples_per_shard": 2}}
    job = parse_job(data)
    assert job.config == MakeShardsConfig(out=str(tmp_path / "s"), images=str(photos), samples_per_shard=2)
    result = run_job(job)
    assert result["samples"] == 3 and len(result["shards"]) == 2 and not result["missing_images"]
    with pytest.raises(ConfigError, match="make-shards is not a Beam job; remove beam_options"):
        parse_job({**data, "beam_options": {"runner": "DirectRunner"}})
    train = parse_job({"job": "train", "config": {"shards": "s/*.tar", "out": "run", "lr": "1e-4", "init": {}}})
    assert train.config.lr == 1e-4 and train.config.shards == ("s/*.tar",)  # YAML reads 1e-4 as text


def test_cli_show_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", str(JOBS / "embed-local.yaml"), "--set", "config.out=x", "--show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["job"] == "embed" and shown["config"]["out"] == "x" and shown["beam_args"] == []
    assert cli.main(["run", str(JOBS / "embed-local.yaml"), "--set", "config.encoder.devise=cuda"]) == 2
    assert "['devise'] in encoder config" in capsys.readouterr().err
    assert cli.main(["run", "jobs/nothing.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_local_jobs_end_to_end_and_two_worker_processes_match_one(
    demo_shards: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = f"config.shards=[{', '.join(demo_shards[:2])}]"
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert cli.main(["run", str(JOBS / "embed-local.yaml"), "--set", shards, "--set", f"config.out={single}"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == 20
    started = []
    start_worker = SubprocessSdkWorkerHandler.start_worker

    def count_workers(handler: SubprocessSdkWorkerHandler) -> None:
        started.append(handler.worker_id)
        start_worker(handler)

    monkeypatch.setattr(SubprocessSdkWorkerHandler, "start_worker", count_workers)
    job = load_job(JOBS / "embed-local-multiprocess.yaml", [shards, f"config.out={multi}"])
    summary = run_job(job)
    assert len(set(started)) == 2  # two SDK worker processes, started by Beam's FnApiRunner
    assert summary["embedded"] == 20 and summary["beam_counters"]["shards_written"] == 2
    for folder in ("embeddings", "errors"):
        a, b = read_dir(single / folder), read_dir(multi / folder)
        assert a.schema.equals(b.schema, check_metadata=True) and a.num_rows == b.num_rows
        keep = [c for c in a.column_names if c not in VECTORS]
        assert a.select(keep).equals(b.select(keep))
        for name in set(VECTORS) & set(a.column_names):
            np.testing.assert_allclose(
                np.stack(a.column(name).to_numpy(zero_copy_only=False)),
                np.stack(b.column(name).to_numpy(zero_copy_only=False)),
                atol=1e-5,
            )

    index_dir = tmp_path / "index"
    overrides = ["--set", f"config.embeddings_dir={single}", "--set", f"config.out_dir={index_dir}"]
    assert cli.main(["run", str(JOBS / "index-local.yaml"), *overrides, "--set", "config.tune_queries=10"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 20 and (index_dir / "infos.json").is_file()
    dedup_dir = tmp_path / "dedup"
    overrides = ["--set", f"config.embeddings_dir={single}", "--set", f"config.out_dir={dedup_dir}"]
    assert cli.main(["run", str(JOBS / "dedup-local.yaml"), *overrides, "--set", "config.device=cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["runner"] == "beam"
    keep = pq.read_table(dedup_dir / "keep.parquet")
    assert 0 < keep.num_rows <= 20
