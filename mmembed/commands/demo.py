"""``demo``: the offline end-to-end run on scikit-learn's handwritten digits.

digits -> shards (train and test split) -> ``train`` a small CLIP model from scratch -> ``embed`` the
test split with it -> ``index`` -> text and image searches, printed and drawn in ``search-results.png``.
Nothing is downloaded: the digits ship inside scikit-learn and the model starts from random weights.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from mmembed.commands.output import format_table
from mmembed.options import add_options, config_from_args, option

TEXT_QUERIES = ("a handwritten seven", "the digit three", "a handwritten digit 0")
IMAGE_QUERY_LABEL = 4  # the image query: a training-split 4, which is not in the index


@dataclass(frozen=True)
class DemoOptions:
    """The demo's few settings; the rest is fixed so that it runs in minutes on a laptop."""

    out: str = option("demo", help="folder for the shards, model, embeddings, index and results")
    epochs: int = option(15, help="training epochs over the 1,437 training digits")
    batch_size: int = option(64, aliases=("--batch_size",), help="training batch size")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo", help="offline end to end: digits -> train a small model -> embed -> index -> search"
    )
    add_options(parser, DemoOptions)
    parser.set_defaults(handler=demo, passes_unknown=True)


def demo(namespace: argparse.Namespace, extra: list[str]) -> int:
    """Shards, model, embeddings, index and example searches, all under ``--out``."""
    args: DemoOptions = config_from_args(DemoOptions, namespace)
    from mmembed.config import EmbedJobConfig, EncoderConfig
    from mmembed.embed.job import run_job
    from mmembed.embed.summary import report
    from mmembed.index import IndexBuildConfig, build_index
    from mmembed.labelled import class_query, labelled_samples, labels_by_key, load, png_bytes
    from mmembed.makeshards import ShardSpec, write_shards
    from mmembed.search import Searcher
    from mmembed.train import TrainConfig, train

    out = Path(args.out)
    for split in ("train", "test"):
        written = write_shards(labelled_samples(load("digits", split)), ShardSpec(str(out / "shards" / split), 500))
        logging.info("demo: %d %s digits -> %d shards", written["samples"], split, len(written["shards"]))

    model = EncoderConfig(model="mmembed-small", batch_size=64, random_init=True)  # trained from scratch below
    trained = train(
        TrainConfig(
            shards=(str(out / "shards" / "train" / "*.tar"),),
            out=str(out / "model"),
            init=model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            warmup_steps=50,
            log_every=50,
            overwrite=True,
        )
    )
    print(f"trained {trained['model']} for {trained['steps']} steps in {trained['seconds']:.0f} s: "
          f"final loss {trained['final_loss']:.3f}; loss curve {out / 'model' / 'loss.png'}")  # fmt: skip

    checkpoint = str(out / "model" / "model.pt")
    config = EmbedJobConfig(
        shards=(str(out / "shards" / "test" / "*.tar"),),
        out=str(out / "emb"),
        encoder=EncoderConfig(model=model.model, checkpoint=checkpoint, batch_size=64),
        overwrite=True,
    )
    report(run_job(config, extra), config.out)
    index_dir = out / "index"
    build_index(IndexBuildConfig(embeddings_dir=str(out / "emb"), out_dir=str(index_dir), overwrite=True))
    searcher = Searcher.from_dir(index_dir)

    results = {query: searcher.search_text(query, k=8)[0] for query in TEXT_QUERIES}
    digits = load("digits", "train")
    query_image = out / "query-image.png"
    query_image.write_bytes(png_bytes(digits.images[list(digits.labels).index(IMAGE_QUERY_LABEL)]))
    results[f"image {query_image.name} (a {digits.classes[IMAGE_QUERY_LABEL]})"] = searcher.search_image(
        [str(query_image)], k=8
    )[0]
    for query, hits in results.items():
        rows = [hit.to_dict() for hit in hits]
        print(f"\nsearch: {query!r}\n{format_table(rows, ['rank', 'score', 'key', 'caption'])}")

    labels = labels_by_key(out / "emb")
    class_queries = [class_query("a handwritten {name}", name) for name in digits.classes]
    hits = searcher.search_text(class_queries, k=10)
    precision = [sum(labels[h.key] == label for h in found) / len(found) for label, found in enumerate(hits)]
    print(f"\ntext -> image precision@10 per digit class: {' '.join(f'{p:.1f}' for p in precision)} "
          f"(mean {sum(precision) / len(precision):.2f}; chance 0.1)")  # fmt: skip

    sheet = out / "search-results.png"
    draw_results(results, out / "shards" / "test", sheet)
    print(f"\nresults drawn in {sheet}")
    print(f"try: .venv/bin/mmembed search 'a handwritten five' --index {index_dir}")
    print(f"     .venv/bin/mmembed serve --index {index_dir} --shards '{out / 'shards' / 'test' / '*.tar'}'")
    return 0


def draw_results(results: dict, shards_dir: Path, path: Path) -> None:
    """One row per query: its top hits' images (read from the shards at their recorded offsets) and scores."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from mmembed.tarread import read_member_at

    columns = max(len(hits) for hits in results.values())
    fig, axes = plt.subplots(len(results), columns, figsize=(1.3 * columns, 1.6 * len(results)), squeeze=False)
    for row, (query, hits) in enumerate(results.items()):
        axes[row][0].set_title(query, loc="left", fontsize=9, x=0.0, pad=14)
        for col in range(columns):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(hits):
                hit = hits[col]
                with open(shards_dir / f"{hit.shard}.tar", "rb") as f:
                    image = Image.open(io.BytesIO(read_member_at(f, hit.offset, hit.key)))
                ax.imshow(image, cmap="gray")
                ax.text(0.5, -0.12, f"{hit.score:.2f}", transform=ax.transAxes, ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
