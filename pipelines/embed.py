"""``python -m pipelines.embed``: the embed job, with the same options, errors and exit status as ``mmembed embed``.

Options not listed by ``--help`` are standard Beam pipeline options (``--runner DataflowRunner --project ...``)
and pass through. The job itself lives in ``mmembed/embed/``; its options are ``EmbedJobConfig``'s fields.
"""

from __future__ import annotations

import sys
from typing import Any

from mmembed.stages import parse_pipeline_args


def run(argv: list[str] | None = None, test_pipeline: Any = None) -> int:
    """Parse the embed stage's options, pass the rest to Beam, run and report; returns the exit status."""
    from mmembed.embed.job import run_and_report

    config, beam_args = parse_pipeline_args("embed", argv, "python -m pipelines.embed", __doc__)
    return run_and_report(config, beam_args, test_pipeline)


if __name__ == "__main__":
    from mmembed.cli import entry

    entry(["embed", *sys.argv[1:]])
