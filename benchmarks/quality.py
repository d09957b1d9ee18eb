"""Offline retrieval quality of a model trained here: labelled images -> train -> embed -> index -> search.

Every step runs the real command line (``python -m mmembed.cli ...`` in a child process), in order:

1. ``make-shards --dataset fashion-mnist --split train`` and ``--split test`` (Debian's
   ``dataset-fashion-mnist``: 60,000 / 10,000 images of 10 clothing classes; captions name the class
   in six phrasings). ``--dataset digits`` uses scikit-learn's digits instead (what the demo trains on).
2. ``train`` the small bundled model ``mmembed-small`` from random init on the train split.
3. ``embed`` the test split with the trained checkpoint, then ``index`` it.
4. ``search --queries-file`` with one query per class ("a photo of a sneaker"): text -> image
   precision@10 per class = share of the 10 results whose label is the query's class.
5. ``search --image`` with ``--image-queries-per-class`` held-out *train-split* images per class
   (not in the index): image -> image same-class precision@10 (share of the 10 results of the query's
   class) and recall@10 as metric-learning papers define it (share of queries with at least one
   same-class image among their 10 results).

The same embed / index / search steps also run with the untrained (random-init) model, printed side
by side as the baseline. Labels come from the json metadata the embed job keeps for every row.
Targets (issue): training within ~15 minutes on the 2-core CPU machine; text -> image precision@10
averaged over classes >= 0.9.

    .venv/bin/python benchmarks/quality.py                      # Fashion-MNIST, 2 epochs
    .venv/bin/python benchmarks/quality.py --dataset digits --epochs 30 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Comparison, machine_line, run_command  # noqa: E402
from mmembed.labelled import class_query, labels_by_key, load, png_bytes  # noqa: E402

QUERY_TEMPLATE = {"fashion-mnist": "a photo of {a} {name}", "digits": "a handwritten {name}"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"))
    parser.add_argument("--train-samples", type=int, help="use only this many training images (default: all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--torch-threads", type=int, help="CPU threads for training and embedding")
    parser.add_argument("--image-queries-per-class", type=int, default=50)
    parser.add_argument("--workdir", help="keep shards, model and indexes here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    return parser.parse_args(argv)


def cli(*args: str) -> tuple[str, float]:
    """Run ``mmembed ARGS`` in a child process; returns (stdout, seconds). Fails loudly with its stderr."""
    done = run_command([sys.executable, "-m", "mmembed.cli", *args])
    if not done.ok:
        raise SystemExit(f"mmembed {' '.join(args[:2])} failed: {done.error}")
    return done.stdout, done.wall_s


def text_to_image(index: Path, classes: tuple[str, ...], template: str, labels: dict[str, int], work: Path):
    """Precision@10 per class for one text query per class."""
    queries = [class_query(template, name) for name in classes]
    queries_file = work / "queries.txt"
    queries_file.write_text("\n".join(queries) + "\n", encoding="utf-8")
    out, seconds = cli("search", "--index", str(index), "--queries-file", str(queries_file), "-k", "10", "--json")
    results = json.loads(out)
    precision = [
        float(np.mean([labels[hit["key"]] == label for hit in entry["results"]])) for label, entry in enumerate(results)
    ]
    return queries, precision, seconds


def image_to_image(index: Path, query_files: list[Path], query_labels: list[int], labels: dict[str, int]):
    """Same-class precision@10 and recall@10 (at least one same-class hit) over held-out query images."""
    args = ["search", "--index", str(index), "-k", "10", "--json"]
    for path in query_files:
        args += ["--image", str(path)]
    out, seconds = cli(*args)
    results = json.loads(out)
    same = [
        [labels[hit["key"]] == label for hit in entry["results"]]
        for entry, label in zip(results, query_labels, strict=True)
    ]
    return float(np.mean([np.mean(s) for s in same])), float(np.mean([any(s) for s in same])), seconds


def write_image_queries(dataset: str, per_class: int, skip: int, work: Path) -> tuple[list[Path], list[int]]:
    """Held-out train-split images (after the first ``skip`` used for training, else the last ones) as PNGs."""
    data = load(dataset, "train")
    rng = np.random.default_rng(0)
    pool = np.arange(skip, len(data.images)) if skip < len(data.images) else np.arange(len(data.images))
    folder = work / "image-queries"
    folder.mkdir(parents=True, exist_ok=True)
    files, labels = [], []
    for label in range(len(data.classes)):
        members = pool[data.labels[pool] == label]
        for index in rng.choice(members, size=min(per_class, len(members)), replace=False):
            path = folder / f"{label}-{index}.png"
            path.write_bytes(png_bytes(data.images[index]))
            files.append(path)
            labels.append(label)
    return files, labels


def evaluate(name: str, model_args: list[str], work: Path, args: argparse.Namespace, queries) -> dict:
    """Embed the test split with one model, index it, and score both query directions."""
    emb, index = work / f"emb-{name}", work / f"index-{name}"
    threads = ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
    _, embed_s = cli(
        "embed",
        "--shards",
        str(work / "shards-test" / "*.tar"),
        "--out",
        str(emb),
        *model_args,
        "--batch-size",
        "256",
        "--overwrite",
        *threads,
    )
    _, index_s = cli("index", "--embeddings", str(emb), "--out", str(index), "--overwrite")
    labels = labels_by_key(emb)
    data = load(args.dataset, "test")
    text_queries, precision, text_s = text_to_image(index, data.classes, QUERY_TEMPLATE[args.dataset], labels, work)
    files, query_labels = queries
    image_p, image_r, image_s = image_to_image(index, files, query_labels, labels)
    return {
        "text_queries": text_queries,
        "text_to_image_precision_at_10": precision,
        "text_to_image_precision_at_10_mean": float(np.mean(precision)),
        "image_to_image_precision_at_10": image_p,
        "image_to_image_recall_at_10": image_r,
        "seconds": {"embed": embed_s, "index": index_s, "text_search": text_s, "image_search": image_s},
        "indexed": len(labels),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mmembed-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    limit = ["--limit", str(args.train_samples)] if args.train_samples else []
    _, shards_s = cli(
        "make-shards",
        "--dataset",
        args.dataset,
        "--split",
        "train",
        *limit,
        "--out",
        str(work / "shards-train"),
        "--samples-per-shard",
        "1000",
        "--overwrite",  # a reused --workdir: replace the shards of the last run
    )
    cli(
        "make-shards",
        "--dataset",
        args.dataset,
        "--split",
        "test",
        "--out",
        str(work / "shards-test"),
        "--samples-per-shard",
        "1000",
        "--overwrite",  # a reused --workdir: replace the shards of the last run
    )
    threads = ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
    train_out, train_s = cli(
        "train", "--shards", str(work / "shards-train" / "*.tar"), "--out", str(work / "run"), "--overwrite",
        "--model", "mmembed-small", "--random-init",
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--warmup-steps", str(args.warmup_steps), "--log-every", "50", *threads,
    )  # fmt: skip
    train_summary = json.loads(train_out)
    trained_count = args.train_samples or len(load(args.dataset, "train").images)
    queries = write_image_queries(args.dataset, args.image_queries_per_class, trained_count, work)

    model = str(work / "run" / "model.pt")
    results = {
        "trained": evaluate("trained", ["--model", "mmembed-small", "--checkpoint", model], work, args, queries),
        "random_init": evaluate("random", ["--model", "mmembed-small", "--random-init"], work, args, queries),
    }
    report(args, train_summary, train_s, shards_s, results, work)
    figures = {"dataset": args.dataset, "train": train_summary, "train_seconds": train_s, **results}
    if args.json:
        print(json.dumps(figures, indent=2))
    return figures


def report(args, train_summary: dict, train_s: float, shards_s: float, results: dict, work: Path) -> None:
    trained, baseline = results["trained"], results["random_init"]
    print(
        f"\n== {args.dataset}: mmembed-small trained {train_summary['steps']} steps "
        f"({train_summary['epochs_completed']} epochs of {train_summary['samples_per_epoch']} samples, "
        f"batch {args.batch_size}) in {train_s / 60:.1f} min wall "
        f"({train_summary['samples_per_second']} samples/s; final loss {train_summary['final_loss']:.3f})"
    )
    print(f"   work dir {work}; make-shards (train) {shards_s:.1f} s; loss curve {work / 'run' / 'loss.png'}")
    print(f"   {machine_line()}")
    text = Comparison("P@10 trained", "P@10 random", "trained / random")
    for query, p, q in zip(
        trained["text_queries"],
        trained["text_to_image_precision_at_10"],
        baseline["text_to_image_precision_at_10"],
        strict=True,
    ):
        text.add(query, p, q)
    mean_t, mean_b = trained["text_to_image_precision_at_10_mean"], baseline["text_to_image_precision_at_10_mean"]
    text.add("mean over classes (target >= 0.9)", mean_t, mean_b, ".3f")
    print()
    text.print("text -> image query", indent="")
    n = len(trained["text_queries"]) * args.image_queries_per_class
    print(f"\nimage -> image over {n} held-out query images, {trained['indexed']} indexed test images")
    image = Comparison("trained", "random", "trained / random")
    for label, key in (
        ("same-class precision@10", "image_to_image_precision_at_10"),
        ("recall@10 (a same-class hit in the 10)", "image_to_image_recall_at_10"),
    ):
        image.add(label, trained[key], baseline[key], ".3f")
    image.print("", indent="")
    secs = trained["seconds"]
    print(
        f"\nseconds (trained model): embed {secs['embed']:.1f}, index {secs['index']:.1f}, "
        f"text search {secs['text_search']:.1f}, image search {secs['image_search']:.1f} (each a CLI process)"
    )
    print(
        f"ratio trained / random-init mean text -> image P@10: {mean_t / max(mean_b, 1e-9):.1f}x; "
        f"median per-class P@10 trained {statistics.median(trained['text_to_image_precision_at_10']):.2f}"
    )


if __name__ == "__main__":
    main()
