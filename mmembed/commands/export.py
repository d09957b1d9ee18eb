"""``export``: the samples a query and/or a --where filter select, copied byte for byte into new WebDataset
shards with a manifest (clip-retrieval's ``filter``, on (shard, key) identities). Its options are
``ExportConfig``'s fields (``mmembed.stages``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mmembed.commands.output import print_json
from mmembed.stages import config_of, stage


def export_command(args: argparse.Namespace, extra: list[str]) -> int:
    """0 when every selected sample was exported, 3 when some could not be read (error rows in the manifest)."""
    from mmembed.export.run import run

    summary = run(config_of(stage("export"), args))
    print_json(summary)
    return export_status(summary)


def export_status(summary: dict[str, Any]) -> int:
    """3 (naming the first unreadable sample on stderr) when some selected samples could not be read, else 0."""
    if summary["errors"]:
        print(
            f"mmembed export: {summary['errors']} of {summary['selected']} samples could not be read (first: "
            f"{summary['error_examples'][0]}); they are error rows in {summary['manifest']}",
            file=sys.stderr,
        )
        return 3
    return 0
