"""File access through Beam's FileSystems, so local paths, gs:// and s3:// all work the same."""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable
from typing import IO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mmembed.config import ConfigError
from mmembed.records import ShardSource
from mmembed.shards import check_unique_names, expand_braces

_GLOB_CHARS = set("*?[")
TEMP_MARK = ".tmp-"  # write_atomic's temporaries are named .<final name>.tmp-<32 hex digits>


def list_shards(patterns: list[str] | tuple[str, ...]) -> list[str]:
    """Expand brace patterns and globs into shard URLs, sorted within each pattern.

    A glob that matches nothing is an error; a plain path is kept even if missing, so the job
    records it as a failed shard instead of forgetting it.
    """
    urls: dict[str, None] = {}
    for pattern in expand_braces(list(patterns)):
        if _GLOB_CHARS & set(pattern):
            matched = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
            if not matched:
                raise FileNotFoundError(f"shard pattern {pattern!r} matched no files; check the path and quoting")
            for url in matched:
                urls.setdefault(url, None)
        else:
            urls.setdefault(pattern, None)
    result = list(urls)
    check_unique_names(result)
    return result


def stat_shards(urls: list[str]) -> list[ShardSource]:
    """Each shard URL with its size and modification time, as the storage reports them now.

    Local paths are made absolute, so the record names the same file from any working directory. A path
    that cannot be listed keeps size and time None; the job then records why it cannot be read.
    """
    sources = []
    for url in urls:
        local = FileSystems.get_scheme(url) is None
        try:
            found = FileSystems.match([url])[0].metadata_list
        except Exception:  # noqa: BLE001 - an unlistable shard is reported by the reader, with its cause
            found = []
        exact = next((m for m in found if m.path == url), None)
        source_url = os.path.abspath(url) if local else url
        if exact is None:
            sources.append(ShardSource(source_url))
        else:
            sources.append(ShardSource(source_url, exact.size_in_bytes, exact.last_updated_in_seconds))
    return sources


def open_read(url: str) -> IO[bytes]:
    """A raw byte stream; compression is left to the reader (tarfile detects gzip itself)."""
    return FileSystems.open(url, compression_type=CompressionTypes.UNCOMPRESSED)


def exists(url: str) -> bool:
    return FileSystems.exists(url)


def make_dirs(url: str) -> None:
    """Create a local directory (object stores need none)."""
    if FileSystems.get_scheme(url) is None:
        os.makedirs(url, exist_ok=True)  # several writers may create it at once (multi-worker runners)


def check_writable(url: str) -> None:
    """Fail fast, before any work, when a local output directory cannot be created or written to.

    Object stores are left to the job: their permissions are the workers', not the launcher's.
    """
    if FileSystems.get_scheme(url) is not None:
        return
    try:
        make_dirs(url)
        with tempfile.NamedTemporaryFile(dir=url, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"output directory {url!r} is not writable ({exc.strerror or exc}); pass an --out you can create files in"
        ) from exc


def write_atomic(url: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write to a hidden temporary name beside ``url``, then rename, so readers never see a partial file.

    On failure the temporary file is removed; an ``OSError`` (disk full, no permission) gets ``url`` in its message.
    """
    directory, name = posixpath.split(url)
    tmp = posixpath.join(directory, f".{name}{TEMP_MARK}{uuid.uuid4().hex}")
    try:
        make_dirs(directory)
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            write(f)
        FileSystems.rename([tmp], [url])
    except BaseException as exc:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        if isinstance(exc, OSError):  # same errno (so the same subclass), the message names the file being written
            cause = f"{exc.strerror or exc}" + (f": {exc.filename!r}" if exc.filename else "")
            message = f"{cause} (while writing {url})"
            raise (OSError(exc.errno, message) if exc.errno is not None else OSError(message)) from exc
        raise


def remove_temporaries(directory: str) -> int:
    """Delete the hidden temporaries that writers killed mid-write left in ``directory``; return how many."""
    found = FileSystems.match([posixpath.join(directory, f".*{TEMP_MARK}*")])[0].metadata_list
    if found:
        FileSystems.delete([m.path for m in found])
    return len(found)


def read_bytes(url: str) -> bytes:
    with open_read(url) as f:
        return f.read()
