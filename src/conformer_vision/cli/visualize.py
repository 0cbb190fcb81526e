"""``conformer visualize``: one figure of what the CNN and transformer branches see in an image."""

from __future__ import annotations

import argparse

HELP = "draw feature maps, tokens, attention, rollout and Grad-CAM of both branches for one image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file to explain")
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pt) or weights file (.pth, .safetensors)")
    parser.add_argument("--arch", default=None, help="variant name, needed only for foreign weight files")
    parser.add_argument("--output", default="visualize.png", help="output image (default visualize.png)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--use_ema", action="store_true", help="use the checkpoint's EMA weights")
    parser.add_argument(
        "--input_size",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="network input H [W], overriding the checkpoint's (any size, e.g. 192 320)",
    )
    parser.add_argument(
        "--tokens",
        choices=("pca", "norm"),
        default="pca",
        help="patch-token maps: first principal component (default) or token norm",
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..visualize import visualize_image

    size = args.input_size
    if size is not None and (len(size) > 2 or min(size) < 1):
        raise ConfigError(f"--input_size takes one or two positive ints (H [W]), got {size}")
    path = visualize_image(
        args.image,
        args.checkpoint,
        output=args.output,
        arch=args.arch,
        device=args.device,
        use_ema=args.use_ema,
        input_size=(size[0], size[-1]) if size else None,
        token_reduce=args.tokens,
    )
    print(path)
    return 0
