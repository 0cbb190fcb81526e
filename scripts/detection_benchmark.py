"""Faster R-CNN with a Conformer FPN backbone next to the same detector with a ResNet-18 FPN backbone,
each trained on the CPU for the same wall time on the same real images, scored with COCO box mAP.

    python scripts/detection_benchmark.py [--data data/fashion_mnist_detection] [--minutes 12]
        [--pretrain_minutes 3] [--backbones conformer_mini_test resnet18] [--weights BACKBONE=CKPT ...]
        [--batch_size 4] [--lr 3e-4] [--fpn_channels 64] [--trainable_layers 3] [--threads N] [--seed 0]
        [--work_dir runs/detection_benchmark]

Steps, for each backbone in turn, all on the same data and with the same settings:

1. the detection set (``conformer_vision.data.detection_set``: Fashion-MNIST items pasted on 128 px
   canvases, COCO annotations) is written into --data unless a detection set is there already
   (the same as ``conformer prepare fashion-mnist-detection DIR``);
2. classification pre-training (--pretrain_minutes of wall time; 0 = none, random initialisation):
   the backbone as a 10-class classifier (a Conformer variant with its two heads and the sum of their
   cross-entropies, ResNet-18 with its fc layer) on 32 px crops of the objects of the detection
   set's train split; the weights are saved as a classification checkpoint in --work_dir
   (the Conformer's as a bare state dict in the authors' key layout) and loaded into the detection
   backbone the way a user loads ImageNet weights (``conformer_fpn_backbone(weights=PATH)``);
   --weights BACKBONE=PATH starts from a given file instead;
3. torchvision's ``FasterRCNN`` (the ``DETECTOR`` settings below) with the backbone behind an FPN of
   --fpn_channels channels, trained with AdamW on shuffled train batches until --minutes of wall time
   are spent (the learning rate warms up over the first steps and follows a cosine of the elapsed
   time, so every backbone gets a whole schedule in its budget);
4. COCO box evaluation of the val split with pycocotools' ``COCOeval`` (mAP@[.5:.95], AP50, ...).

Backbones: any Conformer variant (``conformer_vision.backbones.conformer_fpn_backbone``) or ``resnet18``
(torchvision's ResNet-18 behind torchvision's ``BackboneWithFPN``). Both follow one policy: from
random weights everything trains and BatchNorm statistics are updated; from classification weights
the top --trainable_layers stages train (of stem + 4 stages; 3 = torchvision's default, the stem and
stage 1 frozen) and BatchNorm statistics are kept (``norm_eval``, the authors' detection recipe),
BatchNorm affine parameters of trained stages train. Both detectors run channels_last. Nothing is
downloaded (torchvision's ImageNet weights are not used).

The markdown table goes to stdout, every figure (loss curves, COCOeval summaries, the CPU, the load
average before and after each run) to --work_dir/results.json. The machine's load changes the steps a
backbone gets in its minutes: /proc/loadavg is recorded for that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from conformer_vision.data.detection_set import (  # noqa: E402
    DetectionDataset,
    DetectionSetParams,
    collate_detection,
    prepare_detection_set,
)

NUM_CLASSES = 11  # 10 Fashion-MNIST classes + background
DETECTOR = dict(
    # images stay at their 128 px (torchvision's default would resize them to 800)
    min_size=128,
    max_size=128,
    # CPU-sized sampling: 1 to 5 objects per image need no 512 RoIs or 2000 proposals
    rpn_pre_nms_top_n_train=600,
    rpn_post_nms_top_n_train=300,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=64,
)
BOX_HEAD_SIZE = 256  # the box head's two MLP layers (torchvision: 1024; ten classes need less)
# objects are 20-64 px: anchors of 16..256 px on the five FPN levels (strides 4..64), 3 aspect ratios
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what torchvision's detectors normalise with
WARMUP_STEPS = 20
CLIP_NORM = 10.0
CROP_SIZE = 32  # classification pre-training input side


# ---- backbones and detector --------------------------------------------------------------------


def build_backbone(name: str, fpn_channels: int, weights: str | None, trainable_layers: int) -> nn.Module:
    """A detection backbone with an FPN: a Conformer variant, or torchvision's ResNet-18, with its
    top ``trainable_layers`` stages of five (stem, 4 stages) trained. With ``weights`` BatchNorm
    statistics are kept (norm_eval), from random weights they are updated."""
    if name == "resnet18":
        from torchvision.models import resnet18
        from torchvision.models.detection.backbone_utils import BackboneWithFPN

        body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            body.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
        # torchvision's resnet_fpn_backbone rule: conv1/bn1 (stem), layer1 .. layer4 counted from the top
        trained = ("layer4", "layer3", "layer2", "layer1", "conv1", "bn1")[: trainable_layers + (trainable_layers == 5)]
        for param_name, param in body.named_parameters():
            param.requires_grad_(param_name.startswith(trained))
        backbone = BackboneWithFPN(
            body, {f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)}, [64, 128, 256, 512], fpn_channels
        )
        backbone.norm_eval = bool(weights)  # applied by train_mode
        return backbone
    from conformer_vision.backbones import conformer_fpn_backbone

    return conformer_fpn_backbone(name, weights=weights, trainable_layers=trainable_layers, out_channels=fpn_channels)


def build_detector(backbone: nn.Module, score_thresh: float = 0.05) -> nn.Module:
    """torchvision's Faster R-CNN with this script's settings around ``backbone``; detections
    scoring below ``score_thresh`` are dropped (torchvision's default 0.05)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    anchors = AnchorGenerator(ANCHOR_SIZES, ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES))
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, BOX_HEAD_SIZE)  # 7x7: the RoIAlign output
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(BOX_HEAD_SIZE, NUM_CLASSES),
        box_score_thresh=score_thresh,
        **DETECTOR,
    )


def train_mode(model: nn.Module) -> None:
    """``model.train()``, then BatchNorms of a backbone marked ``norm_eval`` back in eval mode (the
    Conformer backbone does this itself; torchvision's BackboneWithFPN does not)."""
    model.train()
    backbone = getattr(model, "backbone", None)
    if getattr(backbone, "norm_eval", False):
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# ---- time-budgeted training --------------------------------------------------------------------


def lr_at(step: int, elapsed: float, budget: float, base_lr: float) -> float:
    """Linear warm-up over WARMUP_STEPS, then a cosine of the elapsed fraction of the time budget."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    return base_lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, elapsed / budget)))


def train_for(
    params: list[nn.Parameter],
    batches: Callable[[], Iterator[Any]],
    step_loss: Callable[[Any], torch.Tensor],
    seconds: float,
    lr: float,
) -> dict[str, Any]:
    """AdamW on ``step_loss(batch)`` over passes of ``batches()`` until ``seconds`` of wall time are
    spent (the step under way finishes); returns steps, samples seen, wall time and the mean loss
    of each tenth of the run."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps = samples = 0
    losses: list[float] = []
    start = time.perf_counter()
    while True:
        empty = True
        for batch in batches():
            empty = False
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return {
                    "steps": steps,
                    "samples": samples,
                    "train_s": round(elapsed, 1),
                    "loss_by_tenth": _tenths(losses),
                }
            for group in optimizer.param_groups:
                group["lr"] = lr_at(steps, elapsed, seconds, lr)
            loss = step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            optimizer.step()
            steps, samples = steps + 1, samples + len(batch[0])
            losses.append(loss.item())
        if empty:
            raise ValueError("no complete batch in the data: lower the batch size")


def _tenths(values: list[float]) -> list[float]:
    """Mean of each tenth of ``values`` (fewer parts when there are fewer than ten values)."""
    n = min(10, len(values))
    chunks = [values[len(values) * i // n : len(values) * (i + 1) // n] for i in range(n)]
    return [round(sum(c) / len(c), 4) for c in chunks if c]


# ---- classification pre-training on the objects ------------------------------------------------


def object_crops(dataset: DetectionDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every object of ``dataset`` as a normalised (N, 3, 32, 32) crop (the square around its box,
    10% margin) and its class (N,) in 0..9."""
    from torchvision.transforms.v2.functional import resized_crop

    crops, labels = [], []
    for image, target in dataset:
        for (x0, y0, x1, y1), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            side = 1.1 * max(x1 - x0, y1 - y0)
            top, left = round((y0 + y1 - side) / 2), round((x0 + x1 - side) / 2)
            crops.append(
                resized_crop(image, top, left, round(side), round(side), [CROP_SIZE, CROP_SIZE], antialias=True)
            )
            labels.append(label - 1)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return (torch.stack(crops) - mean) / std, torch.tensor(labels)


def build_classifier(name: str) -> tuple[nn.Module, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The backbone as a 10-class classifier and its loss(model, images, labels)."""
    if name == "resnet18":
        from torchvision.models import resnet18

        return resnet18(weights=None, num_classes=10), lambda m, x, y: F.cross_entropy(m(x), y)
    import conformer_vision

    def two_heads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        conv_logits, trans_logits = model.forward_heads(x)
        return F.cross_entropy(conv_logits, y) + F.cross_entropy(trans_logits, y)  # the reference's loss

    return conformer_vision.create_model(name, num_classes=10), two_heads


def pretrain(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Classification pre-training of one backbone for --pretrain_minutes; saves its weights and
    returns the file and the figures (steps, val top-1 on the val objects)."""
    torch.manual_seed(args.seed)
    model, loss_fn = build_classifier(name)
    generator = torch.Generator().manual_seed(args.seed)

    size = min(args.pretrain_batch_size, len(train[1]))

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(train[1]), generator=generator)
        for i in range(0, len(order) - size + 1, size):
            idx = order[i : i + size]
            x = train[0][idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5  # horizontal flips: garments are symmetric
            yield torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x), train[1][idx]

    model.train()
    figures = train_for(
        [p for p in model.parameters() if p.requires_grad],
        batches,
        lambda batch: loss_fn(model, *batch),
        args.pretrain_minutes * 60,
        args.pretrain_lr,
    )
    model.eval()
    with torch.inference_mode():
        predictions = torch.cat([model(x).argmax(1) for x in val[0].split(256)])
    path = Path(args.work_dir) / f"{name}_fashion_objects_classifier.pt"
    torch.save(model.state_dict(), path)  # a bare state dict: the Conformer's keys are the authors'
    return {
        "weights": str(path),
        "pretrain_steps": figures["steps"],
        "pretrain_samples": figures["samples"],
        "pretrain_s": figures["train_s"],
        "pretrain_top1": round(float((predictions == val[1]).float().mean()), 4),
        "pretrain_loss_by_tenth": figures["loss_by_tenth"],
    }


# ---- detection ---------------------------------------------------------------------------------


def train_detector(model: nn.Module, train_set: DetectionDataset, args: argparse.Namespace) -> dict[str, Any]:
    """Train the detector for --minutes on shuffled batches of the train split."""
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_detection,
        generator=generator,
    )
    train_mode(model)

    def step_loss(batch: tuple[list[torch.Tensor], list[dict[str, Any]]]) -> torch.Tensor:
        return sum(model(*batch).values())  # RPN objectness + box, RoI classification + box

    params = [p for p in model.parameters() if p.requires_grad]
    figures = train_for(params, lambda: iter(loader), step_loss, args.minutes * 60, args.lr)
    return {**figures, "epochs": round(figures["samples"] / len(train_set), 2)}


@torch.inference_mode()
def evaluate_coco(model: nn.Module, dataset: DetectionDataset, batch_size: int) -> dict[str, Any]:
    """COCO box metrics of ``model`` on ``dataset`` (pycocotools' COCOeval, 100 detections per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model.eval()
    start = time.perf_counter()
    results = []
    for images, targets in torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection):
        for output, target in zip(model(images), targets):
            for box, score, label in zip(
                output["boxes"].tolist(), output["scores"].tolist(), output["labels"].tolist()
            ):
                x0, y0, x1, y1 = box
                results.append(
                    {
                        "image_id": target["image_id"],
                        "category_id": int(label),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": score,
                    }
                )
    infer_s = round(time.perf_counter() - start, 1)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # pycocotools prints its progress and summary
        truth = COCO(str(dataset.annotation_file))
        if not results:
            return {
                "mAP": 0.0,
                "AP50": 0.0,
                "AP75": 0.0,
                "detections": 0,
                "eval_s": infer_s,
                "cocoeval": "no detections",
            }
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    names = ["mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100"]
    metrics = {n: round(float(v), 4) for n, v in zip(names, evaluation.stats)}
    summary = "\n".join(line for line in log.getvalue().splitlines() if "Average" in line)
    return {**metrics, "detections": len(results), "eval_s": infer_s, "cocoeval": summary}


def run_backbone(name: str, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Pre-train (optionally), build, train for --minutes and evaluate one backbone: its result row."""
    row: dict[str, Any] = {"backbone": name, "loadavg_before": _loadavg()}
    weights = args.weights.get(name)
    if weights is None and args.pretrain_minutes > 0:
        row.update(pretrain(name, data["train_crops"], data["val_crops"], args))
        weights = row["weights"]
    row["weights"] = weights or "random init"
    torch.manual_seed(args.seed)
    trainable_layers = args.trainable_layers if weights else 5
    model = build_detector(build_backbone(name, args.fpn_channels, weights, trainable_layers), args.score_thresh)
    model.to(memory_format=torch.channels_last)  # oneDNN's faster layout for convolutions on the CPU
    row["backbone_params"] = sum(p.numel() for p in model.backbone.body.parameters())
    row["backbone_gflops"] = backbone_gflops(model.backbone.body, DETECTOR["min_size"])
    row["detector_params"] = sum(p.numel() for p in model.parameters())
    row.update(train_detector(model, data["train"], args))
    row.update(evaluate_coco(model, data["val"], args.batch_size))
    row["loadavg_after"] = _loadavg()
    return row


def backbone_gflops(body: nn.Module, size: int) -> float:
    """GFLOPs (1 MAC = 2 FLOPs, ``torch.utils.flop_counter``) of one forward of the feature
    extractor on a size x size image, in eval mode (no BatchNorm statistics move)."""
    from torch.utils.flop_counter import FlopCounterMode

    body.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        body(torch.zeros(1, 3, size, size))
    return round(counter.get_total_flops() / 1e9, 3)


# ---- report ------------------------------------------------------------------------------------


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cpu_name() -> str:
    """'model name, family F model M, N cores' from /proc/cpuinfo (what lscpu shows)."""
    with contextlib.suppress(OSError):
        lines = [line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line]
        fields = {k.strip(): v.strip() for k, v in reversed(lines)}  # reversed: the first CPU's values win
        return (
            f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}, {os.cpu_count()} cores"
        )
    return platform.processor() or "unknown CPU"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    lines = [
        "| backbone | params, GFLOPs at 128 px (backbone) | init | pre-training: steps, time, val top-1 | "
        "mAP@[.5:.95] | AP50 | AP75 | "
        "detector training: wall time, steps, images (epochs) | final loss | load avg before / after |",
        "|---|---:|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        if "pretrain_steps" in r:
            init, pre = (
                "classifier pre-training",
                (f"{r['pretrain_steps']}, {r['pretrain_s'] / 60:.1f} min, {100 * r['pretrain_top1']:.1f}%"),
            )
        else:
            init, pre = ("random", "-") if r["weights"] == "random init" else (f"`{Path(r['weights']).name}`", "-")
        loss = r["loss_by_tenth"][-1] if r["loss_by_tenth"] else float("nan")
        lines.append(
            f"| `{r['backbone']}` | {r['backbone_params'] / 1e6:.2f} M, {r['backbone_gflops']:.2f} | {init} | {pre} | "
            f"{r['mAP']:.3f} | "
            f"{r['AP50']:.3f} | {r['AP75']:.3f} | {r['train_s'] / 60:.1f} min, {r['steps']}, {r['samples']} "
            f"({r['epochs']:.2f}) | {loss:.3f} | {r['loadavg_before']} / {r['loadavg_after']} |"
        )
    return "\n".join(lines)


def default_threads() -> int:
    """Compute threads the quickstart uses (scripts/wrapper_lib.sh cpu_split): the cores less a quarter
    of them (at least one) for the rest of the machine."""
    cores = os.cpu_count() or 1
    return max(1, cores - max(1, cores // 4))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--data",
        default=str(REPO / "data" / "fashion_mnist_detection"),
        help="detection set folder (written there first unless it holds one)",
    )
    parser.add_argument(
        "--num_train", type=int, default=DetectionSetParams.num_train, help="train canvases, when the set is written"
    )
    parser.add_argument(
        "--num_val", type=int, default=DetectionSetParams.num_val, help="val canvases, when the set is written"
    )
    parser.add_argument("--minutes", type=float, default=12.0, help="detector training wall time per backbone")
    parser.add_argument(
        "--pretrain_minutes",
        type=float,
        default=3.0,
        help="classification pre-training wall time per backbone (0: random initialisation)",
    )
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["conformer_mini_test", "resnet18"],
        help="Conformer variants and/or resnet18, run one after the other",
    )
    parser.add_argument(
        "--weights",
        nargs="*",
        default=[],
        metavar="BACKBONE=PATH",
        help="classification weights to start a backbone from (instead of pre-training here)",
    )
    parser.add_argument("--batch_size", type=int, default=4, help="detector batch (images)")
    parser.add_argument("--lr", type=float, default=3e-4, help="detector peak AdamW learning rate")
    parser.add_argument("--pretrain_batch_size", type=int, default=64)
    parser.add_argument("--pretrain_lr", type=float, default=1e-3)
    parser.add_argument("--fpn_channels", type=int, default=64, help="FPN channels (torchvision: 256; CPU-sized here)")
    parser.add_argument(
        "--trainable_layers",
        type=int,
        default=3,
        choices=range(6),
        help="stages trained (of stem + 4) when starting from weights (torchvision's default 3)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="torch compute threads (default: the cores less a quarter, as the quickstart's cpu_split: "
        "1 on 2 cores; two threads on two shared cores run 5-10x slower than one)",
    )
    parser.add_argument(
        "--score_thresh",
        type=float,
        default=0.05,
        help="detections below this score are not scored (torchvision's default 0.05)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work_dir",
        default=str(REPO / "runs" / "detection_benchmark"),
        help="pre-trained weights and results.json go here",
    )
    args = parser.parse_args(argv)
    try:
        args.weights = dict(item.split("=", 1) for item in args.weights)
    except ValueError:
        parser.error("--weights takes BACKBONE=PATH pairs")
    if min(args.minutes, args.batch_size, args.threads, args.pretrain_batch_size) <= 0 or args.pretrain_minutes < 0:
        parser.error("--minutes, --batch_size, --pretrain_batch_size and --threads must be positive")
    return args


def load_data(args: argparse.Namespace) -> dict[str, Any]:
    """The detection set (written first unless --data holds one) and, for pre-training, the crops."""
    if not (Path(args.data) / "prepared.json").is_file():
        prepare_detection_set(args.data, DetectionSetParams(num_train=args.num_train, num_val=args.num_val))
    data: dict[str, Any] = {"train": DetectionDataset(args.data, "train"), "val": DetectionDataset(args.data, "val")}
    if args.pretrain_minutes > 0:
        data["train_crops"], data["val_crops"] = object_crops(data["train"]), object_crops(data["val"])
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    print(
        f"data: {args.data} ({len(data['train'])} train, {len(data['val'])} val images); CPU: {cpu_name()}, "
        f"{args.threads} thread(s); {args.pretrain_minutes} + {args.minutes} min per backbone",
        flush=True,
    )
    rows = []
    for name in args.backbones:
        row = run_backbone(name, args, data)
        rows.append(row)
        print(
            f"{name}: mAP {row['mAP']:.3f} AP50 {row['AP50']:.3f} after {row['steps']} steps "
            f"({row['train_s'] / 60:.1f} min), loss by tenth {row['loss_by_tenth']}",
            flush=True,
        )
    table = markdown_table(rows)
    print(table)
    results = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "args": vars(args),
        "detector": DETECTOR,
        "box_head_size": BOX_HEAD_SIZE,
        "anchor_sizes": ANCHOR_SIZES,
        "rows": rows,
        "table": table,
    }
    (Path(args.work_dir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
