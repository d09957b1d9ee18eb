"""A local copy of a remote index dir, for faiss to memory-map: downloaded once, reused until the index changes.

Layout: ``<cache>/indexes/<sha256 of the URL>/<version>/`` holds ``infos.json`` and the files it names, where
``<cache>`` is ``storage.cache_root()`` (``$MMEMBED_CACHE``, default ``~/.cache/mmembed``) and ``<version>``
is a digest of those files' names, sizes and modification times, so a rebuilt or appended index is fetched
again. A version is downloaded into a hidden folder beside it and renamed into place whole: two processes
fetching at once never see half a copy (the loser of the rename discards its own). Older versions of the same
URL are removed once a newer one is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.index.store import INFOS_FILE, index_file_names, read_infos

log = logging.getLogger(__name__)
_DOWNLOADING = ".download-"  # prefix of a version still being fetched
_STALE_SECONDS = 24 * 3600  # a download folder this old belongs to a killed process
_ATTEMPTS = 3  # the index may change while it is fetched (an append, a rebuild): fetch again


@dataclass(frozen=True)
class RemoteVersion:
    """One version of a remote index dir: its files (``infos.json`` first) with sizes and modification times."""

    url: str
    files: tuple[tuple[str, int, float | None], ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.files).encode()).hexdigest()[:24]


def cache_root() -> str:
    """Where remote indexes are cached: ``indexes/`` in the storage cache (``$MMEMBED_CACHE``)."""
    return os.path.join(storage.cache_root(), "indexes")


def local_index_dir(url: str) -> str:
    """A local folder holding the index dir ``url``: the folder itself when local, else the cached copy of
    its current version (fetched first when missing)."""
    if storage.is_local(url):
        return storage.local_path(url)
    for attempt in range(_ATTEMPTS):
        version = current_version(url)
        try:
            return _cached(version)
        except _Changed as exc:
            log.info("index %s changed while it was fetched (%s); fetching again", url, exc)
            if attempt == _ATTEMPTS - 1:
                raise ConfigError(f"index {url} kept changing while it was downloaded ({exc}); try again") from exc
    raise AssertionError("unreachable")


def current_version(url: str) -> RemoteVersion:
    """The files the remote ``infos.json`` names, with their sizes and times; a ConfigError naming the URL
    when the dir, its ``infos.json`` or a file it names is missing."""
    infos = read_infos(url)
    files = []
    for name in (INFOS_FILE, *index_file_names(infos)):
        found = storage.info(storage.join(url, name))
        if found is None:
            raise ConfigError(f"{storage.join(url, name)}: named by {INFOS_FILE} but missing; rebuild the index")
        files.append((name, found.size, found.mtime))
    return RemoteVersion(url, tuple(files))


class _Changed(Exception):
    """A file of the version being fetched changed or vanished meanwhile."""


def _cached(version: RemoteVersion) -> str:
    """The local folder of ``version``, downloading it unless a complete copy is already there."""
    home = os.path.join(cache_root(), hashlib.sha256(version.url.encode()).hexdigest())
    final = os.path.join(home, version.digest)
    if os.path.isdir(final):
        return final
    os.makedirs(home, exist_ok=True)
    began = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=_DOWNLOADING, dir=home)
    try:
        _download(version, tmp)
        os.rename(tmp, final)
    except OSError:
        if not os.path.isdir(final):
            raise
        # another process put the same version in place first: keep its copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched index %s into %s in %.1fs", version.url, final, time.perf_counter() - began)
    _remove_others(home, version.digest)
    return final


def _download(version: RemoteVersion, folder: str) -> None:
    """Download every file of ``version`` into ``folder``, then check none changed meanwhile."""
    for name, _, _ in version.files:
        try:
            storage.download(storage.join(version.url, name), os.path.join(folder, name))
        except FileNotFoundError as exc:
            raise _Changed(f"{name} vanished") from exc
    for name, size, mtime in version.files:
        found = storage.info(storage.join(version.url, name))
        if found is None or (found.size, found.mtime) != (size, mtime):
            raise _Changed(f"{name} was replaced")


def _remove_others(home: str, keep: str) -> None:
    """Remove the other versions of this URL (superseded) and download folders of killed processes."""
    for name in os.listdir(home):
        path = os.path.join(home, name)
        if name == keep:
            continue
        if name.startswith(_DOWNLOADING):
            try:
                age = time.time() - os.path.getmtime(path)
            except FileNotFoundError:  # another process renamed its finished download into place meanwhile
                continue
            if age <= _STALE_SECONDS:
                continue  # another process is still fetching into it
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
