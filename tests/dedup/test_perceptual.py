"""perceptual.py: real photos and their near-copies within the pHash threshold, distinct photos outside it;
multi-index hashing equals brute-force all-pairs Hamming; per-bucket verification reports each pair once."""

from __future__ import annotations

import io
import itertools

import faiss
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from mmembed.decode import perceptual_hash
from mmembed.dedup.config import DEFAULT_PHASH_THRESHOLD
from mmembed.dedup.links import Links
from mmembed.dedup.perceptual import (
    band_keys,
    band_layout,
    band_values,
    bucket_pairs,
    hamming,
    hamming_pairs,
    perceptual_links,
    phash_codes,
)
from tests.photos import load_photo

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "horse", "coins")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _variants(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    dx, dy = w // 50, h // 50  # 2% off each side: 96% of each side, 92% of the area
    return {
        "jpeg-q30": _jpeg(image, 30),
        "resize-50%": image.resize((w // 2, h // 2)),
        "crop-92%-area": image.crop((dx, dy, w - dx, h - dy)),
    }


@pytest.fixture(scope="module")
def photo_hashes() -> tuple[list[str], np.ndarray]:
    names, hashes = [], []
    for name in PHOTOS:
        photo = load_photo(name).convert("RGB")
        for label, image in {"original": photo, **_variants(photo)}.items():
            names.append(f"{name}/{label}")
            hashes.append(perceptual_hash(image))
    return names, phash_codes(hashes)


def test_near_copies_of_real_photos_fall_within_the_threshold(photo_hashes) -> None:
    names, codes = photo_hashes
    by_photo = {}
    for name, code in zip(names, codes, strict=True):
        by_photo.setdefault(name.split("/")[0], {})[name.split("/")[1]] = code
    for photo, variants in by_photo.items():
        for label, code in variants.items():
            distance = int(hamming(variants["original"], code))
            assert distance <= DEFAULT_PHASH_THRESHOLD, f"{photo} {label}: {distance} bits"
    originals = [v["original"] for v in by_photo.values()]
    for a, b in itertools.combinations(originals, 2):
        assert hamming(a, b) > 2 * DEFAULT_PHASH_THRESHOLD  # distinct photos are far outside the threshold


def test_larger_crops_are_beyond_phash() -> None:
    """pHash is not crop-robust: a 90%-per-side crop moves 8-24 bits (measured on these photos), as far as
    some distinct photos; crops are the semantic method's job, not a reason to raise the threshold."""
    moved = []
    for name in PHOTOS:
        photo = load_photo(name).convert("RGB")
        w, h = photo.size
        crop = photo.crop((w // 20, h // 20, w - w // 20, h - h // 20))
        moved.append(int(hamming(phash_codes([perceptual_hash(photo)]), phash_codes([perceptual_hash(crop)]))[0]))
    assert sum(d > DEFAULT_PHASH_THRESHOLD for d in moved) >= len(PHOTOS) // 2, moved


def test_pairs_on_real_photos_link_each_photo_with_its_copies_only(photo_hashes) -> None:
    names, codes = photo_hashes
    left, right, distance = hamming_pairs(codes, DEFAULT_PHASH_THRESHOLD)
    found = {(names[a].split("/")[0], names[b].split("/")[0]) for a, b in zip(left, right, strict=True)}
    assert all(a == b for a, b in found) and {a for a, _ in found} == set(PHOTOS)
    assert len(left) == len(PHOTOS) * 6  # 4 images of each photo: all 6 pairs
    assert distance.max() <= DEFAULT_PHASH_THRESHOLD


def test_phash_codes_read_the_schema_column_including_sliced_chunks() -> None:
    raw = [bytes([i] * 8) for i in range(5)]
    column = pa.chunked_array([pa.array(raw[:2], pa.binary(8)), pa.array(raw[2:], pa.binary(8)).slice(1)])
    np.testing.assert_array_equal(phash_codes(column), [int.from_bytes(r, "big") for r in raw[:2] + raw[3:]])
    with pytest.raises(ValueError, match="null"):
        phash_codes(pa.array([None], pa.binary(8)))


def _planted(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for i in range(0, n // 3, 2):  # pairs at 0..12 bits: both sides of any threshold tested
        flips = rng.choice(64, size=rng.integers(0, 13), replace=False)
        codes[i + 1] = codes[i] ^ np.uint64(sum(1 << int(f) for f in flips))
    codes[n // 3 : n // 3 + 5] = codes[n // 3]  # five identical hashes
    return codes


def _brute_force(codes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    distance = hamming(codes[:, None], codes[None, :])
    return np.nonzero(np.triu(distance <= threshold, k=1))


@pytest.mark.parametrize("threshold", [0, 3, 8, 12])
def test_multi_index_hashing_equals_brute_force(threshold: int) -> None:
    codes = _planted(1500, seed=threshold)
    left, right, distance = hamming_pairs(codes, threshold)
    a, b = _brute_force(codes, threshold)
    assert len(a) >= 10  # planted pairs exist at this threshold
    np.testing.assert_array_equal(left, a)
    np.testing.assert_array_equal(right, b)
    np.testing.assert_array_equal(distance, hamming(codes[a], codes[b]))


def test_same_pairs_as_faiss_binary_multi_hash_range_search() -> None:
    codes = _planted(800, seed=4)
    index = faiss.IndexBinaryMultiHash(64, DEFAULT_PHASH_THRESHOLD + 1, 64 // (DEFAULT_PHASH_THRESHOLD + 1))
    as_bytes = codes.astype(">u8").view(np.uint8).reshape(-1, 8)
    index.add(as_bytes)
    lims, _, ids = index.range_search(as_bytes, DEFAULT_PHASH_THRESHOLD + 1)  # faiss: distance < radius
    queries = np.repeat(np.arange(len(codes)), np.diff(lims.astype(np.int64)))
    faiss_pairs = {(int(q), int(i)) for q, i in zip(queries, ids, strict=True) if q < i}
    left, right, _ = hamming_pairs(codes, DEFAULT_PHASH_THRESHOLD)
    assert set(zip(left.tolist(), right.tolist(), strict=True)) == faiss_pairs


def test_bands_cover_all_bits_and_bucket_keys_agree() -> None:
    for threshold in (0, 1, 8, 31):
        layout = band_layout(threshold)
        assert len(layout) == threshold + 1 and sum(w for _, w in layout) == 64
        assert max(w for _, w in layout) - min(w for _, w in layout) <= 1
    codes = _planted(50, seed=5)
    keys = list(band_keys(int(codes[7]), 8))
    assert keys == [(b, int(band_values(codes, 8, b)[7])) for b in range(9)]


def test_per_bucket_verification_reports_each_pair_once() -> None:
    """What a Beam job does: group rows by (band, value), verify each bucket, concatenate: no dedup needed."""
    threshold, codes = 8, _planted(1200, seed=6)
    rows = np.arange(len(codes)) + 10_000  # global row ids, not positions
    buckets: dict[tuple[int, int], list[int]] = {}
    for row, code in zip(rows, codes, strict=True):
        for key in band_keys(int(code), threshold):
            buckets.setdefault(key, []).append(int(row))
    found = []
    for (band, _), members in buckets.items():
        if len(members) > 1:
            left, right, _ = bucket_pairs(np.array(members), codes[np.array(members) - 10_000], band, threshold)
            found.extend(zip(left.tolist(), right.tolist(), strict=True))
    a, b = _brute_force(codes, threshold)
    assert len(found) == len(set(found))
    assert sorted(found) == sorted(zip((a + 10_000).tolist(), (b + 10_000).tolist(), strict=True))


def test_links_collapse_identical_hashes_but_keep_the_components() -> None:
    codes = _planted(900, seed=7)
    codes[600:900] = codes[600]  # 300 copies of one hash: 44,850 pairs, 299 links
    links = perceptual_links(codes, DEFAULT_PHASH_THRESHOLD)
    a, b = _brute_force(codes, DEFAULT_PHASH_THRESHOLD)
    assert links.pairs == len(a)
    assert len(links) < len(codes)
    assert _components(len(codes), links.left, links.right) == _components(len(codes), a, b)


def _components(n: int, left: np.ndarray, right: np.ndarray) -> set[frozenset[int]]:
    from mmembed.dedup.groups import build_groups

    groups = build_groups(n, [Links("perceptual", left, right)])
    members = groups.members
    return {frozenset(members[groups.group[members] == g].tolist()) for g in range(groups.count)}
