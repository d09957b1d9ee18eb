"""``python -m pipelines.embed``: the embed job, with the same options, errors and exit status as ``mmembed embed``.

Options not listed by ``--help`` are standard Beam pipeline options (``--runner DataflowRunner --project ...``)
and pass through. The job itself lives in ``mmembed/embed/``.
"""

from __future__ import annotations

import sys

from mmembed.embed.job import run

__all__ = ["run"]

if __name__ == "__main__":
    from mmembed.cli import entry

    entry(["embed", *sys.argv[1:]])
