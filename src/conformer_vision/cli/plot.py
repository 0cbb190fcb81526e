"""``conformer plot``: training curves of a run (loss, learning rate, top-1 per head) from metrics.jsonl."""

from __future__ import annotations

import argparse

HELP = "plot a run's loss, learning rate and top-1 (fused and per head) from its metrics.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run folder holding metrics.jsonl (or the metrics.jsonl file)")
    parser.add_argument("--output", default=None, help="output image (default RUN_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    from ..plots import plot_training_curves

    print(plot_training_curves(args.run_dir, args.output))
    return 0
