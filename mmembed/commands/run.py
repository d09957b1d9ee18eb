"""``run``: launch a job file from ``jobs/``: any stage (``mmembed.stages``); the Beam ones on the local runner,
multi-process or Dataflow."""

from __future__ import annotations

import argparse

from mmembed.commands.output import print_json
from mmembed.stages import STAGES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="run a YAML job file (jobs/*.yaml): {job: STAGE, config: {...}, beam_options: {...}}, STAGE one of "
        f"{', '.join(STAGES)}; the config's keys are the stage's config fields",
    )
    parser.add_argument("job_file", help="the job file, e.g. jobs/embed-local.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value by its dotted path, e.g. --set config.out=data/emb --set beam_options.project=p",
    )
    parser.add_argument("--show", action="store_true", help="print the resolved config and Beam arguments; run nothing")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.jobs import load_job, run_job

    job = load_job(args.job_file, args.overrides)
    if args.show:
        print_json(job.describe())
        return 0
    result = run_job(job)
    shown = result
    if job.kind == "index":
        keys = ("count", "dim", "index_key", "parts", "build_seconds")
        shown = {**{k: result[k] for k in keys if k in result}, "out_dir": job.config.index.out_dir}
    print_json({k: v for k, v in shown.items() if k not in ("provenance", "config")})
    return STAGES[job.kind].exit_status(result)
