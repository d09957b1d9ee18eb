"""THE Parquet schemas of an embed job's outputs, and the provenance stored in their metadata."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mmembed import __version__
from mmembed.config import RANDOM_INIT_WEIGHTS
from mmembed.records import EmbeddedChunk, SampleError

log = logging.getLogger(__name__)
PROVENANCE_KEY = b"mmembed.provenance"
PHASH_BYTES = 8
# Provenance fields that must agree for two embeddings to share a space (stored dtype and version may differ).
IDENTITY_KEYS = (
    "model",
    "pretrained",
    "checkpoint_sha256",
    "weights",
    "init_seed",
    "dim",
    "preprocessing",
    "normalized",
)
ARROW_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
# The embeddings table's per-sample columns (a row dict's keys), before the two vectors and their cosine.
ROW_FIELDS = ("key", "shard", "offset", "caption", "metadata", "url", "width", "height", "sha256", "phash")
Vectors = np.ndarray | Sequence[np.ndarray]  # N x dim, or N vectors of dim
Cosines = np.ndarray | Sequence[float]

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("key", pa.string()),  # null for an error about the whole shard
        pa.field("member", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("code", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def embeddings_schema(dim: int, dtype: str, provenance: dict[str, Any] | None = None) -> pa.Schema:
    """One row per embedded sample; embeddings as fixed_size_list<dtype>[dim], L2-normalised.

    An image-only sample (no caption with ``--captions optional``, every sample with ``--captions none``)
    has a null ``similarity`` and an all-zero ``text_embedding``, never a null one: pyarrow (25) cannot read
    back a Parquet fixed_size_list column that holds nulls ("Expected all lists to be of size=N"), and a
    zero vector keeps positional readers aligned. ``text_present`` is the one test for it.
    """
    vector = pa.list_(ARROW_DTYPES[dtype], dim)
    schema = pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("shard", pa.string(), nullable=False),
            pa.field("offset", pa.int64(), nullable=False),  # byte offset of the image member's data in the tar
            pa.field("caption", pa.string()),
            pa.field("metadata", pa.string()),  # the sample's json member, as JSON text
            pa.field("url", pa.string()),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),  # of the image member's bytes
            pa.field("phash", pa.binary(PHASH_BYTES), nullable=False),  # 64-bit perceptual hash (imagehash.phash)
            pa.field("image_embedding", vector, nullable=False),
            pa.field("text_embedding", vector, nullable=False),  # zeros: image-only sample (see text_present)
            pa.field("similarity", pa.float32()),  # cosine(image, text); null for an image-only sample
        ]
    )
    if provenance is not None:
        schema = schema.with_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True).encode()})
    return schema


def full_provenance(encoder_provenance: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Encoder provenance plus what the writer adds: stored dtype, normalisation, mmembed version."""
    return {**encoder_provenance, "dtype": dtype, "normalized": True, "mmembed_version": __version__}


_warned_random: set[str] = set()


def warn_if_random_weights(provenance: dict[str, Any], where: str) -> None:
    """One warning line (once per process) when ``where`` holds vectors of a model with random weights."""
    if provenance.get("weights") == RANDOM_INIT_WEIGHTS and not _warned_random:
        _warned_random.add(where)
        log.warning(
            "%s: made by %s with random weights (--random-init): similarities, search results and semantic "
            "duplicates mean nothing beyond a smoke test",
            where,
            provenance.get("model"),
        )


def read_provenance(schema: pa.Schema) -> dict[str, Any] | None:
    raw = (schema.metadata or {}).get(PROVENANCE_KEY)
    return json.loads(raw) if raw else None


def chunk_table(chunk: EmbeddedChunk, schema: pa.Schema) -> pa.Table:
    """A chunk's rows and embedding arrays -> a table of ``schema`` (in the chunk's order)."""
    return _table(chunk.rows, chunk.image_embeddings, chunk.text_embeddings, chunk.similarity, chunk.has_text, schema)


def _table(
    rows: Sequence[dict[str, Any]],
    image: Vectors,
    text: Vectors,
    similarity: Cosines,
    has_text: np.ndarray,
    schema: pa.Schema,
) -> pa.Table:
    """Row fields plus row-aligned embeddings and cosines -> a table of ``schema``, converted column-wise;
    rows where ``has_text`` is False get a zero text vector and a null cosine (see ``embeddings_schema``)."""
    dim = schema.field("image_embedding").type.list_size
    value_type = schema.field("image_embedding").type.value_type
    np_dtype = np.float16 if value_type == pa.float16() else np.float32
    has_text = np.asarray(has_text, dtype=bool)
    columns: dict[str, Any] = {name: [row[name] for row in rows] for name in ROW_FIELDS}
    for name, vectors in (("image_embedding", image), ("text_embedding", text)):
        array = np.asarray(vectors, dtype=np_dtype).reshape(len(rows), dim)
        if name == "text_embedding" and not has_text.all():
            array = np.where(has_text[:, None], array, 0).astype(np_dtype)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1), type=value_type), dim)
    cosines = np.asarray(similarity, dtype=np.float32)
    columns["similarity"] = pa.array(cosines, type=pa.float32(), mask=None if has_text.all() else ~has_text)
    return pa.Table.from_pydict(columns, schema=schema)


def text_present(similarity: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which rows have a text vector (bool per row), from their ``similarity`` column: null marks an
    image-only row, whose ``text_embedding`` is all zeros and must not be searched or compared."""
    return ~np.asarray(similarity.is_null(), dtype=bool)


def utf8_safe(text: str | None) -> str | None:
    """``text`` as is when it can be written as UTF-8, else with each unwritable character backslash-escaped.

    Lone surrogates make the Parquet writer raise: a tar member name's non-UTF-8 byte 0xE9 arrives
    as U+DCE9, and JSON may spell ``"\\ud800"``. Escaped, U+DCE9 reads ``\\udce9``; inside JSON text
    that is the JSON escape of the same character, so the text still parses back to the same value.
    """
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def errors_table(errors: Sequence[SampleError]) -> pa.Table:
    """Error records -> a table of ``ERRORS_SCHEMA``; text that is not valid UTF-8 is escaped, never a crash."""
    return pa.Table.from_pylist(
        [
            {
                "shard": utf8_safe(e.shard),
                "key": utf8_safe(e.key),
                "member": utf8_safe(e.member),
                "stage": e.stage,
                "code": e.code,
                "reason": utf8_safe(e.reason),
            }
            for e in errors
        ],
        schema=ERRORS_SCHEMA,
    )
