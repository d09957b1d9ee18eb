"""The embed job's command-line options, shared by ``mmembed embed`` and ``python -m pipelines.embed``."""

from __future__ import annotations

import argparse

from mmembed.config import (
    CAPTION_MODES,
    DECODERS,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEVICES,
    OUTPUT_DTYPES,
    PRECISIONS,
    DecodeConfig,
    EmbedJobConfig,
    EncoderConfig,
)


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """The embed job's own options (shared by ``mmembed embed`` and ``python -m pipelines.embed``)."""
    parser.add_argument("--shards", nargs="+", required=True, help="shard paths, globs or {000..099} patterns")
    parser.add_argument("--out", required=True, help="output directory (local, gs:// or s3://)")
    parser.add_argument(
        "--model",
        help=f"open_clip model name or local-dir:/path (default: the model a --checkpoint from `mmembed train` "
        f"was trained as, else {DEFAULT_MODEL} with the pretrained weights {DEFAULT_PRETRAINED})",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="random weights from --seed: smoke tests only (their vectors mean nothing); recorded in the provenance",
    )
    parser.add_argument("--pretrained", help="open_clip pretrained tag, e.g. laion2b_s34b_b79k (needs a download)")
    parser.add_argument("--checkpoint", help="local open_clip checkpoint file for --model")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="autocast dtype (auto: bf16/fp16 on GPU)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="init seed for models without weights")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="CPU inference threads (default on the local runner: the cores the decode threads leave, >= 1)",
    )
    parser.add_argument("--decode-threads", type=int, help="decode/resize threads per worker (default: min(4, cores))")
    parser.add_argument("--output-dtype", default="float32", choices=OUTPUT_DTYPES)
    parser.add_argument("--caption-key", default="txt", help="tar member extension that holds the caption")
    parser.add_argument(
        "--captions",
        default="required",
        choices=CAPTION_MODES,
        help="required: a sample without a caption is a no_caption error; optional: embed it image-only (null "
        "caption, text embedding and similarity); none: ignore captions, run the image tower only "
        "(default: required)",
    )
    parser.add_argument(
        "--exact-decode",
        action="store_true",
        help="decode every JPEG in full; by default one at least twice the model's input size is decoded at "
        "reduced scale first (several times faster; cosine to the exact vectors is reported in the README)",
    )
    parser.add_argument(
        "--decode",
        default="cpu",
        choices=DECODERS,
        help="cpu: every image is decoded and resized on the CPU workers (default); gpu: JPEGs travel as bytes and "
        "are decoded in batches on the model's device (nvJPEG; torchvision's CPU decoder with --device cpu), resized, "
        "cropped and perceptually hashed there; other images, and JPEGs the device decoder refuses, are decoded on "
        "CPU (counted as gpu_decode.cpu_fallback.* in the summary's beam_counters)",
    )
    parser.add_argument("--max-image-pixels", type=int, default=DecodeConfig.max_image_pixels)
    parser.add_argument("--overwrite", action="store_true", help="redo shards whose outputs already exist")


def config_from_args(args: argparse.Namespace) -> EmbedJobConfig:
    """The job config the parsed options describe."""
    model = args.model
    if model is None and args.checkpoint:
        from mmembed.encoders.openclip import model_of_checkpoint  # torch: only to read a checkpoint's model

        model = model_of_checkpoint(args.checkpoint)
    return EmbedJobConfig(
        shards=tuple(args.shards),
        out=args.out,
        encoder=EncoderConfig(
            model=model or DEFAULT_MODEL,
            pretrained=args.pretrained,
            checkpoint=args.checkpoint,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            seed=args.seed,
            torch_threads=args.torch_threads,
            random_init=args.random_init,
        ),
        decode=DecodeConfig(
            caption_key=args.caption_key,
            captions=args.captions,
            exact_decode=args.exact_decode,
            decoder=args.decode,
            max_image_pixels=args.max_image_pixels,
            **({"threads": args.decode_threads} if args.decode_threads else {}),
        ),
        output_dtype=args.output_dtype,
        overwrite=args.overwrite,
    )
