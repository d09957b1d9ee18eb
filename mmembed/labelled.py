"""Labelled image sets that installed packages ship, as captioned samples for make-shards.

* ``digits``: scikit-learn's 1,797 handwritten digits (8 x 8, in the wheel; no download). scikit-learn comes
  with the ``demo`` extra (``pip install 'mmembed[demo]'``) and is imported only when the digits load.
* ``fashion-mnist``: Zalando's 70,000 clothing images (28 x 28, 10 classes), from Debian's
  ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``).

Captions name the class in several phrasings (picked per sample from a seeded generator), so a
contrastive model learns the class names rather than one fixed sentence. Each sample's json
metadata keeps the label, class and split, which is what the quality benchmark scores against.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmembed.makeshards import SourceSample

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {"train": "train", "test": "t10k"}
SPLITS = ("train", "test")

DIGITS_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_TEMPLATES = (
    "a handwritten {name}",
    "the digit {name}",
    "a handwritten digit {digit}",
    "the number {name}, written by hand",
    "a scanned digit {digit}",
    "a picture of the number {digit}",
)
FASHION_CLASSES = (
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
FASHION_TEMPLATES = (
    "a photo of {a} {name}",
    "{a} {name}",
    "a black and white photo of {a} {name}",
    "a product photo of {a} {name}",
    "a picture of {a} {name}",
    "an image of {a} {name}",
)


@dataclass(frozen=True)
class LabelledImages:
    """Grayscale images (N x H x W uint8), their labels and the class names the labels index."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    templates: tuple[str, ...]


def caption(templates: tuple[str, ...], classes: tuple[str, ...], label: int, rng: random.Random) -> str:
    """One phrasing, chosen by ``rng``, that names class ``label``."""
    return class_query(rng.choice(templates).replace("{digit}", str(label)), classes[label])


def load_digits(split: str) -> LabelledImages:
    """scikit-learn's digits, split 80/20 by a seeded stratified shuffle; pixel values 0..16 -> 0..255."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise RuntimeError(
            f"the digits data set comes with scikit-learn, which is not installed ({exc}); "
            "fix: pip install 'mmembed[demo]'"
        ) from exc

    data = sklearn_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.2, random_state=0, stratify=data.target)
    idx = np.sort(train_idx if split == "train" else test_idx)
    return LabelledImages("digits", split, images[idx], data.target[idx], DIGITS_CLASSES, DIGITS_TEMPLATES)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic, dims, uint8 data), gzip-compressed."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> LabelledImages:
    """Fashion-MNIST from Debian's package (60,000 train / 10,000 test images)."""
    prefix = FASHION_MNIST_FILES[split]
    images_file, labels_file = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images_file, labels_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; fix: install Debian's package (apt-get install dataset-fashion-mnist)"
            )
    return LabelledImages(
        "fashion-mnist", split, read_idx(images_file), read_idx(labels_file), FASHION_CLASSES, FASHION_TEMPLATES
    )


LOADERS = {"digits": load_digits, "fashion-mnist": load_fashion_mnist}


def load(name: str, split: str) -> LabelledImages:
    if name not in LOADERS:
        raise ValueError(f"unknown labelled set {name!r}; known: {sorted(LOADERS)}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    return LOADERS[name](split)


def labels_by_key(emb_dir: Path) -> dict[str, int]:
    """key -> class label of an embed job's rows, from the json metadata it keeps (``label``)."""
    import pyarrow.parquet as pq

    labels: dict[str, int] = {}
    for path in sorted((emb_dir / "embeddings").glob("*.parquet")):
        table = pq.read_table(path, columns=["key", "metadata"])
        for key, metadata in zip(table.column("key").to_pylist(), table.column("metadata").to_pylist(), strict=True):
            labels[key] = json.loads(metadata)["label"]
    return labels


def class_query(template: str, name: str) -> str:
    """A query naming one class, e.g. "a photo of {a} {name}" -> "a photo of an ankle boot"."""
    return template.format(name=name, a="an" if name[0] in "aeiou" else "a")


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def labelled_samples(data: LabelledImages, limit: int | None = None, seed: int = 0) -> Iterator[SourceSample]:
    """PNG samples with captions and json metadata (label, class, split, index), in the set's order."""
    rng = random.Random(seed)
    count = len(data.images) if limit is None else min(limit, len(data.images))
    for index in range(count):
        label = int(data.labels[index])
        yield SourceSample(
            image_path=Path(f"{data.name}-{data.split}-{index}.png"),
            caption=caption(data.templates, data.classes, label, rng),
            metadata={
                "dataset": data.name,
                "split": data.split,
                "index": index,
                "label": label,
                "class": data.classes[label],
            },
            image_bytes=png_bytes(data.images[index]),
        )
