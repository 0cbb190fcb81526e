"""``conformer info``: the variants with parameter counts and GFLOPs per image."""

from __future__ import annotations

import argparse

HELP = "list the Conformer variants with parameters and GFLOPs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image_size", type=int, default=224, help="input side for the GFLOPs count (default 224)")
    parser.add_argument("--num_classes", type=int, default=1000, help="classes of the heads (default 1000)")


def run(args: argparse.Namespace) -> int:
    from ..models.profile import variants_table

    print(variants_table(args.image_size, args.num_classes))
    return 0
