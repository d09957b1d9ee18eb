"""Write WebDataset shards (image + txt caption + json metadata) from local images.

Two sources: a folder of images with sidecar ``<name>.txt`` captions (and optional ``<name>.json``),
or a CSV/Parquet manifest with an image path column, a caption column and extra columns that
become the json metadata. Image bytes are copied as they are, never re-encoded. Keys are the
zero-padded position in a deterministic order, so the same input always gives the same keys.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from webdataset import ShardWriter

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.progress import Progress

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


_NUMBER_FIELD = re.compile(r"%0?\d*d")  # the shard-number field of a pattern such as %05d.tar


@dataclass(frozen=True)
class ShardSpec:
    """Where and how to write shards: ``<out>/<prefix>-<pattern % n>``.

    The prefix names the source (make-shards defaults it to the input folder's or manifest's name), so
    shards of two sources can share a folder without one overwriting the other; shards already there
    under the same names are refused unless ``overwrite``.
    """

    out: str
    samples_per_shard: int = 1000
    pattern: str = "%05d.tar"
    key_digits: int = 9
    prefix: str = ""
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError("samples per shard must be >= 1")
        if not _NUMBER_FIELD.search(self.pattern):
            raise ValueError(f"shard pattern {self.pattern!r} needs a %d-style field for the shard number")
        if "/" in self.prefix:
            raise ValueError(f"shard prefix {self.prefix!r} must not contain '/'")

    @property
    def file_pattern(self) -> str:
        """The shard file name pattern with the prefix, e.g. ``photos-%05d.tar``."""
        return f"{self.prefix}-{self.pattern}" if self.prefix else self.pattern

    def existing(self) -> list[str]:
        """Files in ``out`` named as this spec names shards (``photos-00012.tar``; not ``photos-b-00000.tar``)."""
        field = _NUMBER_FIELD.search(self.file_pattern)
        head, tail = self.file_pattern[: field.start()], self.file_pattern[field.end() :]
        head, tail = head.replace("%%", "%"), tail.replace("%%", "%")
        name = re.compile(re.escape(head) + r"\d+" + re.escape(tail))
        candidates = storage.glob(storage.join(self.out, f"{glob_escape(head)}*{glob_escape(tail)}"))
        return [url for url in candidates if name.fullmatch(posixpath.basename(url))]


def glob_escape(text: str) -> str:
    """``text`` with glob characters matched literally (``[*]``)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def source_prefix(source: Path | str) -> str:
    """A shard prefix from a source's name (a folder, a manifest file, a data set): safe in file names."""
    path = Path(source).resolve()  # "photos/" and "." name their folder too
    name = path.stem if path.suffix.lower() in (".csv", ".parquet", ".pq") else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "shards"


@dataclass
class SourceSample:
    """One sample to write: its image (a file, or bytes already in memory), caption (None if missing), metadata."""

    image_path: Path  # the file to copy, or with image_bytes just its name (the suffix gives the extension)
    caption: str | None
    metadata: dict[str, Any]
    key: str | None = None  # None: the zero-padded position is the key
    image_bytes: bytes | None = None


class SizedSamples(Iterator[SourceSample]):
    """Samples of a source that knows how many it holds (a listed folder, a read manifest): ``write_shards``
    shows images done of that total (``operator.length_hint``)."""

    def __init__(self, samples: Iterator[SourceSample], count: int) -> None:
        self._samples, self._left = samples, count

    def __next__(self) -> SourceSample:
        sample = next(self._samples)
        self._left -= 1
        return sample

    def __length_hint__(self) -> int:
        return max(self._left, 0)


def samples_from_folder(images: Path) -> SizedSamples:
    """Images under ``images`` (recursive, sorted) with ``<stem>.txt`` captions and ``<stem>.json`` metadata."""
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist")
    paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return SizedSamples(_folder_samples(images, paths), len(paths))


def _folder_samples(images: Path, paths: list[Path]) -> Iterator[SourceSample]:
    for path in paths:
        caption_file, json_file = path.with_suffix(".txt"), path.with_suffix(".json")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else None
        metadata = json.loads(json_file.read_text(encoding="utf-8")) if json_file.is_file() else {}
        metadata.setdefault("source_path", str(path.relative_to(images)))
        yield SourceSample(path, caption, metadata)


def read_manifest(manifest: Path) -> list[dict[str, Any]]:
    """Rows of a .csv or .parquet manifest as dicts."""
    suffix = manifest.suffix.lower()
    if suffix == ".csv":
        table = pacsv.read_csv(manifest)
    elif suffix in (".parquet", ".pq"):
        table = pq.read_table(manifest)
    else:
        raise ValueError(f"manifest {manifest}: expected a .csv or .parquet file")
    return table.to_pylist()


def samples_from_manifest(
    manifest: Path, image_column: str, caption_column: str, image_root: Path | None, key_column: str | None = None
) -> SizedSamples:
    """One sample per manifest row; every column but image and caption goes into the json metadata.

    With ``key_column`` the sample keys come from that column (they must be unique and contain no
    '.' or '/', which WebDataset uses to split member names); otherwise keys are row positions.
    """
    rows = read_manifest(manifest)
    samples = _manifest_samples(manifest, rows, image_column, caption_column, image_root, key_column)
    return SizedSamples(samples, len(rows))


def _manifest_samples(
    manifest: Path,
    rows: list[dict[str, Any]],
    image_column: str,
    caption_column: str,
    image_root: Path | None,
    key_column: str | None,
) -> Iterator[SourceSample]:
    if rows:
        wanted = [c for c in (image_column, caption_column, key_column) if c]
        missing = [c for c in wanted if c not in rows[0]]
        if missing:
            raise ValueError(f"manifest {manifest} has no column(s) {missing}; columns are {list(rows[0])}")
    root = image_root or manifest.parent
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        path = Path(str(row[image_column]))
        metadata = {k: v for k, v in row.items() if k not in (image_column, caption_column)}
        metadata.setdefault("source_path", str(path))
        caption = row[caption_column]
        key = _checked_key(row[key_column], seen, manifest, number) if key_column else None
        yield SourceSample(
            path if path.is_absolute() else root / path, None if caption is None else str(caption), metadata, key
        )


def _checked_key(value: Any, seen: set[str], manifest: Path, row: int) -> str:
    key = str(value)
    if not key or "." in key or "/" in key or key in seen:
        problem = "repeats an earlier key" if key in seen else "is empty or contains '.' or '/'"
        raise ValueError(
            f"manifest {manifest} row {row}: key {key!r} {problem}; fix: give each row a unique key without "
            "dots or slashes, or leave out --key-column to number the samples"
        )
    seen.add(key)
    return key


def write_shards(samples: Iterator[SourceSample], spec: ShardSpec) -> dict[str, Any]:
    """Write samples into numbered tar shards; returns counts and the shard paths written.

    Shards already in ``spec.out`` under the names this would write are refused (nothing is written), or
    with ``spec.overwrite`` removed first, so no stale shard of an earlier run stays beside the new ones.
    """
    out = spec.out
    existing = spec.existing()
    if existing and not spec.overwrite:
        raise ConfigError(
            f"{existing[0]} already exists ({len(existing)} shard(s) named {spec.file_pattern} in {out}); "
            "nothing was written. Fix: pass --overwrite to replace them, or another --prefix or --out"
        )
    storage.delete(existing)
    written, no_caption, missing = 0, 0, []
    total = operator.length_hint(samples, -1)  # a list's iterator or a SizedSamples knows it; a generator does not
    with (
        Progress("make-shards", total if total >= 0 else None, "images") as progress,
        storage.staging_dir(out) as staging,
        ShardWriter(
            os.path.join(staging, spec.file_pattern),
            maxcount=spec.samples_per_shard,
            verbose=0,
            encoder=False,
            mtime=0,
            post=lambda local: storage.publish(local, storage.join(out, os.path.basename(local))),
        ) as sink,
    ):
        for sample in samples:
            if sample.image_bytes is None and not sample.image_path.is_file():
                missing.append(str(sample.image_path))
                progress.advance(1, missing=1)
                continue
            image = sample.image_bytes if sample.image_bytes is not None else sample.image_path.read_bytes()
            record: dict[str, Any] = {
                "__key__": sample.key or f"{written:0{spec.key_digits}d}",
                _image_extension(sample.image_path): image,
                "json": json.dumps(sample.metadata, ensure_ascii=False, sort_keys=True, default=str).encode(),
            }
            if sample.caption is None:
                no_caption += 1
            else:
                record["txt"] = sample.caption.encode("utf-8")
            sink.write(record)
            written += 1
            progress.advance(1)
        shards = sink.shard
    if missing:
        log.warning("%d image files not found, not written (first: %s)", len(missing), missing[0])
    if no_caption:
        log.warning(
            "%d of %d samples have no caption: embed them with `mmembed embed --captions optional` (image-only "
            "where a caption is missing) or `--captions none` (images only); the default, --captions required, "
            "records each as a no_caption error",
            no_caption,
            written,
        )
    paths = [storage.join(out, spec.file_pattern % i) for i in range(shards)] if written else []
    return {"samples": written, "shards": paths, "no_caption": no_caption, "missing_images": missing}


def _image_extension(path: Path) -> str:
    return path.suffix.lower().lstrip(".")
