"""Conformer as a torchvision detection backbone (``conformer_vision.backbones``), the Fashion-MNIST
detection set (``conformer_vision.data.detection_set``) and ``scripts/detection_benchmark.py``.

Everything runs ``conformer_mini_test`` on 64 px canvases; the big variants are built on the meta device.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import conformer_vision
from conformer_vision.backbones import NUM_STAGES, ConformerFPN, conformer_fpn_backbone, stage_of
from conformer_vision.data import FASHION_MNIST_CLASSES
from conformer_vision.data.detection_set import (
    DetectionDataset,
    DetectionSetParams,
    collate_detection,
    prepare_detection_set,
    render_canvas,
)
from conformer_vision.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
TINY_SET = DetectionSetParams(
    num_train=8, num_val=4, canvas_size=64, min_size=16, max_size=32, max_objects=3, items_per_class=2
)
MINI = "conformer_mini_test"
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: a second thread only waits on a shared CPU


@pytest.fixture(scope="module")
def coco() -> Any:
    """pycocotools' COCO class: a missing package is a failure that says how to install it."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        pytest.fail("pycocotools is not installed: pip install -e '.[detection]' (the test extra includes it)")
    return COCO


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny detection set (8 train, 4 val canvases of 64 px) from the real Fashion-MNIST files."""
    return prepare_detection_set(tmp_path_factory.mktemp("det") / "set", TINY_SET)


def _bn_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _detector(backbone: nn.Module) -> nn.Module:
    """Faster R-CNN at 64 px with anchors for 16-32 px objects."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(
        backbone,
        num_classes=11,
        min_size=64,
        max_size=64,
        rpn_anchor_generator=anchors,
        rpn_post_nms_top_n_train=100,
        box_batch_size_per_image=32,
    )


# ---- the detection set -------------------------------------------------------------------------


def test_detection_set_is_valid_coco_with_boxes_inside(detection_set: dict[str, Any], coco: Any) -> None:
    root = Path(detection_set["root"])
    for split, count in (("train", TINY_SET.num_train), ("val", TINY_SET.num_val)):
        api = coco(detection_set["annotations"][split])
        assert len(api.getImgIds()) == count == detection_set["counts"][split]["images"]
        assert len(api.getAnnIds()) == detection_set["counts"][split]["objects"] >= count  # >= 1 object each
        assert [c["name"] for c in api.loadCats(api.getCatIds())] == list(FASHION_MNIST_CLASSES)
        for image in api.loadImgs(api.getImgIds()):
            with Image.open(root / split / image["file_name"]) as im:
                assert im.size == (image["width"], image["height"]) == (64, 64) and im.mode == "RGB"
            for ann in api.loadAnns(api.getAnnIds(imgIds=image["id"])):
                x, y, w, h = ann["bbox"]
                assert 0 <= x < x + w <= 64 and 0 <= y < y + h <= 64 and ann["area"] == w * h
                assert 1 <= ann["category_id"] <= 10 and ann["iscrowd"] == 0
    image, target = DetectionDataset(root, "val")[0]
    assert image.shape == (3, 64, 64) and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].shape == (len(target["labels"]), 4) and target["labels"].dtype == torch.int64


def test_detection_set_is_written_once_and_never_over_other_files(
    detection_set: dict[str, Any], tmp_path: Path
) -> None:
    root = detection_set["root"]
    assert prepare_detection_set(root, TINY_SET)["created"] is False
    with pytest.raises(DataError, match="other parameters"):
        prepare_detection_set(root, DetectionSetParams(**{**TINY_SET.__dict__, "seed": 1}))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not a detection set"):
        prepare_detection_set(tmp_path / "mine", TINY_SET)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="min_size"):
        DetectionSetParams(min_size=40, max_size=30)
    with pytest.raises(DataError, match="conformer prepare fashion-mnist-detection"):
        DetectionDataset(tmp_path / "mine", "train")


def test_prepare_command_writes_the_detection_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conformer_vision import cli
    from conformer_vision.data import detection_set

    monkeypatch.setattr(detection_set, "DetectionSetParams", lambda: TINY_SET)  # the command's defaults, smaller
    assert cli.main(["prepare", "fashion-mnist-detection", str(tmp_path / "det")]) == 0
    assert "wrote 8 train images" in capsys.readouterr().out
    assert json.loads((tmp_path / "det" / "prepared.json").read_text())["params"] == TINY_SET.__dict__
    assert cli.main(["prepare", "fashion-mnist-detection", str(tmp_path / "det"), "--limit_per_class", "3"]) == 2
    assert "apply to fashion-mnist only" in capsys.readouterr().err


def test_canvas_boxes_are_tight_and_seeded() -> None:
    items = (np.random.default_rng(0).integers(0, 256, (20, 28, 28)).astype(np.uint8), np.arange(20) % 10)
    params = DetectionSetParams(canvas_size=96, min_size=20, max_size=40, max_objects=5)
    canvas, objects = render_canvas(items, params, np.random.default_rng(3))
    again, same = render_canvas(items, params, np.random.default_rng(3))
    assert np.array_equal(canvas, again) and objects == same and 1 <= len(objects) <= 5
    bright = canvas >= 48  # only item pixels are this bright (background noise <= 40)
    covered = np.zeros_like(bright)
    for _, (x0, y0, x1, y1) in objects:
        covered[y0:y1, x0:x1] = True
        box = bright[y0:y1, x0:x1]
        assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()  # tight on all sides
    assert not (bright & ~covered).any()  # every visible item pixel is in a box


# ---- the backbone ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (100, 60), (97, 131)])
def test_fpn_maps_and_out_channels_at_any_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    backbone = conformer_fpn_backbone(MINI, out_channels=32).eval()
    assert backbone.out_channels == 32 and list(backbone.feature_info.reduction()) == [4, 8, 16, 32]
    with torch.no_grad():
        maps = backbone(torch.randn(2, 3, *size))
    assert list(maps) == ["0", "1", "2", "3", "pool"]
    padded = [math.ceil(s / 16) * 16 for s in size]  # the model pads to its patch size
    for key, stride in zip(maps, [4, 8, 16, 32, 64]):
        assert maps[key].shape == (2, 32, *(math.ceil(p / stride) for p in padded)), key


def test_returned_levels_tokens_and_retinanet_pyramid() -> None:
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    with_tokens = conformer_fpn_backbone(MINI, out_indices=(0, 1, 2, 3, 4), out_channels=16).eval()
    assert list(with_tokens.feature_info.channels()) == [16, 32, 64, 32, 64]  # index 3: the tokens (embed_dim 32)
    assert list(with_tokens.feature_info.reduction()) == [4, 8, 16, 16, 32]
    with torch.no_grad():
        assert [m.shape[-1] for m in with_tokens(x).values()] == [16, 8, 4, 4, 2, 1]
    retina = conformer_fpn_backbone(MINI, out_indices=(1, 2, 4), extra_blocks=LastLevelP6P7(16, 16), out_channels=16)
    with torch.no_grad():
        maps = retina.eval()(x)
    assert list(maps) == ["0", "1", "2", "p6", "p7"] and [m.shape[-1] for m in maps.values()] == [8, 4, 2, 1, 1]


@pytest.mark.slow
def test_every_variant_is_a_backbone() -> None:
    for variant in conformer_vision.list_models():
        with torch.device("meta"):
            backbone = conformer_fpn_backbone(variant)
            maps = backbone(torch.empty(1, 3, 64, 96))
        channels = backbone.feature_info.channels()
        assert [m.shape[1] for m in maps.values()] == [256] * 5 and maps["0"].shape[-2:] == (16, 24), variant
        assert [m.in_channels for m in backbone.fpn.inner_blocks.modules() if isinstance(m, nn.Conv2d)] == channels
    torch.manual_seed(0)
    tiny = conformer_fpn_backbone("conformer_tiny_patch16", out_channels=64).eval()
    with torch.no_grad():
        maps = tiny(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps.values()] == [(1, 64, s, s) for s in (16, 8, 4, 2, 1)]
    assert all(torch.isfinite(m).all() for m in maps.values())


def test_stage_mapping_and_trainable_layers_freeze_stages() -> None:
    assert [
        stage_of(n)
        for n in (
            "model.conv1.weight",
            "bn1.bias",
            "cls_token",
            "model.trans_1.attn.qkv.weight",
            "conv_trans_4.cnn_block.conv1.weight",
            "conv_trans_5.fusion_block.bn1.weight",
            "conv_trans_11.trans_block.norm1.weight",
            "conv_trans_12.expand_block.bn.weight",
            "model.trans_norm.weight",
            "fpn.layer_blocks.0.0.weight",
        )
    ] == [0, 0, 1, 1, 1, 2, 3, 4, 4, None]
    with pytest.raises(ConfigError, match="trainable_layers"):
        conformer_fpn_backbone(MINI, trainable_layers=6)
    torch.manual_seed(0)
    backbone = conformer_fpn_backbone(MINI, trainable_layers=2, out_channels=16)
    backbone.train()
    sum(m.sum() for m in backbone(torch.randn(2, 3, 64, 64)).values()).backward()
    stages = {name: stage_of(name) for name, _ in backbone.body.named_parameters()}
    assert set(stages.values()) >= set(range(NUM_STAGES))
    for name, param in backbone.body.named_parameters():
        frozen = stages[name] is not None and stages[name] < NUM_STAGES - 2  # stem, stages 1 and 2
        assert param.requires_grad is not frozen, name
        assert (param.grad is None) is frozen, name
    # BatchNorms of frozen stages keep their statistics even without norm_eval
    assert not any(
        m.training for name, m in backbone.body.named_modules() if isinstance(m, nn.BatchNorm2d) and stage_of(name) < 3
    )
    assert all(
        m.training for name, m in backbone.body.named_modules() if isinstance(m, nn.BatchNorm2d) and stage_of(name) >= 3
    )


@pytest.mark.parametrize("freeze_norm_affine", [False, True])
def test_norm_eval_keeps_batchnorm_statistics(freeze_norm_affine: bool) -> None:
    torch.manual_seed(0)
    backbone = conformer_fpn_backbone(MINI, norm_eval=True, freeze_norm_affine=freeze_norm_affine, out_channels=16)
    backbone.train()
    assert backbone.training and backbone.fpn.training and not any(m.training for m in _bn_layers(backbone.body))
    before = {k: v.clone() for k, v in backbone.body.state_dict().items() if "running" in k or "num_batches" in k}
    sum(m.sum() for m in backbone(torch.randn(2, 3, 64, 64) * 3 + 1).values()).backward()
    after = backbone.body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    weights = [m.weight for m in _bn_layers(backbone.body)]
    assert all((w.grad is None) is freeze_norm_affine for w in weights)  # the authors train the affine
    moving = conformer_fpn_backbone(MINI, norm_eval=False, out_channels=16).train()
    moving(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert all(m.num_batches_tracked.item() == 1 for m in _bn_layers(moving.body))


def test_classification_weights_load_into_the_backbone(tmp_path: Path) -> None:
    torch.manual_seed(1)
    classifier = conformer_vision.create_model(MINI, num_classes=10)
    torch.save({"model": classifier.state_dict()}, tmp_path / "Conformer_mini.pth")  # the authors' layout
    backbone = conformer_fpn_backbone(MINI, weights=tmp_path / "Conformer_mini.pth")
    assert isinstance(backbone, ConformerFPN)
    ours = {k: v for k, v in classifier.state_dict().items()}
    loaded = {k.split("model.", 1)[-1]: v for k, v in backbone.body.state_dict().items()}
    shared = set(ours) & set(loaded)
    assert {"conv1.weight", "conv_trans_12.fusion_block.conv3.weight", "trans_1.attn.qkv.weight"} <= shared
    assert all(torch.equal(ours[k], loaded[k]) for k in shared)
    # with weights: the authors' recipe, stem frozen (trainable_layers=4) and BatchNorm statistics kept
    assert backbone.trainable_layers == 4 and backbone.norm_eval
    assert not backbone.body.state_dict(keep_vars=True)[
        next(k for k in backbone.body.state_dict() if k.endswith("conv1.weight"))
    ].requires_grad
    with pytest.raises(ConfigError, match="not found"):
        conformer_fpn_backbone(MINI, weights=tmp_path / "missing.pth")


@pytest.mark.slow
def test_faster_rcnn_with_conformer_backbone_trains(detection_set: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = _detector(conformer_fpn_backbone(MINI, out_channels=32))
    images, targets = collate_detection([DetectionDataset(detection_set["root"], "train")[i] for i in range(4)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for step in range(12):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        if step == 0:  # gradients reach the backbone, down to the stem and both branches
            for name in ("conv1.weight", "trans_1.attn.qkv.weight", "conv_trans_12.fusion_block.conv3.weight"):
                grad = dict(model.backbone.body.named_parameters())[f"model.{name}"].grad
                assert grad is not None and grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    model.eval()
    with torch.no_grad():
        out = model(images[:1])
    assert set(out[0]) == {"boxes", "labels", "scores"}


@pytest.mark.slow
def test_detection_benchmark_script_reports_coco_map(detection_set: dict[str, Any], tmp_path: Path, coco: Any) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "detection_benchmark.py"),
            "--data",
            detection_set["root"],
            "--backbones",
            MINI,
            "resnet18",
            "--minutes",
            "0.04",
            "--pretrain_minutes",
            "0.02",
            "--batch_size",
            "2",
            "--fpn_channels",
            "32",
            "--threads",
            "1",
            "--score_thresh",
            "0",
            "--work_dir",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["backbone"] for r in results["rows"]] == [MINI, "resnet18"]
    for row in results["rows"]:
        assert 0 <= row["mAP"] <= row["AP50"] <= 1 and row["steps"] >= 1 and "Average Precision" in row["cocoeval"]
        assert Path(row["weights"]).is_file() and row["pretrain_steps"] >= 1  # pre-trained, then loaded
    table = proc.stdout[proc.stdout.index("| backbone") :]
    assert f"| `{MINI}` |" in table and "| `resnet18` |" in table
