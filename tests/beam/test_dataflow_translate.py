"""The embed, sharded-index and dedup jobs translate into Dataflow jobs, offline and without submitting anything.

Each job runs through ``mmembed run``'s launcher (``mmembed.jobs``) with its ``jobs/*.yaml`` file, the
DataflowRunner and ``--dry_run``: Beam applies Dataflow's overrides, builds the portable pipeline proto and the
Dataflow ``Job`` and stops before any staging or API call. The test then builds the Dataflow ``Environment`` (the
worker pool: machine type, GPUs, container image) from the same options, as job submission would, and stops the
launcher there, since a dry run writes no outputs for it to read. Sockets and credential lookups are blocked, so
any network or auth access fails the test. Every pickled DoFn is loaded back, recording each module it needs on a
worker: only installed packages, never ``__main__`` or the tests (``save_main_session`` is off).
"""

from __future__ import annotations

import base64
import bz2
import io
import pickle
import socket
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient", reason="needs apache-beam[gcp]")

from apache_beam.portability import common_urns  # noqa: E402
from apache_beam.portability.api import beam_runner_api_pb2  # noqa: E402
from apache_beam.runners.dataflow import dataflow_runner  # noqa: E402
from apache_beam.runners.dataflow.internal import apiclient  # noqa: E402

from mmembed.jobs import load_job, run_job  # noqa: E402
from tests.dedup.synth import write_dedup_dir  # noqa: E402
from tests.index.synth import blobs, write_embed_dir  # noqa: E402

JOBS = Path(__file__).resolve().parents[2] / "jobs"
GPU_SERVICE_OPTION = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
DRY_RUN = [
    "beam_options.runner=DataflowRunner",
    "beam_options.project=test-project",
    "beam_options.region=us-central1",
    "beam_options.temp_location=gs://mmembed-test/tmp",
    "beam_options.dry_run=true",
]
# Packages a worker may import to load the job's pickled functions: the standard library and installed deps.
WORKER_PACKAGES = set(sys.stdlib_module_names) | {
    "mmembed", "pipelines", "apache_beam", "cloudpickle", "numpy", "pyarrow", "faiss", "torch", "open_clip",
}  # fmt: skip


class Translated(Exception):
    """Raised once the Dataflow job is built: the launcher stops there instead of reading absent outputs."""

    def __init__(self, job: apiclient.Job, environment: Any) -> None:
        super().__init__("translated")
        self.job = job
        self.environment = environment


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and no credential lookup: either one fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during translation: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import google.auth

    def no_credentials(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("credential lookup during translation")

    monkeypatch.setattr(google.auth, "default", no_credentials)


@pytest.fixture
def dry_run(monkeypatch: pytest.MonkeyPatch, offline: None) -> None:
    """DataflowRunner.run_pipeline as Beam runs it (with --dry_run), then the worker environment, then stop."""
    original = dataflow_runner.DataflowRunner.run_pipeline

    def run_pipeline(self, pipeline, options, pipeline_proto=None):  # noqa: ANN001, ANN202
        result = original(self, pipeline, options, pipeline_proto)
        version = getattr(apiclient, "_FNAPI_ENVIRONMENT_MAJOR_VERSION", "8")
        staged = "gs://mmembed-test/staging/pipeline.pb"
        environment = apiclient.Environment([], options, version, staged, result.job.proto_pipeline)
        raise Translated(result.job, environment.proto)

    monkeypatch.setattr(dataflow_runner.DataflowRunner, "run_pipeline", run_pipeline)


def translate(job_file: str, overrides: list[str]) -> Translated:
    job = load_job(JOBS / job_file, [*overrides, *DRY_RUN])
    with pytest.raises(Translated) as caught:
        run_job(job)
    return caught.value


def step_names(pipeline: beam_runner_api_pb2.Pipeline) -> set[str]:
    return {t.unique_name for t in pipeline.components.transforms.values()}


class RecordingUnpickler(pickle.Unpickler):
    """Loads a pickle and records every (module, name) it imports."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.imported: set[tuple[str, str]] = set()

    def find_class(self, module: str, name: str) -> Any:
        self.imported.add((module, name))
        return super().find_class(module, name)


def pickled_functions(pipeline: beam_runner_api_pb2.Pipeline) -> dict[str, tuple[Any, set[tuple[str, str]]]]:
    """step name -> (the loaded DoFn, modules its pickle imports) for every ParDo of the pipeline."""
    found = {}
    for transform in pipeline.components.transforms.values():
        if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
            continue
        spec = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn
        if spec.urn != "beam:dofn:pickled_python_info:v1":
            continue
        packed = base64.b64decode(spec.payload)
        try:
            raw = bz2.decompress(packed)
        except OSError:
            raw = zlib.decompress(packed)
        unpickler = RecordingUnpickler(raw)
        loaded = unpickler.load()
        found[transform.unique_name] = (loaded[0], unpickler.imported)
    return found


def check_pickles(pipeline: beam_runner_api_pb2.Pipeline, expected_dofns: set[str]) -> None:
    functions = pickled_functions(pipeline)
    modules = {module for _, imported in functions.values() for module, _ in imported}
    assert not [m for m in modules if m == "__main__" or m.split(".")[0] == "tests"], modules
    packages = {m.split(".")[0] for m in modules}
    assert packages <= WORKER_PACKAGES, packages - WORKER_PACKAGES
    ours = {type(fn).__name__: fn for fn, _ in functions.values() if type(fn).__module__.startswith("mmembed.")}
    assert expected_dofns <= set(ours), sorted(ours)
    for fn in ours.values():  # plain pickle too: no lambdas or open handles held by our DoFns
        assert type(pickle.loads(pickle.dumps(fn))) is type(fn)


def check_common(translated: Translated) -> dict[str, Any]:
    environment = translated.environment
    options = dict(environment.sdk_pipeline_options["options"])
    assert options["save_main_session"] is False and options["project"] == "test-project"
    assert "use_runner_v2" in environment.experiments  # Beam 2.77 adds it for Dataflow
    return options


def test_embed_gpu_job_translates_with_gpu_workers_and_the_custom_image(
    dry_run: None, demo_shards: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "emb"
    translated = translate(
        "embed-dataflow-gpu.yaml", [f"config.shards=[{', '.join(demo_shards)}]", f"config.out={out}"]
    )
    pipeline = translated.job.proto_pipeline
    steps = step_names(pipeline)
    for step in ("Embed/ReadAndPrepare", "Embed/Encode/BeamML_RunInference", "Embed/Write"):
        assert step in steps, sorted(steps)
    # The one shuffle spreads the shard list; none stands between reading and writing, where it would hold
    # every shard's output back until the whole input is embedded.
    shuffles = [
        t.unique_name
        for t in pipeline.components.transforms.values()
        if t.spec.urn == common_urns.primitives.GROUP_BY_KEY.urn
    ]
    assert shuffles and all(name.startswith("Embed/SpreadShards/") for name in shuffles), shuffles

    options = check_common(translated)
    assert options["dataflow_service_options"] == [GPU_SERVICE_OPTION]
    pool = translated.environment.worker_pools[0]
    image = "us-central1-docker.pkg.dev/YOUR_PROJECT/mmembed/worker:0.1.0"
    assert pool.machine_type == "g2-standard-8" and pool.worker_harness_container_image == image
    assert pool.num_threads_per_worker == 4 and list(translated.environment.service_options) == [GPU_SERVICE_OPTION]
    assert not pool.packages  # nothing staged: mmembed comes with the container image
    environments = pipeline.components.environments.values()
    assert {beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image for e in environments} == {image}
    assert all(not e.resource_hints for e in environments)  # worker_accelerator, not right fitting

    check_pickles(pipeline, {"ReadAndPrepareShard", "WriteShardOutputs"})
    handlers = [fn._model_handler for fn, _ in pickled_functions(pipeline).values() if hasattr(fn, "_model_handler")]
    assert [type(h).__name__ for h in handlers] == ["OpenClipModelHandler"]
    assert handlers[0].config.device == "cuda" and handlers[0].share_model_across_processes()  # one copy per GPU
    assert handlers[0].model_copies() == 1
    assert not (out / "embeddings").exists()  # a dry run writes nothing


def test_right_fitting_variant_puts_the_accelerator_hint_on_the_environment(
    dry_run: None, demo_shards: list[str], tmp_path: Path
) -> None:
    hint = "type:nvidia-l4;count:1;install-nvidia-driver"
    overrides = [
        f"config.shards=[{demo_shards[0]}]",
        f"config.out={tmp_path}",
        "beam_options.dataflow_service_options=[]",
        f"beam_options.resource_hints={{accelerator: '{hint}'}}",
    ]
    translated = translate("embed-dataflow-gpu.yaml", overrides)
    environments = list(translated.job.proto_pipeline.components.environments.values())
    assert [dict(e.resource_hints) for e in environments] == [{"beam:resources:accelerator:v1": hint.encode()}]
    assert not translated.environment.service_options


def test_sharded_index_job_translates(dry_run: None, tmp_path: Path) -> None:
    emb = tmp_path / "emb"
    write_embed_dir(emb, blobs(300, 16, seed=1), blobs(300, 16, seed=2), per_shard=100)
    overrides = [
        f"config.embeddings_dir={emb}",
        f"config.out_dir={tmp_path / 'index'}",
        "config.index_key=IVF4,Flat",
        "config.tune_queries=20",
        "config.files_per_part=1",
    ]
    translated = translate("index-local.yaml", overrides)
    assert {"Parts", "AddParts/Spread", "AddParts/Add"} <= step_names(translated.job.proto_pipeline)
    check_common(translated)
    check_pickles(translated.job.proto_pipeline, {"AddPartFn"})


def test_dedup_job_translates(dry_run: None, tmp_path: Path) -> None:
    emb = tmp_path / "emb"
    write_dedup_dir(emb, blobs(300, 16, seed=3), per_shard=100)
    overrides = [
        f"config.embeddings_dir={emb}",
        f"config.out_dir={tmp_path / 'dedup'}",
        "config.n_clusters=3",
        "config.sample_size=100",
        "config.recall_queries=10",
        "config.device=cpu",
    ]
    translated = translate("dedup-local.yaml", overrides)
    steps = step_names(translated.job.proto_pipeline)
    assert {"Files", "FindDuplicates", "WriteResults"} <= {s.split("/")[0] for s in steps}, sorted(steps)
    check_common(translated)
    check_pickles(translated.job.proto_pipeline, {"ReadFileFn", "PerceptualHashFn", "CompareClusterFn"})
