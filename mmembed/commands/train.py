"""``train``: contrastive training or fine-tuning of an OpenCLIP model on WebDataset shards."""

from __future__ import annotations

import argparse

from mmembed.commands.output import print_json
from mmembed.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, DEVICES, PRECISIONS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train or fine-tune an OpenCLIP model on image-text shards (writes <out>/model.pt for embed)",
    )
    parser.add_argument("--shards", nargs="+", required=True, help="training shard paths, globs or {a..b} patterns")
    parser.add_argument("--out", required=True, help="run folder: model.pt, checkpoints/, loss.png, metrics.jsonl")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"open_clip model name or local-dir:/path (default: {DEFAULT_MODEL}, from {DEFAULT_PRETRAINED})",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--pretrained", help="start from an open_clip pretrained tag (needs a download or cache)")
    start.add_argument("--checkpoint", help="start from a local checkpoint file (fine-tuning)")
    start.add_argument("--random-init", action="store_true", help="train from scratch: random weights from --seed")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule ends there)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine schedule)")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="eval transform, no random crop")
    parser.add_argument("--shuffle-buffer", type=int, default=10_000)
    parser.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: per epoch)")
    parser.add_argument(
        "--keep-epoch-checkpoints", action="store_true", help="keep checkpoints/epoch_<n>.pt besides latest.pt"
    )
    parser.add_argument("--log-every", type=int, default=20, help="steps between progress lines")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="autocast (auto: bf16/fp16 on GPU)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the init, the data order and the augmentation")
    parser.add_argument("--torch-threads", type=int, help="CPU threads for torch")
    parser.add_argument("--data-threads", type=int, help="decode/transform threads (default: min(4, cores))")
    parser.add_argument("--caption-key", default="txt", help="tar member extension that holds the caption")
    run = parser.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/latest.pt")
    run.add_argument("--overwrite", action="store_true", help="discard a run already in --out")
    parser.set_defaults(handler=train)


def config_from_args(args: argparse.Namespace):
    from mmembed.config import DecodeConfig, EncoderConfig
    from mmembed.train import TrainConfig

    init = EncoderConfig(
        model=args.model,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        torch_threads=args.torch_threads,
        random_init=args.random_init,
    )
    decode = DecodeConfig(caption_key=args.caption_key, **({"threads": args.data_threads} if args.data_threads else {}))
    return TrainConfig(
        shards=tuple(args.shards),
        out=args.out,
        init=init,
        decode=decode,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        augment=args.augment,
        shuffle_buffer=args.shuffle_buffer,
        checkpoint_every=args.checkpoint_every,
        keep_epoch_checkpoints=args.keep_epoch_checkpoints,
        log_every=args.log_every,
        resume=args.resume,
        overwrite=args.overwrite,
    )


def train(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.train import train as run_training

    print_json(run_training(config_from_args(args)))
    return 0
