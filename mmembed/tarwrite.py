"""Tar members written byte for byte with deterministic headers, and numbered shards each published whole.

A member's header holds its name and size only (mtime 0, mode 0644, owner 0, pax format for long or non-ASCII
names), so the same samples always give the same bytes. ``NumberedShards`` fills ``<out>/<prefix>-000000.tar``,
``-000001.tar`` ... in a local staging folder and publishes each when it is full (a rename beside a local out,
an upload to an object store), so no reader ever sees a half-written shard under its final name.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable

from mmembed import storage

TAR_FORMAT = tarfile.PAX_FORMAT


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One regular member ``name`` holding ``data``, its header free of time, owner and permissions noise."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


class NumberedShards:
    """Samples (each a list of (member name, bytes)) into shards of at most ``samples_per_shard`` samples.

    ``staging`` is a local folder (``storage.staging_dir(out)``); ``close`` publishes the last shard. A
    failure leaves nothing under a final name for the shard being written (the staging folder is removed by
    its owner).
    """

    def __init__(self, out_dir: str, staging: str, prefix: str, samples_per_shard: int, digits: int = 6) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples per shard must be >= 1, got {samples_per_shard}")
        self.out_dir, self.staging, self.prefix = out_dir, staging, prefix
        self.samples_per_shard, self.digits = samples_per_shard, digits
        self.published: list[str] = []  # URLs of the finished shards, in order
        self._tar: tarfile.TarFile | None = None
        self._local = ""
        self._count = 0
        storage.make_dirs(out_dir)

    @property
    def current(self) -> str:
        """The name (no ``.tar``) of the shard the next sample goes into."""
        return f"{self.prefix}-{len(self.published):0{self.digits}d}"

    def write(self, members: Iterable[tuple[str, bytes]]) -> str:
        """Append one sample's members; returns the name of the shard it went into."""
        if self._tar is None:
            self._local = os.path.join(self.staging, f"{self.current}.tar")
            self._tar = tarfile.open(self._local, "w", format=TAR_FORMAT)  # noqa: SIM115 - closed in _finish
        name = self.current
        for member, data in members:
            add_member(self._tar, member, data)
        self._count += 1
        if self._count == self.samples_per_shard:
            self._finish()
        return name

    def close(self) -> list[str]:
        """Publish the shard being filled (if any); the URLs of every shard written."""
        if self._tar is not None:
            self._finish()
        return self.published

    def _finish(self) -> None:
        url = storage.join(self.out_dir, f"{self.current}.tar")
        self._tar.close()
        storage.publish(self._local, url)
        self.published.append(url)
        self._tar, self._count = None, 0
