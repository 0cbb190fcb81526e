"""``conformer benchmark --mode data``: the options and the handler of the loader-throughput mode
(``data.throughput``), kept apart from the model benchmark's."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``--mode data`` (it also reads --image_size, --batch_size and --json)."""
    group = parser.add_argument_group("--mode data (loader throughput)")
    group.add_argument(
        "--data_dir",
        default=None,
        help="images to decode (searched recursively); default: 64 ImageNet-like JPEGs made from "
        "matplotlib's sample photograph",
    )
    group.add_argument("--images", type=int, default=200, help="images timed per measure (default 200)")
    group.add_argument(
        "--loader_workers", default="1,2", metavar="N,M,...", help="DataLoader worker counts to time (default 1,2)"
    )


def run_data_benchmark(args: argparse.Namespace) -> int:
    """Time the training transform of the default config at --image_size; print, and write --json."""
    from ..config import Config
    from ..data.images import list_images
    from ..data.throughput import describe_recipe, format_loading, measure_loading, sample_jpegs
    from ..errors import ConfigError
    from ..train import train_transform

    try:
        workers = tuple(int(w) for w in str(args.loader_workers).split(",") if w.strip())
    except ValueError:
        raise ConfigError(f"--loader_workers takes worker counts such as 1,2,4, got {args.loader_workers!r}") from None
    if args.images < 1 or any(w < 0 for w in workers):
        raise ConfigError(f"--images must be >= 1 and worker counts >= 0, got {args.images} and {args.loader_workers}")
    cfg = Config(image_size=args.image_size)
    with tempfile.TemporaryDirectory(prefix="conformer-data-bench-") as tmp:
        paths = list_images(args.data_dir, recursive=True) if args.data_dir else sample_jpegs(Path(tmp))
        if not paths:
            raise ConfigError(f"--data_dir {args.data_dir} holds no images")
        result = measure_loading(
            paths, train_transform(cfg), images=args.images, loader_workers=workers, batch_size=args.batch_size
        )
    result.update(
        image_size=args.image_size, transform=describe_recipe(cfg), source=args.data_dir or "matplotlib photo crops"
    )
    print(format_loading(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
