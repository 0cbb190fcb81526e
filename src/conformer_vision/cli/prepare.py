"""``conformer prepare fashion-mnist OUT_DIR``: write a dataset as an ImageFolder tree."""

from __future__ import annotations

import argparse

HELP = "prepare a dataset as class folders (fashion-mnist from Debian's dataset-fashion-mnist)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["fashion-mnist"], help="dataset to prepare")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="destination folder (gets train/ and val/)")
    parser.add_argument("--image_size", type=int, default=32, help="side of the written square RGB images (default 32)")
    parser.add_argument("--limit_per_class", type=int, default=None,
                        help="keep only the first N images of each class per split (default: all)")
    parser.add_argument("--val_from", choices=["test", "train"], default="test",
                        help="val = the 10,000 test images (default) or the last 10,000 training images")
    parser.add_argument("--source_dir", default=None,
                        help="folder with the IDX .gz files (default /usr/share/datasets/fashion-mnist)")


def run(args: argparse.Namespace) -> int:
    from ..data.fashion_mnist import DEFAULT_SOURCE_DIR, prepare_fashion_mnist

    summary = prepare_fashion_mnist(
        args.out_dir, image_size=args.image_size, source_dir=args.source_dir or DEFAULT_SOURCE_DIR,
        val_from=args.val_from, limit_per_class=args.limit_per_class,
    )
    verb = "wrote" if summary["created"] else "already prepared:"
    print(f"{verb} {summary['num_train']} train and {summary['num_val']} val images "
          f"({summary['image_size']}x{summary['image_size']}, {len(summary['classes'])} classes) in {summary['root']}")
    return 0
