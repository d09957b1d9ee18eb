"""Tar members and whole samples read where the embed job recorded them: range reads and seeks from the
image member's data offset, never a scan of the shard and never a download of it.

The embed job records ``offset``, the byte offset of the image member's data inside its (uncompressed) tar.
The 512-byte ustar header right before it gives the member's size and name. ``read_member`` takes the header
and the first ``FIRST_READ`` bytes after it in one range read (most images fit: one request, one round trip
to an object store); a larger image costs a second range read for the rest (the server's thumbnails).
``read_sample_at`` reads every member of the sample (caption, metadata, anything else, stored before or after
the image) from an open, seekable shard, walking the tar headers from an earlier member's header (``mmembed
export``). A gzip-compressed shard cannot be seeked: callers refuse it (``GZIP_SUFFIXES``).

Every check names the sample and the fix: an offset or header that does not match the recorded key means the
shard changed since it was embedded.
"""

from __future__ import annotations

import errno
import tarfile
from collections.abc import Callable
from typing import IO

from mmembed import storage
from mmembed.shards import base_plus_ext

TAR_BLOCK = 512
FIRST_READ = 64 * 1024  # image bytes fetched together with the header (a second read only for larger images)
GZIP_SUFFIXES = (".tar.gz", ".tgz")
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a header claiming more is not an image member we wrote
RangeReader = Callable[[int, int], bytes]  # the bytes [start, end) of one file, fewer where it ends sooner
CHANGED_FIX = (
    "the shard changed since it was embedded (fix: re-embed it, or point --shards at the files that were embedded)"
)


class SampleUnavailable(LookupError):
    """A sample's stored bytes cannot be read where the index says they are; the message says why and what to do.
    ``status`` is the HTTP status the server answers with (404 unless the storage itself failed)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def read_range(url: str, start: int, end: int) -> bytes:
    """The bytes ``[start, end)`` of the file at ``url`` in one storage request; empty when the file ends
    before ``start`` (an object store refuses such a range, a local file reads nothing: one answer for both)."""
    try:
        return storage.read_bytes(url, start, end)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return b""  # HTTP 416, the range is not satisfiable: the object is shorter than ``start``
        raise


def read_member(read: RangeReader, offset: int, key: str) -> bytes:
    """The bytes of the tar member whose data starts at ``offset``, sized from the header just before it.

    ``read`` fetches byte ranges of the shard: one for the header and the first ``FIRST_READ`` data bytes,
    a second only for the rest of a larger member.
    """
    check_offset(offset, key)
    first = read(offset - TAR_BLOCK, offset + FIRST_READ)
    info = member_info(first[:TAR_BLOCK], offset, key)
    data = first[TAR_BLOCK : TAR_BLOCK + info.size]
    if len(data) < info.size:
        data += read(offset + len(data), offset + info.size)
    if len(data) != info.size:
        raise SampleUnavailable(f"sample {key}: shard ends after {len(data)} of {info.size} image bytes")
    return data


def read_member_at(f: IO[bytes], offset: int, key: str) -> bytes:
    """``read_member`` over an open, seekable file (for callers that already hold one: the demo's contact sheet)."""
    return read_member(_seek_reader(f), offset, key)


def _seek_reader(f: IO[bytes]) -> RangeReader:
    def read(start: int, end: int) -> bytes:
        f.seek(start)
        return f.read(end - start)

    return read


def check_offset(offset: int, key: str) -> None:
    """Member data starts on a tar block after at least one header; anything else is not a recorded offset."""
    if offset < TAR_BLOCK or offset % TAR_BLOCK:
        raise SampleUnavailable(f"sample {key}: offset {offset} is not the start of a tar member's data")


def member_info(header: bytes, offset: int, key: str) -> tarfile.TarInfo:
    """The tar header before ``offset``, checked to be ``key``'s regular, plausibly sized member."""
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise SampleUnavailable(f"sample {key}: no tar header before offset {offset} ({exc}); {CHANGED_FIX}") from None
    if not info.isreg() or info.size > MAX_MEMBER_BYTES or not _names_match(info.name, key):
        raise SampleUnavailable(
            f"sample {key}: the tar member at offset {offset} is {info.name!r} ({info.size} bytes), not this "
            "sample's image; the shard changed since it was embedded (fix: re-embed it, or pass the right --shards)"
        )
    return info


def _names_match(member: str, key: str) -> bool:
    """The member is ``<key>.<ext>``; a long name (GNU/pax) is cut to the header's name field, a prefix of it."""
    return member.startswith(f"{key}.") or (len(member) >= 99 and f"{key}.".startswith(member[:99]))


def read_sample_at(f: IO[bytes], offset: int, key: str, start: int = 0) -> list[tuple[str, bytes]]:
    """Every member of sample ``key`` as (member name, stored bytes), in tar order: the run of consecutive
    members with ``key`` (WebDataset's grouping) that holds the image member whose data starts at ``offset``.

    ``f`` is an open, seekable shard. The walk over the headers begins at the tar header at ``start``: 0, or
    the header of an earlier sample's member (the previous indexed sample's image), so that members stored
    before the image (``.json`` before ``.png``) are found without reading the shard from its beginning.
    Members' data are read only for the sample's own members. A SampleUnavailable says what does not match.
    """
    check_offset(offset, key)
    read = _seek_reader(f)
    member_info(read(offset - TAR_BLOCK, offset), offset, key)
    if not 0 <= start < offset or start % TAR_BLOCK:
        raise ValueError(f"sample {key}: walk start {start} must be a tar block before offset {offset}")
    try:
        f.seek(start)
        tar = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - closing it would close nothing of ours
        run_key, run = _run_holding(tar, offset)
        if run_key != key:
            raise SampleUnavailable(
                f"sample {key}: the members around offset {offset} belong to sample {run_key!r}; {CHANGED_FIX}"
            )
        return [(info.name, _member_data(tar, info, key)) for info in run]
    except (tarfile.TarError, EOFError) as exc:
        raise SampleUnavailable(
            f"sample {key}: unreadable tar structure near offset {offset} ({exc}); {CHANGED_FIX}"
        ) from None


def _run_holding(tar: tarfile.TarFile, offset: int) -> tuple[str | None, list[tarfile.TarInfo]]:
    """The key and members of the run of consecutive same-key members that holds the data at ``offset``."""
    run_key: str | None = None
    run: list[tarfile.TarInfo] = []
    holds = False
    for info in tar:
        if info.isdir():
            continue  # not a sample member (the embed job's reader skips it too)
        key = base_plus_ext(info.name)[0]
        if key is None or key != run_key or not run:
            if holds or info.offset_data > offset:
                break  # the run that held the offset has ended, or the walk went past it
            run_key, run = key, []
        run.append(info)
        holds = holds or info.offset_data == offset
    else:
        _check_end(tar)
    if not holds:
        raise tarfile.ReadError(f"no member's data starts at offset {offset}")
    return run_key, run


def _check_end(tar: tarfile.TarFile) -> None:
    """The walk reached the end of the archive: refuse a cut or damaged header there (``tarfile`` takes one past
    the first member for the end of the archive, which would drop the sample's last members unseen)."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(TAR_BLOCK)
    if block and block != bytes(TAR_BLOCK):  # nothing at all: the file ends on a member boundary, as streams may
        raise tarfile.ReadError(f"the tar is cut or damaged at byte {tar.offset} (a partial or invalid header)")


def _member_data(tar: tarfile.TarFile, info: tarfile.TarInfo, key: str) -> bytes:
    """A regular member's stored bytes, all of them."""
    if not info.isreg():
        raise SampleUnavailable(
            f"sample {key}: member {info.name} is a link or special file, which holds no bytes to copy; "
            "fix: store the file itself in the shard and re-embed it"
        )
    if info.size > MAX_MEMBER_BYTES:
        raise SampleUnavailable(f"sample {key}: member {info.name} claims {info.size} bytes; {CHANGED_FIX}")
    extracted = tar.extractfile(info)
    data = extracted.read() if extracted is not None else b""
    if len(data) != info.size:
        raise SampleUnavailable(f"sample {key}: shard ends after {len(data)} of {info.size} bytes of {info.name}")
    return data
