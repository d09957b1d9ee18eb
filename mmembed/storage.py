"""All file access of mmembed, for local paths and object stores (``s3://``, ``gs://``, any fsspec protocol).

One small API on fsspec: open for reading (seekable, with range reads), glob, exists, info, atomic write,
delete, and staging to and from local files for libraries that need a path (faiss). Object stores are
configured the standard way: S3 from the AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...,
so an S3-compatible store works), GCS from Google's default credentials. Listings are never cached: other
processes (Beam workers) write the same folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from mmembed.config import ConfigError

TEMP_MARK = ".tmp-"  # a local atomic write's temporary is named .<final name>.tmp-<32 hex digits>
_GLOB_CHARS = frozenset("*?[")
# s3fs / gcsfs: the packages to install for a protocol, named in the error when they are missing.
_EXTRAS = {"s3": "aws", "s3a": "aws", "gs": "gcp", "gcs": "gcp"}


def scheme(url: str) -> str | None:
    """``"s3"`` for ``s3://bucket/key``; None for a local path (``file://`` counts as local)."""
    head, sep, _ = url.partition("://")
    return None if not sep or head == "file" else head


def is_local(url: str) -> bool:
    return scheme(url) is None


def local_path(url: str) -> str:
    """A local URL as a plain path (``file:///x`` -> ``/x``)."""
    return url[len("file://") :] if url.startswith("file://") else url


def join(base: str, *parts: str) -> str:
    """``base/part/...`` with ``/`` for object stores and the OS separator for local paths."""
    return os.path.join(base, *parts) if is_local(base) else posixpath.join(base, *parts)


def has_glob(pattern: str) -> bool:
    return bool(_GLOB_CHARS & set(pattern))


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it; a missing protocol package names its extra."""
    import fsspec

    if is_local(url):
        return fsspec.filesystem("file"), os.path.abspath(local_path(url))
    protocol = scheme(url)
    try:
        fs = fsspec.filesystem(protocol, use_listings_cache=False, skip_instance_cache=False)
    except ImportError as exc:
        extra = _EXTRAS.get(protocol or "", "")
        hint = f"install mmembed[{extra}]" if extra else "install the fsspec package for it"
        raise ConfigError(f"{url}: {protocol}:// needs a package that is not installed ({exc}); {hint}") from exc
    except ValueError as exc:  # fsspec knows no such protocol
        raise ConfigError(f"{url}: unknown storage protocol {protocol!r} ({exc})") from exc
    return fs, fs._strip_protocol(url)


def _url(fs: Any, path: str, like: str) -> str:
    """A path fsspec returned, as a URL of the same kind as ``like``."""
    return path if is_local(like) else fs.unstrip_protocol(path)


def glob(pattern: str) -> list[str]:
    """Files matching ``pattern`` (``*``, ``?``, ``[...]``; ``**`` across folders), sorted, as full URLs."""
    fs, path = filesystem(pattern)
    try:
        found = fs.glob(path, detail=True)
    except FileNotFoundError:
        found = {}
    except OSError as exc:
        raise storage_error(pattern, exc) from exc
    if not found and not is_local(pattern):
        _check_bucket(fs, path, pattern)
    return sorted(_url(fs, p, pattern) for p, info in found.items() if info.get("type") != "directory")


def _check_bucket(fs: Any, path: str, url: str) -> None:
    """Nothing matched on an object store: say so when the reason is that the bucket itself is missing."""
    bucket = path.split("/", 1)[0]
    try:
        missing = not fs.exists(bucket)
    except OSError:
        return  # no permission to look: the caller's "matched nothing" stands
    if missing:
        raise FileNotFoundError(f"{url}: the bucket {bucket!r} does not exist; create it or fix the URL")


@dataclass(frozen=True)
class FileInfo:
    """What the storage says about one file now."""

    url: str
    size: int
    mtime: float | None  # seconds since the epoch; None where the store does not say


def info(url: str) -> FileInfo | None:
    """Size and modification time of the file at ``url``; None when there is none."""
    fs, path = filesystem(url)
    try:
        found = fs.info(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(url, exc) from exc
    if found.get("type") == "directory":
        return None
    return FileInfo(url, int(found.get("size") or 0), _mtime(found))


def _mtime(found: dict[str, Any]) -> float | None:
    """The modification time in an fsspec info dict, whatever its protocol calls it."""
    value = found.get("mtime", found.get("LastModified", found.get("updated")))
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return value.timestamp()  # datetime


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        return bool(fs.exists(path))
    except OSError as exc:
        raise storage_error(url, exc) from exc


def open_read(url: str, block_size: int | None = None) -> IO[bytes]:
    """A seekable byte stream of ``url`` (object stores read ranges on demand); compression is the reader's."""
    fs, path = filesystem(url)
    try:
        if is_local(url):
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        return fs.open(path, "rb", **({"block_size": block_size} if block_size else {}))
    except OSError as exc:
        raise storage_error(url, exc) from exc


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of ``url`` (or of ``[start, end)``: one ranged request on an object store)."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path, start=start, end=end)
    except OSError as exc:
        raise storage_error(url, exc) from exc


def read_lines(url: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file (a queries file, say), stripped."""
    try:
        text = read_bytes(url).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{url} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def make_dirs(url: str) -> None:
    """Create a local directory (object stores have none to create)."""
    if is_local(url):
        os.makedirs(local_path(url), exist_ok=True)  # several writers may create it at once


def check_writable(url: str) -> None:
    """Fail fast, before any work, when a local output directory cannot be created or written to, or when the
    bucket of an object-store output does not exist (naming it).

    Object stores' permissions are left to the job: they are the workers', not the launcher's.
    """
    if not is_local(url):
        fs, path = filesystem(url)
        _check_bucket(fs, path, url)
        return
    try:
        make_dirs(url)
        with tempfile.NamedTemporaryFile(dir=local_path(url), prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"output directory {url!r} is not writable ({exc.strerror or exc}); pass an --out you can create files in"
        ) from exc


def write_atomic(url: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``url`` so that no reader ever sees a partial file under its name.

    Locally: a hidden temporary beside it, then a rename. On an object store the object appears only when
    its upload completes (a killed upload leaves none); on failure the upload is discarded. An ``OSError``
    gets ``url`` in its message.
    """
    try:
        if is_local(url):
            _write_local(local_path(url), write)
        else:
            _write_remote(url, write)
    except OSError as exc:
        raise storage_error(url, exc, writing=True) from exc


def _write_local(path: str, write: Callable[[IO[bytes]], None]) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}{TEMP_MARK}{uuid.uuid4().hex}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _write_remote(url: str, write: Callable[[IO[bytes]], None]) -> None:
    fs, path = filesystem(url)
    f = fs.open(path, "wb")
    try:
        write(f)
    except BaseException:
        discard = getattr(f, "discard", None)  # abort the upload: closing would publish a partial object
        if discard is not None:
            discard()
            f.closed = True  # discarded: nothing left to flush when the object is collected
        raise
    f.close()


def write_bytes(url: str, data: bytes) -> None:
    write_atomic(url, lambda f: f.write(data))


def delete(urls: list[str]) -> None:
    """Remove files (already absent ones are fine)."""
    for url in urls:
        fs, path = filesystem(url)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)


def remove_temporaries(directory: str) -> int:
    """Delete the hidden temporaries (files, and staging folders) that local writers killed mid-write left in
    ``directory``; how many. Object stores have none: an interrupted upload never becomes an object."""
    if not is_local(directory) or not os.path.isdir(local_path(directory)):
        return 0
    found = [e for e in os.scandir(local_path(directory)) if e.name.startswith(".") and TEMP_MARK in e.name]
    for entry in found:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
    return len(found)


def upload(local: str, url: str) -> None:
    """Copy a local file to ``url`` atomically (a no-op copy when ``url`` is that same local file)."""
    if is_local(url) and os.path.abspath(local_path(url)) == os.path.abspath(local):
        return

    def copy(sink: IO[bytes]) -> None:
        with open(local, "rb") as source:
            shutil.copyfileobj(source, sink, 8 << 20)

    write_atomic(url, copy)


def publish(local: str, url: str) -> None:
    """Move a finished local file to ``url`` atomically: a rename on the same machine, else an upload."""
    if is_local(url):
        os.replace(local, local_path(url))
    else:
        upload(local, url)
        os.remove(local)


@contextlib.contextmanager
def staging_dir(out: str) -> Iterator[str]:
    """A local folder to write files in before they are published into ``out``: a hidden folder inside a
    local ``out`` (so publishing is a rename), a temporary one for an object store; removed afterwards."""
    parent = _stage_dir(join(out, "x")) if is_local(out) else None
    with tempfile.TemporaryDirectory(prefix=f".staging{TEMP_MARK}", dir=parent) as tmp:
        yield tmp


def download(url: str, local: str) -> None:
    """Copy ``url`` to the local file ``local`` (written atomically)."""
    with open_read(url) as source:
        _write_local(local, lambda sink: shutil.copyfileobj(source, sink, 8 << 20))


def cache_root() -> str:
    """Where remote files are cached on this machine: ``$MMEMBED_CACHE``, else ``~/.cache/mmembed``."""
    return os.environ.get("MMEMBED_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mmembed")


def cached_copy(url: str) -> str:
    """A local path holding the file at ``url``: the file itself when local; else a copy downloaded once into
    the cache, keyed by URL, size and modification time (a rewritten object is fetched again). The download
    is atomic, so two processes never see half a copy."""
    if is_local(url):
        return local_path(url)
    found = info(url)
    if found is None:
        raise FileNotFoundError(f"{url}: no such object")
    key = hashlib.sha256(f"{url}\0{found.size}\0{found.mtime}".encode()).hexdigest()[:32]
    path = os.path.join(cache_root(), "files", key, posixpath.basename(url) or "file")
    if not os.path.exists(path):
        download(url, path)
    return path


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[str]:
    """A local path holding the file at ``url``: the file itself when local, else a temporary download."""
    if is_local(url):
        yield local_path(url)
        return
    with tempfile.TemporaryDirectory(prefix="mmembed-") as tmp:
        path = os.path.join(tmp, posixpath.basename(url))
        download(url, path)
        yield path


@contextlib.contextmanager
def staged_output(url: str) -> Iterator[str]:
    """A local path to write ``url``'s content to; on a clean exit it is published atomically at ``url`` (a
    rename beside a local ``url``, an upload to an object store)."""
    with tempfile.TemporaryDirectory(prefix=f".staging{TEMP_MARK}", dir=_stage_dir(url)) as tmp:
        path = os.path.join(tmp, posixpath.basename(url) or "file")
        yield path
        publish(path, url)


def _stage_dir(url: str) -> str | None:
    """Stage a local output beside it (the final rename then never crosses file systems)."""
    if not is_local(url):
        return None
    directory = os.path.dirname(os.path.abspath(local_path(url)))
    os.makedirs(directory, exist_ok=True)
    return directory


def storage_error(url: str, exc: OSError, writing: bool = False) -> OSError:
    """``exc`` with ``url`` and the usual fix in its message; the same errno (so the same OSError subclass)."""
    text = str(exc.strerror or exc)
    if "bucket" in text.lower() and ("not exist" in text.lower() or "nosuchbucket" in text.lower()):
        text += f"; create the bucket {url.split('://', 1)[-1].split('/', 1)[0]!r} or fix the URL"
    elif isinstance(exc, PermissionError) and not is_local(url):
        text += "; check the credentials (AWS_* variables for s3://, gcloud auth for gs://)"
    message = f"{text} (while {'writing' if writing else 'reading'} {url})"
    error_class = type(exc) if isinstance(exc, FileNotFoundError | PermissionError) else OSError
    return error_class(exc.errno, message) if exc.errno is not None else error_class(message)
