"""``conformer serve MODEL [--host 127.0.0.1] [--port 8000] [--max_batch_size 8] [--max_wait_ms 10] ...``.

MODEL is a checkpoint (or a weights file with ``--arch``), an ONNX file from ``conformer export`` or a
hub-layout folder (``config.json`` + ``model.safetensors``). Serves ``POST /v1/predict``,
``POST /v1/explain``, ``/healthz``, ``/readyz``, ``/metrics`` and a web page at ``/`` until SIGTERM or
Ctrl-C (docs/serving.md).
"""

from __future__ import annotations

import argparse

HELP = "serve a model over HTTP: dynamic batching, metrics, a web page (POST /v1/predict)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..serve import ServeSettings
    from ..serve.server import API_KEY_ENV
    from ._common import add_amp_argument

    d = ServeSettings()
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="checkpoint (.pt), weights file (with --arch), .onnx export, "
        "hub-layout folder (config.json + model.safetensors) or "
        "imagenet (with --arch: the published ImageNet-1k weights)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 = every interface: use --api_key)",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    parser.add_argument(
        "--max_batch_size",
        type=int,
        default=d.max_batch_size,
        help=f"most images per model batch (default {d.max_batch_size})",
    )
    parser.add_argument(
        "--max_wait_ms",
        type=float,
        default=d.max_wait_ms,
        help=f"a batch runs when full or when no image joined it for this long (default {d.max_wait_ms:g} ms)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads of the model (torch and onnxruntime; default: torch's default)",
    )
    add_amp_argument(parser, "--precision", note="; checkpoints only: an ONNX file runs in its own precision (O0)")
    parser.add_argument("--topk", type=int, default=d.topk, help=f"classes per image unless ?topk=K (default {d.topk})")
    parser.add_argument(
        "--arch", default=None, help="architecture of a foreign weights file or of imagenet (e.g. conformer_tiny)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (ONNX: cuda = the CUDA provider)")
    parser.add_argument("--use_ema", action="store_true", help="serve the checkpoint's EMA weights")
    parser.add_argument(
        "--image_size",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="network input H [W] instead of the model file's",
    )
    parser.add_argument(
        "--api_key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1/* and /metrics (default: ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--max_queue",
        type=int,
        default=d.max_queue,
        help=f"images admitted at once; more -> 503 with Retry-After (default {d.max_queue})",
    )
    parser.add_argument(
        "--max_images", type=int, default=d.max_images, help=f"images per request; more -> 413 (default {d.max_images})"
    )
    parser.add_argument(
        "--max_body_mb",
        type=float,
        default=d.max_body_bytes / 2**20,
        help=f"request body limit in MiB; more -> 413 (default {d.max_body_bytes / 2**20:g})",
    )
    parser.add_argument(
        "--timeout_s",
        type=float,
        default=d.timeout_s,
        help=f"answer within this many seconds or 504 (default {d.timeout_s:g})",
    )
    parser.add_argument("--access_log", action="store_true", help="log every request (uvicorn's access log)")


def run(args: argparse.Namespace) -> int:
    import os

    from ..errors import ConfigError
    from ..serve import ServeSettings, serve
    from ..serve.server import API_KEY_ENV

    size = args.image_size
    if size is not None and (len(size) > 2 or min(size) < 1):
        raise ConfigError(f"--image_size takes one or two positive ints (H [W]), got {size}")
    settings = ServeSettings(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_images=args.max_images,
        max_body_bytes=int(args.max_body_mb * 2**20),
        timeout_s=args.timeout_s,
        topk=args.topk,
        api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV),
    )
    return serve(
        args.model,
        host=args.host,
        port=args.port,
        settings=settings,
        arch=args.arch,
        device=args.device,
        use_ema=args.use_ema,
        precision=args.amp_level,
        threads=args.threads,
        image_size=(size[0], size[-1]) if size else None,
        access_log=args.access_log,
    )
