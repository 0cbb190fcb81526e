"""Parity and speed of the ONNX export against PyTorch, measured side by side in one process.

    PYTHONPATH=src python scripts/inference_parity.py [--arch conformer_tiny_patch16] [--checkpoint CKPT]
        [--onnx_path MODEL.onnx] [--images FOLDER ...] [--batch_size 8] [--image_size 224] [--threads 2]
        [--rounds 7] [--out DIR]

Without --checkpoint a randomly initialised model of --arch is saved as a checkpoint first (parity
does not need trained weights; top-1 agreement is then on near-uniform logits, the hardest case).
The model is exported with the default exporter (``conformer_vision.export.export_model``), then:

- parity: every image under --images (decoded with ``load_rgb``, preprocessed with the model's
  ``Preprocess`` at --image_size and at a non-square size that is not a multiple of the patch) runs
  through both predictors at batch 1 and in batches of 3; reports max |logit diff|, that divided by
  the logit scale (max |fused logit|), and top-1 agreement;
- speed: a random batch of --batch_size at --image_size, PyTorch (default fast paths, fp32,
  ``torch.inference_mode``) and onnxruntime alternating, --rounds timed runs each after warm-up, on
  --threads threads for both; reports the median images/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conformer_vision.checkpoint import atomic_save, build_checkpoint  # noqa: E402
from conformer_vision.data import Preprocess, list_images, load_rgb, preprocess_image  # noqa: E402
from conformer_vision.export import export_model  # noqa: E402
from conformer_vision.models import create_model  # noqa: E402
from conformer_vision.runtime import OnnxPredictor, TorchPredictor, open_predictor  # noqa: E402


def parity(torch_p: TorchPredictor, onnx_p: OnnxPredictor, files: list[Path], size: tuple[int, int]) -> dict:
    pre = dataclasses.replace(torch_p.preprocess, input_size=size)
    images = torch.stack([preprocess_image(load_rgb(f), pre) for f in files])
    worst_abs = worst_rel = 0.0
    agree = total = 0
    for batch in [images[i : i + 1] for i in range(len(images))] + list(images.split(3)):
        ref, got = torch_p.heads(batch), onnx_p.heads(batch)
        fused_ref, fused_got = ref[0] + ref[1], got[0] + got[1]
        diff = max(float((a - b).abs().max()) for a, b in zip((fused_ref, *ref), (fused_got, *got)))
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / float(fused_ref.abs().max()))
        agree += int((fused_ref.argmax(1) == fused_got.argmax(1)).sum())
        total += len(batch)
    return {
        "size": list(size),
        "images": len(files),
        "max_abs_diff": worst_abs,
        "max_rel_diff": worst_rel,
        "top1_agreement": f"{agree}/{total}",
    }


def speed(predictors: dict, batch: torch.Tensor, rounds: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for p in predictors.values():  # warm-up
        p.heads(batch), p.heads(batch)
    for _ in range(rounds):
        for name, p in predictors.items():
            t0 = time.perf_counter()
            p.heads(batch)
            times[name].append(time.perf_counter() - t0)
    return {name: round(len(batch) / statistics.median(t), 2) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="conformer_tiny_patch16")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--images", nargs="*", default=[])
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--exporter", default="dynamo")
    ap.add_argument("--onnx_path", default=None, help="an existing export of --checkpoint (skips the export)")
    ap.add_argument("--out", default=None, help="folder for the checkpoint and the export (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="parity-"))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint
    if ckpt is None:
        torch.manual_seed(0)
        model = create_model(args.arch)
        pre = Preprocess((args.image_size, args.image_size))
        ckpt = atomic_save(build_checkpoint(model, preprocess=pre.to_dict()), out / f"{args.arch}.pt")
    result: dict = {}
    onnx_path = args.onnx_path
    if onnx_path is None:
        t0 = time.perf_counter()
        report: dict = {}
        onnx_path = export_model(
            ckpt, file_format="ONNX", output=out / f"{args.arch}.onnx", exporter=args.exporter, report=report
        )
        result = {"export_seconds": round(time.perf_counter() - t0, 1), "export_check": report}
    torch_p = open_predictor(ckpt)
    onnx_p = OnnxPredictor(onnx_path, "CPU", threads=args.threads)
    files = [f for folder in args.images for f in list_images(folder, recursive=True)]
    if files:
        s = args.image_size
        result["parity"] = [parity(torch_p, onnx_p, files, size) for size in ((s, s), (s - 24, s + 13))]
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
    result["images_per_second"] = speed({"pytorch": torch_p, "onnxruntime": onnx_p}, batch, args.rounds)
    result["setup"] = {
        "arch": args.arch,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
