"""Shard URLs and streaming tar reading: members grouped into samples by WebDataset key.

A shard is read as a stream (``tarfile`` mode ``r|*``, gzip detected), so memory holds one
sample at a time, never a whole shard. Structural problems become ``SampleError`` records
instead of exceptions, so the rest of the shard is still processed.
"""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
from collections.abc import Generator, Iterator
from typing import IO

from braceexpand import braceexpand

from mmembed import storage
from mmembed.records import STAGE_READ, STAGE_SHARD, RawSample, SampleError, ShardSource
from mmembed.schema import utf8_safe

SHARD_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's rule (tariterators.base_plus_ext)
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # WebDataset's own metadata members, skipped
_SPECIAL_TYPES = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}


def expand_braces(patterns: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand ``data/{00000..00099}.tar`` style patterns; order is kept, duplicates dropped."""
    if isinstance(patterns, str):
        patterns = [patterns]
    seen: dict[str, None] = {}
    for pattern in patterns:
        for url in braceexpand(pattern):
            seen.setdefault(url, None)
    return list(seen)


def base_plus_ext(name: str) -> tuple[str | None, str | None]:
    """A tar member name -> (sample key, extensions): ``a/b.c.jpg`` -> (``a/b``, ``c.jpg``); (None, None) for a
    name without an extension. WebDataset's own rule, restated here because importing ``webdataset`` imports
    torch (~2 s), which the embed job's launcher would otherwise pay even with nothing to embed."""
    match = _KEY_AND_EXTENSION.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


def list_shards(patterns: list[str] | tuple[str, ...]) -> list[str]:
    """Expand brace patterns and globs (local, ``s3://``, ``gs://``) into shard URLs, sorted within each pattern.

    A glob that matches nothing is an error; a plain path is kept even if missing, so the job records it
    as a failed shard instead of forgetting it. Local paths come back absolute.
    """
    urls: dict[str, None] = {}
    for pattern in expand_braces(list(patterns)):
        if storage.has_glob(pattern):
            matched = storage.glob(pattern)
            if not matched:
                raise FileNotFoundError(f"shard pattern {pattern!r} matched no files; check the path and quoting")
            for url in matched:
                urls.setdefault(url, None)
        else:
            urls.setdefault(os.path.abspath(pattern) if storage.is_local(pattern) else pattern, None)
    result = list(urls)
    check_unique_names(result)
    return result


def stat_shards(urls: list[str]) -> list[ShardSource]:
    """Each shard URL with its size and modification time, as the storage reports them now.

    A shard that cannot be looked up keeps size and time None; the job then records why it cannot be read.
    """
    sources = []
    for url in urls:
        try:
            found = storage.info(url)
        except OSError:  # an unlistable shard is reported by the reader, with its cause
            found = None
        sources.append(ShardSource(url) if found is None else ShardSource(url, found.size, found.mtime))
    return sources


def shard_name(url: str) -> str:
    """Output name for a shard URL: its file name without the tar suffix (``a/b/00001.tar`` -> ``00001``)."""
    base = posixpath.basename(url.rstrip("/"))
    for suffix in SHARD_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def check_unique_names(urls: list[str]) -> None:
    """Outputs are named after shards, so two shards with one name would overwrite each other."""
    by_name: dict[str, str] = {}
    for url in urls:
        name = shard_name(url)
        if name in by_name:
            raise ValueError(
                f"shards {by_name[name]!r} and {url!r} have the same name {name!r}, so their outputs "
                "would collide; rename one or embed the two folders in separate jobs"
            )
        by_name[name] = url


def unreadable_shard_error(url: str, exc: Exception) -> SampleError:
    """The record for a shard that could not be opened (missing, a directory, no permission, remote read failed)."""
    shard = shard_name(url)
    if isinstance(exc, IsADirectoryError):
        fix = f"it is a directory: pass the shard files in it, e.g. --shards '{url.rstrip('/')}/*.tar'"
    elif isinstance(exc, FileNotFoundError):
        fix = "check the path (a glob that matches nothing is refused before the job starts)"
    else:
        fix = "check the path and your read permission; the next run of the job retries the shard"
    reason = f"shard {shard}: cannot open {url} ({type(exc).__name__}: {exc}); fix: {fix}"
    return SampleError(shard, None, None, STAGE_SHARD, "unreadable_shard", utf8_safe(reason))


def iter_shard_samples(
    fileobj: IO[bytes], shard: str, image_extensions: tuple[str, ...]
) -> Iterator[RawSample | SampleError]:
    """Stream ``fileobj`` as a tar and yield one ``RawSample`` per key, or a ``SampleError``.

    Keys are counted the WebDataset way (consecutive members sharing ``base_plus_ext``'s key; directory
    entries skipped), and each key yields exactly one item: a member with a non-UTF-8 name, a link or a
    special file makes its whole sample one error, so the samples after it are still read. A shard that
    is not a tar yields one shard-level error; a truncated shard yields the samples before the damage,
    an error for the sample being read, and a shard-level error.
    """
    grouper = _SampleGrouper(shard, image_extensions)
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|*")  # noqa: SIM115 - closed by the `with tar` below
    except (tarfile.TarError, EOFError, OSError) as exc:
        yield SampleError(
            shard,
            None,
            None,
            STAGE_SHARD,
            "not_a_tar",
            f"shard {shard}: not a readable tar archive ({exc}); "
            "fix: check the file is a .tar or .tar.gz WebDataset shard (mmembed make-shards writes them)",
        )
        return
    member_name = None
    try:
        with tar:
            for info in tar:
                member_name = info.name
                if info.isdir() or _META_MEMBER.match(posixpath.basename(info.name)):
                    continue  # not sample members (webdataset skips them too)
                problem = _member_problem(info)
                if problem is not None:
                    yield from grouper.reject(info.name, *problem)
                else:
                    yield from grouper.add(info.name, _member_bytes(tar, info), info.offset_data)
                member_name = None
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        where = f"while reading member {member_name}" if member_name else "between members"
        yield from grouper.abandon(member_name, f"shard truncated or corrupt {where}; the sample is incomplete")
        yield SampleError(
            shard,
            None,
            utf8_safe(member_name),
            STAGE_SHARD,
            "truncated_shard",
            f"shard {shard}: truncated or corrupt tar {where} ({exc}); samples before this point were "
            "processed; fix: re-download or re-create the shard",
        )
        return
    yield from grouper.finish()


def _member_problem(info: tarfile.TarInfo) -> tuple[str, str] | None:
    """(code, reason) when a member cannot be part of a sample: a name that is not UTF-8, a link, a device."""
    name = utf8_safe(info.name)
    if name != info.name:  # tarfile decodes a non-UTF-8 byte to a lone surrogate (surrogateescape)
        raw = info.name.encode("utf-8", "surrogateescape")
        return (
            "bad_member_name",
            f"member {name}: its name is not valid UTF-8 (raw bytes {raw!r}), so its sample has no storable key; "
            "fix: rename the member to UTF-8 (e.g. convmv -f latin1 -t utf8) and re-create the shard",
        )
    if info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        return (
            "link_member",
            f"member {name}: a {kind} link to {info.linkname}, not a stored file, so the shard does not hold "
            "its bytes; fix: store the file itself (tar --dereference for symbolic links, "
            "--hard-dereference for hard links)",
        )
    if not info.isfile():
        kind = _SPECIAL_TYPES.get(info.type, f"entry of tar type {info.type.decode('latin-1')!r}")
        return (
            "special_member",
            f"member {name}: a {kind}, not a regular file, so it holds no sample data; "
            "fix: store only regular files in the shard",
        )
    return None


def _read_error(shard: str, key: str | None, member: str | None, code: str, reason: str) -> SampleError:
    """A read-stage record; a name that is not valid UTF-8 is escaped here, so every sink can write it."""
    return SampleError(
        shard, utf8_safe(key), utf8_safe(member), STAGE_READ, code, utf8_safe(f"shard {shard}: {reason}")
    )


def _member_bytes(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    """A regular member's data; a shard that ends inside it raises ``tarfile.ReadError``."""
    extracted = tar.extractfile(info)
    data = extracted.read() if extracted is not None else b""
    if len(data) != info.size:
        raise tarfile.ReadError(f"member data ends after {len(data)} of {info.size} bytes")
    return data


class _SampleGrouper:
    """Groups consecutive members by key and flags keys that come back later in the shard."""

    def __init__(self, shard: str, image_extensions: tuple[str, ...]) -> None:
        self.shard = shard
        self.image_extensions = tuple(e.lower() for e in image_extensions)
        self.current: RawSample | None = None
        self.current_error: SampleError | None = None
        self.seen_keys: set[str] = set()

    def add(self, name: str, data: bytes, offset: int) -> Iterator[RawSample | SampleError]:
        """A regular file member: stored in its sample under its (lower-case) extension."""
        ext = yield from self._enter(name)
        if ext is None or self.current_error is not None:
            return
        if ext in self.current.members:
            self.current_error = self._error(
                name,
                "duplicate_member",
                f"member {name} repeats extension .{ext} inside sample {self.current.key}; fix: one file per extension",
            )
            return
        self.current.members[ext] = data
        self.current.member_offsets[ext] = offset

    def reject(self, name: str, code: str, reason: str) -> Iterator[RawSample | SampleError]:
        """A member that cannot be read as part of its sample: the sample becomes one error (its first problem)."""
        ext = yield from self._enter(name)
        if ext is not None and self.current_error is None:
            self.current_error = self._error(name, code, reason)

    def _enter(self, name: str) -> Generator[RawSample | SampleError, None, str | None]:
        """Make ``name``'s sample the current one (emitting the previous sample); its extension, None if it has none."""
        key, ext = base_plus_ext(name)
        if key is None:
            yield _read_error(
                self.shard,
                name,
                name,
                "no_extension",
                f"member {name} has no extension, so it belongs to no sample; "
                "fix: name members <key>.<ext> (e.g. 000123.jpg, 000123.txt)",
            )
            return None
        if self.current is None or key != self.current.key:
            yield from self.finish()
            self._start(key, name)
        return ext.lower()

    def _start(self, key: str, name: str) -> None:
        self.current = RawSample(self.shard, key)
        self.current_error = None
        if key in self.seen_keys:
            self.current_error = self._error(
                name,
                "duplicate_key",
                f"duplicate key {key}: member {name} repeats a key seen earlier in the shard, so the "
                "second copy was not embedded; fix: give every sample a unique key (make-shards does)",
            )
        self.seen_keys.add(key)

    def _error(self, member: str, code: str, reason: str) -> SampleError:
        return _read_error(self.shard, self.current.key, member, code, reason)

    def finish(self) -> Iterator[RawSample | SampleError]:
        """Emit the sample being assembled, checking it has an image member."""
        sample, error = self.current, self.current_error
        self.current, self.current_error = None, None
        if sample is None:
            return
        if error is not None:
            yield error
            return
        if not any(ext in sample.members for ext in self.image_extensions):
            found = ", ".join(f"{sample.key}.{e}" for e in sample.members) or "nothing"
            wanted = "/".join(f".{e}" for e in self.image_extensions)
            yield _read_error(
                self.shard,
                sample.key,
                f"{sample.key}.{next(iter(sample.members), '')}",
                "no_image",
                f"sample {sample.key} has no image member (looked for {wanted}, "
                f"found {found}); fix: add the image or drop the sample's other files",
            )
            return
        yield sample

    def abandon(self, member: str | None, reason: str) -> Iterator[RawSample | SampleError]:
        """The stream broke while reading ``member``: its sample is recorded as an error.

        A sample completed before the break (its key differs from the broken member's) is still
        emitted; with no member name (a broken header) the sample in hand may be partial.
        """
        key = base_plus_ext(member)[0] if member else None
        if member and (self.current is None or key != self.current.key):
            yield from self.finish()
            self.current = RawSample(self.shard, key or member)
        sample = self.current
        self.current, self.current_error = None, None
        if sample is not None:
            yield _read_error(self.shard, sample.key, member, "incomplete_sample", f"sample {sample.key}: {reason}")
