"""``conformer prepare fashion-mnist OUT_DIR``: write a dataset as an ImageFolder tree.
``conformer prepare shards SRC OUT``: write a class-folder tree as WebDataset shards (``data.shards``).
``conformer prepare fashion-mnist-detection OUT_DIR``: the detection set (``data.detection_set``)."""

from __future__ import annotations

import argparse

HELP = "prepare a dataset as class folders (fashion-mnist from Debian's dataset-fashion-mnist)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        choices=["fashion-mnist", "shards", "fashion-mnist-detection"],
        help="dataset to prepare; shards: WebDataset shards of a class-folder tree (SRC OUT); "
        "fashion-mnist-detection: items on 128 px canvases with COCO boxes",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="destination folder (gets train/ and val/); shards: SRC")
    parser.add_argument("--image_size", type=int, default=32, help="side of the written square RGB images (default 32)")
    parser.add_argument(
        "--limit_per_class",
        type=int,
        default=None,
        help="keep only the first N images of each class per split (default: all)",
    )
    parser.add_argument(
        "--val_from",
        choices=["test", "train"],
        default="test",
        help="val = the 10,000 test images (default) or the last 10,000 training images",
    )
    parser.add_argument(
        "--source_dir", default=None, help="folder with the IDX .gz files (default /usr/share/datasets/fashion-mnist)"
    )
    _add_shard_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.dataset == "shards" or args.shards_out is not None:
        return _run_shards(args)
    if args.dataset == "fashion-mnist-detection":
        return _run_detection(args)
    from ..data.fashion_mnist import DEFAULT_SOURCE_DIR, prepare_fashion_mnist

    summary = prepare_fashion_mnist(
        args.out_dir,
        image_size=args.image_size,
        source_dir=args.source_dir or DEFAULT_SOURCE_DIR,
        val_from=args.val_from,
        limit_per_class=args.limit_per_class,
    )
    verb = "wrote" if summary["created"] else "already prepared:"
    print(
        f"{verb} {summary['num_train']} train and {summary['num_val']} val images "
        f"({summary['image_size']}x{summary['image_size']}, {len(summary['classes'])} classes) in {summary['root']}"
    )
    return 0


def _run_detection(args: argparse.Namespace) -> int:
    from ..data.detection_set import prepare_detection_set
    from ..data.fashion_mnist import DEFAULT_SOURCE_DIR
    from ..errors import ConfigError

    if args.image_size != 32 or args.limit_per_class is not None or args.val_from != "test":
        raise ConfigError(
            "--image_size, --limit_per_class and --val_from apply to fashion-mnist only; "
            "fashion-mnist-detection takes OUT_DIR and --source_dir"
        )
    summary = prepare_detection_set(args.out_dir, source_dir=args.source_dir or DEFAULT_SOURCE_DIR)
    counts = ", ".join(
        f"{c['images']} {split} images ({c['objects']} objects)" for split, c in summary["counts"].items()
    )
    print(
        f"{'wrote' if summary['created'] else 'already prepared:'} {counts} with COCO annotations in {summary['root']}"
    )
    return 0


# ---- conformer prepare shards SRC OUT ------------------------------------------------------------


def _add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "shards SRC OUT",
        "write SRC/<train_dir> and SRC/<val_dir> (class folders) as "
        "WebDataset tar shards into OUT, with classes.json and shards.json beside them",
    )
    group.add_argument("shards_out", nargs="?", metavar="OUT", help="shards: the output folder")
    group.add_argument("--train_dir", default="train", help="shards: training split folder in SRC (default train)")
    group.add_argument("--val_dir", default="val", help="shards: validation split folder in SRC (default val)")
    group.add_argument(
        "--shard_size",
        type=int,
        default=1000,
        help="shards: images per shard at most (default 1000, ~110 MB of ImageNet JPEGs)",
    )
    group.add_argument("--max_shard_mb", type=float, default=1024, help="shards: MB per shard at most (default 1024)")


def _run_shards(args: argparse.Namespace) -> int:
    from ..data.shards import SHARDS_INFO, write_shards
    from ..errors import ConfigError

    if args.dataset != "shards" or args.shards_out is None:
        raise ConfigError(
            "usage: conformer prepare shards SRC OUT (SRC holds train/ and val/ class folders); "
            "conformer prepare fashion-mnist OUT_DIR takes one folder"
        )
    summary = write_shards(
        args.out_dir,
        args.shards_out,
        train_dir=args.train_dir,
        val_dir=args.val_dir,
        shard_size=args.shard_size,
        max_shard_bytes=int(args.max_shard_mb * 2**20),
    )
    for split, counts in summary["splits"].items():
        print(f"wrote {counts['images']} {split} images in {counts['shards']} shard(s)")
    print(
        f"{len(summary['classes'])} classes; train with: --data_format webdataset --data_url {summary['out']} "
        f"(reads {SHARDS_INFO} there)"
    )
    return 0
