"""Training batches from WebDataset shards: shuffled, decoded and transformed on a thread pool.

Each epoch reads the shards in a seeded order through webdataset's shuffle buffer, so an epoch's
sample order depends only on (seed, epoch). Resuming mid-epoch skips the raw samples already
trained on before anything is decoded. Samples that fail to read or decode go to ``on_error``
with the same reasons the embed job records; they never stop training.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from webdataset.filters import shuffle as webdataset_shuffle

from mmembed import storage
from mmembed.config import DecodeConfig
from mmembed.decode import decode_sample
from mmembed.parallel import map_ordered
from mmembed.preprocess import preprocess_error
from mmembed.records import RawSample, SampleError
from mmembed.shards import iter_shard_samples, shard_name, unreadable_shard_error

ErrorSink = Callable[[SampleError], None]


@dataclass
class Batch:
    """Model-ready tensors for one optimizer step and where the epoch's stream stands after it."""

    images: torch.Tensor  # float N x 3 x H x W, already normalised by open_clip's transform
    tokens: torch.Tensor  # int64 N x context_length
    position: int  # raw samples of this epoch consumed up to and including this batch


def iter_raw_samples(urls: list[str], image_extensions: tuple[str, ...]) -> Iterator[RawSample | SampleError]:
    """Every sample of every shard in the given order, streamed; an unreadable shard becomes one error."""
    for url in urls:
        try:
            stream = storage.open_read(url)
        except Exception as exc:  # noqa: BLE001 - a missing shard is recorded, the rest still trains
            yield unreadable_shard_error(url, exc)
            continue
        with stream:
            yield from iter_shard_samples(stream, shard_name(url), image_extensions)


def count_samples(urls: list[str], image_extensions: tuple[str, ...]) -> int:
    """Samples in the shards (a read without decoding), to size the learning-rate schedule."""
    return sum(isinstance(item, RawSample) for item in iter_raw_samples(urls, image_extensions))


class TrainBatches:
    """Epochs of shuffled training batches; the last partial batch of an epoch is dropped."""

    def __init__(
        self,
        urls: list[str],
        decode: DecodeConfig,
        transform: Callable[[Any], torch.Tensor],
        tokenize: Callable[[list[str]], torch.Tensor],
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
    ) -> None:
        self.urls = urls
        self.decode = decode
        self.transform = transform
        self.tokenize = tokenize
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed

    def epoch_order(self, epoch: int) -> Iterator[RawSample | SampleError]:
        """The epoch's raw samples: shard order and a shuffle buffer, both seeded by (seed, epoch)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        urls = list(self.urls)
        rng.shuffle(urls)
        raw = iter_raw_samples(urls, self.decode.image_extensions)
        return webdataset_shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(raw)

    def prepare(self, item: RawSample | SampleError) -> tuple[torch.Tensor, str] | SampleError:
        """One raw sample -> (image tensor, caption), or the error that stopped it."""
        if isinstance(item, SampleError):
            return item
        decoded = decode_sample(item, self.decode)
        if isinstance(decoded, SampleError):
            return decoded
        try:
            return self.transform(decoded.image), decoded.caption
        except Exception as exc:  # noqa: BLE001 - recorded against this one sample
            return preprocess_error(decoded, exc)

    def epoch(self, epoch: int, skip: int = 0, on_error: ErrorSink | None = None) -> Iterator[Batch]:
        """Batches of ``epoch``, after skipping its first ``skip`` raw samples (already trained on)."""
        items = islice(self.epoch_order(epoch), skip, None)
        images: list[torch.Tensor] = []
        captions: list[str] = []
        window = 2 * self.batch_size
        with ThreadPoolExecutor(self.decode.threads, thread_name_prefix="mmembed-train-data") as pool:
            for position, prepared in enumerate(map_ordered(pool, self.prepare, items, window), start=skip + 1):
                if isinstance(prepared, SampleError):
                    if on_error is not None:
                        on_error(prepared)
                    continue
                images.append(prepared[0])
                captions.append(prepared[1])
                if len(images) == self.batch_size:
                    yield Batch(torch.stack(images), self.tokenize(captions), position)
                    images, captions = [], []
