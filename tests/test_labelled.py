"""Labelled sets (scikit-learn digits, Debian Fashion-MNIST) as captioned shards."""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from mmembed.cli import main
from mmembed.labelled import (
    DIGITS_CLASSES,
    FASHION_CLASSES,
    FASHION_TEMPLATES,
    caption,
    labelled_samples,
    load,
    load_fashion_mnist,
    read_idx,
)


def test_digits_split_is_stratified_disjoint_and_scaled() -> None:
    train, test = load("digits", "train"), load("digits", "test")
    assert len(train.images) + len(test.images) == 1797 and len(test.images) == 360
    assert train.images.shape[1:] == (8, 8) and train.images.dtype == np.uint8 and train.images.max() == 255
    assert np.bincount(test.labels).min() >= 35  # every class in the test split
    train_rows = {row.tobytes() for row in train.images.reshape(len(train.images), -1)}
    shared = sum(row.tobytes() in train_rows for row in test.images.reshape(len(test.images), -1))
    assert shared < 5  # the few exact pixel repeats sklearn's digits hold, not a leak of the split


@pytest.mark.parametrize("command", [["make-shards", "--dataset", "digits"], ["demo"]])
def test_digits_without_scikit_learn_name_the_demo_extra(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # an install without the demo extra: the import fails
    assert main([*command, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "scikit-learn, which is not installed" in err and "fix: pip install 'mmembed[demo]'" in err
    assert not list(tmp_path.rglob("*.tar"))


def test_captions_name_the_class_in_several_phrasings() -> None:
    rng = random.Random(0)
    captions = {caption(FASHION_TEMPLATES, FASHION_CLASSES, 9, rng) for _ in range(200)}
    assert len(captions) == len(FASHION_TEMPLATES)
    assert all("ankle boot" in c for c in captions) and "a photo of an ankle boot" in captions


def test_read_idx_reads_the_mnist_format(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in data.shape) + data.tobytes())
    np.testing.assert_array_equal(read_idx(path), data)


def test_fashion_mnist_from_the_debian_package() -> None:
    test = load_fashion_mnist("test")  # `make test` installs dataset-fashion-mnist
    assert test.images.shape == (10_000, 28, 28) and np.bincount(test.labels).tolist() == [1000] * 10


def test_missing_fashion_mnist_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_make_shards_from_a_labelled_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shards"
    argv = ["make-shards", "--dataset", "digits", "--split", "test", "--limit", "25", "--out", str(out)]
    assert main([*argv, "--samples-per-shard", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 25
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False))
    assert len(samples) == 25 and all("png" in s for s in samples)
    test = load("digits", "test")
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["label"] == int(test.labels[meta["index"]]) and meta["split"] == "test"
        assert DIGITS_CLASSES[meta["label"]] in sample["txt"].decode() or str(meta["label"]) in sample["txt"].decode()


def test_labelled_samples_are_deterministic() -> None:
    digits = load("digits", "test")
    first = [(s.caption, s.image_bytes) for s in labelled_samples(digits, limit=20, seed=3)]
    assert first == [(s.caption, s.image_bytes) for s in labelled_samples(digits, limit=20, seed=3)]
