"""Shared, cached artifacts for the inference tests (test_runtime / test_evaluate / test_predict /
test_export): a small Fashion-MNIST ImageFolder, photos written with Pillow's real encoders in the
odd modes, a conformer_mini_test checkpoint trained for a few SGD steps, and its ONNX export.

Test modules ``import inference_testlib`` (pytest puts tests/ on the path), so the
``functools.cache``d artifacts are built once per session whichever modules run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 6  # Fashion-MNIST images per class and split
SIZE = 32  # side of the prepared images and the checkpoint's input size


def cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """``conformer ARGS`` run in this process (the CLI's ``main``): (exit status, stdout, stderr)."""
    from conformer_vision.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as e:  # argparse usage errors
                rc = int(e.code or 0)
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


def cli_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m conformer_vision ARGS`` in a fresh process (the real entry point, exit codes)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "conformer_vision", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread: on a CPU shared with other jobs, 2 spinning threads can be 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def fashion_mnist(base: Path) -> Path:
    """``base/fm/{train,val}/<class>/*.png``: 6 images per class and split, 32x32 RGB PNG."""
    from conformer_vision.data import prepare_fashion_mnist

    prepare_fashion_mnist(base / "fm", image_size=SIZE, limit_per_class=PER_CLASS, num_workers=1)
    return base / "fm"


def _gradient(w: int, h: int, seed: int) -> Image.Image:
    """A smooth RGB picture: two gradients and a few shapes, so JPEG encodes it like a photo."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255 * (seed % 3 + 1) / 3], -1)
    img = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse((x0, y0, x0 + w // 3, y0 + h // 3), fill=fill)
    return img


@functools.cache
def photos(base: Path) -> Path:
    """``base/photos``: readable images in every odd mode (no broken files)."""
    out = base / "photos"
    out.mkdir(parents=True, exist_ok=True)
    _gradient(120, 90, 0).save(out / "a_rgb.jpg", quality=90)
    _gradient(64, 96, 1).save(out / "b_shapes.png")
    _gradient(80, 60, 2).convert("CMYK").save(out / "c_cmyk.jpg", quality=92)
    grey16 = np.asarray(_gradient(70, 50, 3).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey16).save(out / "d_grey16.png")  # mode I;16
    pal = _gradient(48, 48, 4).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(out / "e_palette_transparent.png", transparency=0)
    _gradient(50, 70, 5).convert("L").save(out / "f_grey.jpg", quality=85)
    rgba = _gradient(60, 40, 6).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((60, 40)))
    rgba.save(out / "g_rgba.png")
    return out


def broken_folder(base: Path) -> Path:
    """``base/mixed``: two good photos, a truncated JPEG and a text file named .jpg."""
    out = base / "mixed"
    out.mkdir(parents=True, exist_ok=True)
    _gradient(40, 30, 7).save(out / "good1.png")
    _gradient(30, 40, 8).save(out / "good2.jpg")
    buf = io.BytesIO()
    _gradient(64, 64, 9).save(buf, format="JPEG")
    (out / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (out / "notes.jpg").write_text("this is not an image\n")
    return out


@functools.cache
def trained_model(base: Path) -> tuple[Any, list[str], Any]:
    """conformer_mini_test after 30 SGD steps on the Fashion-MNIST train images (seeded)."""
    from conformer_vision.data import ImageFolderDataset, Preprocess, build_class_list
    from conformer_vision.models import create_model

    root = fashion_mnist(base)
    classes = build_class_list(root / "train")
    pre = Preprocess((SIZE, SIZE), crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    data = ImageFolderDataset(root / "train", pre.eval_transform(), classes=classes)
    x = torch.stack([data[i][0] for i in range(len(data))])  # (60, 3, 32, 32)
    y = torch.tensor(data.targets)
    torch.manual_seed(0)
    model = create_model("conformer_mini_test", num_classes=len(classes))
    model.train()
    g = torch.Generator().manual_seed(0)
    with one_thread():
        _sgd_steps(model, x, y, g)
    return model.eval(), classes, pre


def _sgd_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        idx = torch.randperm(len(x), generator=g)[:30]
        conv, trans = model.forward_heads(x[idx])
        loss = (F.cross_entropy(conv, y[idx]) + F.cross_entropy(trans, y[idx])) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()


@functools.cache
def checkpoint(base: Path) -> Path:
    """The trained model as this project's checkpoint; its EMA slot holds the same network with
    both heads zeroed (so ``--use_ema`` visibly changes the predictions)."""
    from conformer_vision.checkpoint import atomic_save, build_checkpoint

    model, classes, pre = trained_model(base)
    ema = {k: (torch.zeros_like(v) if "cls_head" in k else v.clone()) for k, v in model.state_dict().items()}
    ckpt = build_checkpoint(model, class_names=classes, preprocess=pre.to_dict(), ema_state=ema)
    return atomic_save(ckpt, base / "mini.pt")


@functools.cache
def onnx_export(base: Path) -> Path:
    """The checkpoint exported with the default (torch.export-based) ONNX exporter, via the CLI."""
    out = base / "mini.onnx"
    with one_thread():
        rc, _, err = cli("export", "--checkpoint", str(checkpoint(base)), "--file_format", "ONNX", "--output", str(out))
    assert rc == 0, err[-3000:]
    return out


def describe_export(path: Path) -> dict[str, Any]:
    """The metadata an exported file carries (read from the file itself, not through the runtime):
    ONNX ``metadata_props``, the safetensors header, ``conformer_vision.json`` inside TorchScript and
    .pt2 archives, a hub folder's config.json; {} when it has none."""
    import json
    import zipfile

    path = Path(path)
    if path.is_dir():
        from conformer_vision.hub import read_hub_metadata

        return read_hub_metadata(path)
    if path.suffix == ".onnx":
        import onnx

        props = onnx.load(str(path), load_external_data=False).metadata_props
        return {p.key: json.loads(p.value) for p in props if not p.key.startswith("onnx.")}  # onnxruntime's own
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    with zipfile.ZipFile(path) as archive:  # <root>/extra/conformer_vision.json
        names = [n for n in archive.namelist() if n.endswith("/extra/conformer_vision.json")]
        return json.loads(archive.read(names[0])) if names else {}
