"""Visualisation: the maths (rollout, Grad-CAM, token maps), the hooks on non-square inputs, and real
figures rendered from a checkpoint trained for a few steps on Fashion-MNIST images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conformer_vision.checkpoint import build_checkpoint
from conformer_vision.cli import main as cli_main
from conformer_vision.data import Preprocess, list_images, load_rgb, prepare_fashion_mnist, preprocess_image
from conformer_vision.errors import ConformerError
from conformer_vision.models import create_model
from conformer_vision.serialization import atomic_save
from conformer_vision.visualize import (
    attention_rollout,
    explain,
    grad_cam,
    token_grid,
    tokens_to_grid,
    tokens_to_map,
    visualize_image,
)

# ---------------------------------------------------------------------------------------------
# The maths


def _random_attention(b: int, heads: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, heads, n, n, generator=g).mul(3).softmax(-1)


def test_rollout_rows_sum_to_one() -> None:
    attns = [_random_attention(2, 3, 17, seed) for seed in range(12)]
    r = attention_rollout(attns)
    assert r.shape == (2, 17, 17)
    assert (r >= 0).all()
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 17))


def test_rollout_matches_hand_computation() -> None:
    # Block 1 attends fully to token 1, block 2 is uniform: each is averaged with the identity.
    a1 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    a2 = torch.full((2, 2), 0.5)
    i = torch.eye(2)
    expected = ((a2 + i) / 2) @ ((a1 + i) / 2)
    r = attention_rollout([a1[None, None], a2[None, None].expand(1, 4, 2, 2)])
    torch.testing.assert_close(r[0], expected)
    # identity attention keeps every token to itself
    torch.testing.assert_close(attention_rollout([torch.eye(5).expand(1, 2, 5, 5)])[0], torch.eye(5))


def test_grad_cam_non_negative_normalised_and_shaped() -> None:
    g = torch.Generator().manual_seed(0)
    act = torch.randn(3, 8, 6, 10, generator=g).relu()
    grad = torch.randn(3, 8, 6, 10, generator=g)
    cam = grad_cam(act, grad)
    assert cam.shape == (3, 6, 10)
    assert cam.min() >= 0 and cam.max() <= 1
    for m in cam:  # each map is scaled by its own peak, or is all zeros
        assert torch.isclose(m.max(), torch.tensor(1.0)) or m.max() == 0
    # nothing supports the class: all-zero map, not NaN
    zero = grad_cam(act, -act.abs() - 1)
    assert torch.equal(zero, torch.zeros_like(zero))
    with pytest.raises(ValueError):
        grad_cam(act, grad[:, :4])


def test_grad_cam_weights_channels_by_mean_gradient() -> None:
    act = torch.zeros(1, 2, 2, 3)
    act[0, 0, 0, 0] = 1.0  # channel 0 fires top-left, channel 1 bottom-right
    act[0, 1, 1, 2] = 1.0
    grad = torch.stack([torch.full((2, 3), 1.0), torch.full((2, 3), -1.0)])[None]
    cam = grad_cam(act, grad)[0]
    assert cam[0, 0] == 1.0 and cam[1, 2] == 0.0  # only the positively weighted channel survives


def test_tokens_to_map_order_and_reductions() -> None:
    h, w, d = 3, 5, 4
    tokens = torch.zeros(2, h * w + 1, d)
    tokens[:, 1:, 0] = torch.arange(h * w, dtype=torch.float32)  # patch i has norm i
    tokens[:, 0] = 100.0  # the class token is not part of the map
    norm = tokens_to_map(tokens, (h, w), reduce="norm")
    assert norm.shape == (2, h, w)
    torch.testing.assert_close(norm[0], torch.arange(h * w, dtype=torch.float32).reshape(h, w))  # row-major
    pca = tokens_to_map(tokens, (h, w), reduce="pca")
    assert pca.shape == (2, h, w)
    corr = torch.corrcoef(torch.stack([pca[0].flatten(), norm[0].flatten()]))[0, 1]
    assert abs(corr) > 0.999  # the only direction of variation
    assert tokens_to_grid(tokens, (h, w)).shape == (2, d, h, w)
    with pytest.raises(ValueError):
        tokens_to_map(tokens, (h, w + 1))
    with pytest.raises(ValueError):
        tokens_to_map(tokens, (h, w), reduce="mean")


def test_pca_sign_makes_outliers_positive() -> None:
    tokens = torch.zeros(1, 10, 2)
    tokens[0, 1:, 1] = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, -5.0])  # one outlier, negative side
    assert tokens_to_map(tokens, (3, 3), reduce="pca")[0, 2, 2] > 0


# ---------------------------------------------------------------------------------------------
# Hooks on a real model, non-square inputs


@pytest.fixture(scope="module")
def mini_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("conformer_mini_test", num_classes=7).eval()


@pytest.mark.parametrize("hw", [(96, 160), (100, 60)])
def test_explain_non_square(mini_model: torch.nn.Module, hw: tuple[int, int]) -> None:
    x = torch.randn(3, *hw, generator=torch.Generator().manual_seed(1))
    exp = explain(mini_model, x)
    grid = token_grid(mini_model, hw)
    assert grid == (-(-hw[0] // 16), -(-hw[1] // 16))
    padded = (grid[0] * 16, grid[1] * 16)
    top, bottom, left, right = exp.padding
    assert (top + bottom + hw[0], left + right + hw[1]) == padded
    assert list(exp.cnn_maps) == ["conv_1", "conv_trans_4", "conv_trans_8", "conv_trans_12"]
    assert exp.cnn_maps["conv_1"].shape == (padded[0] // 4, padded[1] // 4)
    assert exp.cnn_maps["conv_trans_12"].shape == (-(-padded[0] // 32), -(-padded[1] // 32))  # stride-2 conv: ceil
    assert list(exp.token_maps) == ["trans_1", "conv_trans_4", "conv_trans_8", "conv_trans_12"]
    for m in (*exp.token_maps.values(), exp.cls_attention, exp.rollout, exp.cam_trans):
        assert m.shape == grid
    assert exp.cam_cnn.shape == (padded[0] // 16, padded[1] // 16)
    for cam in (exp.cam_cnn, exp.cam_trans):
        assert cam.min() >= 0 and cam.max() <= 1 and torch.isfinite(cam).all()
    assert exp.num_blocks == 12
    # the class-token row of the rollout over patches plus the class token sums to 1
    assert 0 < exp.rollout.sum() < 1 and 0 < exp.cls_attention.sum() < 1
    with torch.no_grad():
        fused = mini_model(x[None])[0]
    assert exp.target == int(fused.argmax())
    torch.testing.assert_close(exp.probs, fused.softmax(-1))


def test_explain_leaves_model_unchanged(mini_model: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        before = mini_model(x)
    switches = [m.fused_attn for m in mini_model.modules() if hasattr(m, "fused_attn")]
    explain(mini_model, x[0], target=3)
    for m in mini_model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    # the attention switches (off while the maps were read) are restored
    assert [m.fused_attn for m in mini_model.modules() if hasattr(m, "fused_attn")] == switches
    assert all(p.grad is None for p in mini_model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(mini_model(x), before)


# ---------------------------------------------------------------------------------------------
# Real figures from a briefly trained checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """conformer_mini_test after a few SGD steps on 20 Fashion-MNIST images (64x64), saved as a
    checkpoint with class names, preprocessing and EMA weights."""
    root = tmp_path_factory.mktemp("vis")
    info = prepare_fashion_mnist(root / "fmnist", image_size=64, limit_per_class=2, num_workers=1)
    pre = Preprocess(input_size=(64, 64), crop_pct=1.0)
    files = list_images(Path(info["train_dir"]), recursive=True)
    x = torch.stack([preprocess_image(load_rgb(f), pre) for f in files])
    y = torch.tensor([info["classes"].index(f.parent.name) for f in files])
    torch.manual_seed(0)
    model = create_model("conformer_mini_test", num_classes=len(info["classes"]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        conv, trans = model.forward_heads(x)
        loss = F.cross_entropy(conv, y) + F.cross_entropy(trans, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = build_checkpoint(model, class_names=info["classes"], preprocess=pre.to_dict(), ema_state=ema)
    path = atomic_save(ckpt, root / "mini.pt")
    return {"checkpoint": path, "image": files[0], "classes": info["classes"], "root": root}


def _png_stats(path: Path) -> tuple[int, int, float]:
    """(width, height, standard deviation of the grey pixels) of an image file."""
    with Image.open(path) as im:
        return im.width, im.height, float(np.asarray(im.convert("L"), dtype=np.float64).std())


@pytest.mark.slow
def test_visualize_renders_non_trivial_png(trained: dict, tmp_path: Path) -> None:
    out = visualize_image(trained["image"], trained["checkpoint"], tmp_path / "vis.png")
    assert out == tmp_path / "vis.png" and out.stat().st_size > 50_000
    w, h, std = _png_stats(out)
    assert w >= 1000 and h >= 700 and std > 20


@pytest.mark.slow
def test_cli_visualize_non_square_with_ema(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "wide.png"
    rc = cli_main(
        [
            "visualize",
            str(trained["image"]),
            "--checkpoint",
            str(trained["checkpoint"]),
            "--output",
            str(out),
            "--input_size",
            "96",
            "160",
            "--use_ema",
            "--tokens",
            "norm",
        ]
    )
    assert rc == 0
    assert str(out) in capsys.readouterr().out
    _, _, std = _png_stats(out)
    assert out.stat().st_size > 50_000 and std > 20


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_image", "does not exist"),
        ("missing_checkpoint", "no such file"),
        ("bad_size", "--input_size"),
        ("bad_device", "device"),
    ],
)
def test_cli_visualize_errors(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, expected: str
) -> None:
    image, ckpt, extra = str(trained["image"]), str(trained["checkpoint"]), []
    if case == "missing_image":
        image = str(tmp_path / "nope.jpg")
    elif case == "missing_checkpoint":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "bad_size":
        extra = ["--input_size", "1", "2", "3"]
    else:
        extra = ["--device", "cuda:0" if not torch.cuda.is_available() else "nonsense"]
    out = tmp_path / "out.png"
    rc = cli_main(["visualize", image, "--checkpoint", ckpt, "--output", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_library_errors_are_conformer_errors(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(ConformerError, match="no EMA"):
        ckpt = torch.load(trained["checkpoint"], weights_only=True)
        ckpt["ema"] = None
        atomic_save(ckpt, tmp_path / "no_ema.pt")
        visualize_image(trained["image"], tmp_path / "no_ema.pt", tmp_path / "x.png", use_ema=True)
