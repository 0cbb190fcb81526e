"""Scenarios 22, 24, 30 and 33 of docs/reliability.md: model files that are rebuilt, exported, read
and written as what they are. A checkpoint rebuilds the model it describes through ``create_model``
and timm (22); traced exports of a model with the specification's numerics work at every input size
(24); a damaged file, a file of another kind and a file with code are told apart, and mmpretrain's
files with numpy values in their ``meta`` load (30); checkpoints get the umask's permissions (33)."""

from __future__ import annotations

import builtins
import logging
import os
import pickle
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from conformer_vision.checkpoint import load_model
from conformer_vision.errors import CheckpointError
from conformer_vision.export import export_model
from conformer_vision.models import create_model, load_state_dict_strict
from conformer_vision.runtime import OnnxPredictor
from conformer_vision.serialization import atomic_save, read_checkpoint

from .conftest import assert_user_error, checkpoints, conformer, conformer_inprocess, load, noise_image, train_args

# every test needs a training run in a subprocess; small models: one thread each, beside the child processes
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def mindspore_checkpoint(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of one real training run (one epoch) with the specification's YAML numerics:
    tanh GELU (``disable_approximate_gelu: False``) and TF "same" max-pool padding
    (``use_pytorch_maxpool: False``)."""
    run = tmp_path_factory.mktemp("mindspore_numerics")
    result = conformer(
        *train_args(
            dataset,
            run,
            epochs=1,
            ckpt_save_every_step=0,
            disable_approximate_gelu="false",
            use_pytorch_maxpool="false",
        )
    )
    assert result.rc == 0, result.output[-3000:]
    return checkpoints(run)[-1]


def _inputs(*sizes: tuple[int, int], batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, 3, *size, generator=g) for size in sizes]


def test_22_create_model_rebuilds_the_model_a_checkpoint_describes(mindspore_checkpoint, tmp_path, caplog):
    ckpt = str(mindspore_checkpoint)
    stored = load(mindspore_checkpoint)
    assert stored["model_args"]["approximate_gelu"] and stored["model_args"]["same_pad_maxpool"]
    (x,) = _inputs((32, 32), batch=3)
    with torch.no_grad():
        want = load_model(ckpt).model(x)
        for build in (create_model, timm.create_model):  # no argument but the file
            model = build("conformer_mini_test", pretrained=ckpt).eval()
            assert model.args.to_dict() == stored["model_args"]
            assert torch.equal(model(x), want), build
        # What the variant's defaults give with the same weights (the numbers create_model returned before).
        defaults = create_model("conformer_mini_test", num_classes=2).eval()
        load_state_dict_strict(defaults, stored["model"])
        assert float((defaults(x) - want).abs().max()) > 1e-3
        # A safetensors export describes the model the same way.
        weights = export_model(ckpt, file_format="SAFETENSORS", output=tmp_path / "w.safetensors")
        assert torch.equal(create_model("conformer_mini_test", pretrained=str(weights)).eval()(x), want)

    # An explicit argument that contradicts the file: used and logged, or an error; never silent.
    with caplog.at_level(logging.WARNING, logger="conformer_vision"):
        override = timm.create_model("conformer_mini_test", pretrained=ckpt, approximate_gelu=False)
    assert f"{ckpt} was trained with approximate_gelu=True; using approximate_gelu=False as asked" in caplog.text
    assert override.args.same_pad_maxpool and not override.args.approximate_gelu
    with caplog.at_level(logging.WARNING, logger="conformer_vision"):
        transfer = create_model("conformer_mini_test", num_classes=5, pretrained=ckpt, drop_path_rate=0.2)
    assert "its heads have 2 classes, the model has 5" in caplog.text and "re-initialised both heads" in caplog.text
    assert transfer.args.same_pad_maxpool and transfer.args.drop_path_rate == 0.2  # training-time options: free
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"{ckpt} holds conformer_mini_test (channel_ratio 0.25, "
            "embed_dim 32, num_heads 2), not conformer_tiny_patch16"
        ),
    ):
        create_model("conformer_tiny", pretrained=ckpt)
    with pytest.raises(CheckpointError, match=re.escape("num_heads=4 (the file has 2) contradicts it")):
        create_model("conformer_mini_test", pretrained=ckpt, num_heads=4)  # would load and compute another net


def test_24_traced_exports_of_a_same_pad_maxpool_model_match_pytorch_at_every_size(mindspore_checkpoint, tmp_path):
    """``--file_format TORCHSCRIPT`` and ONNX ``--exporter torchscript`` trace at 224x192: the stem's
    "same" padding must stay shape arithmetic in the graph (it was frozen, and gave NaN elsewhere)."""
    torchscript, onnx = tmp_path / "mini.torchscript.pt", tmp_path / "mini.onnx"
    result = conformer(
        "export", "--checkpoint", mindspore_checkpoint, "--file_format", "TORCHSCRIPT", "--output", torchscript
    )
    assert result.rc == 0 and "checked against PyTorch" in result.stdout, result.output[-3000:]
    result = conformer_inprocess(
        "export", "--checkpoint", mindspore_checkpoint, "--exporter", "torchscript", "--output", onnx
    )
    assert result.rc == 0, result.output[-3000:]
    model = load_model(mindspore_checkpoint).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        scripted = torch.jit.load(str(torchscript))
    session = OnnxPredictor(onnx, "CPU")
    for x in _inputs((32, 32), (48, 40), (33, 47)):
        with torch.inference_mode():
            want, got_script = model(x), scripted(x)[0]
        conv, trans = session.heads(x)
        for got in (got_script, conv + trans):
            assert bool(torch.isfinite(got).all()), x.shape
            assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max()), x.shape


class Payload:
    """Unpickling this calls open(path, "w"): the file appears if a loader runs the payload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return builtins.open, (str(self.path), "w")


def _mmpretrain_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmpretrain's key names: ``backbone.``/``head.`` prefixes, ``ln1``/``ln2``/``ffn`` in the transformer blocks."""
    out = {}
    for key, value in sd.items():
        if key.startswith(("conv_cls_head", "trans_cls_head")):
            out["head." + key] = value
            continue
        if re.match(r"(trans_1|conv_trans_\d+\.trans_block)\.", key):
            key = key.replace(".norm1.", ".ln1.").replace(".norm2.", ".ln2.")
            key = key.replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1.")
        out["backbone." + key] = value
    return out


def _mmengine_meta() -> dict:
    """A ``meta`` as mmengine's CheckpointHook writes it: numpy scalars, a dtype and an array among plain values."""
    return {
        "epoch": np.int64(300),
        "iter": np.int64(375300),
        "seed": np.int32(1234),
        "best_top1": np.float64(81.3),
        "lr": np.float32(1e-5),
        "ema": np.bool_(True),
        "dtype": np.dtype("float32"),
        "last_losses": np.array([2.1, 2.05, 2.0]),
        "dataset_meta": {"classes": ("cat", "dog")},
        "mmengine_version": "0.10.7",
    }


def test_30_damaged_foreign_and_code_files_are_told_apart_and_mmpretrain_files_load(reference_run, tmp_path):
    real = checkpoints(reference_run)[-1]
    sd = load(real)["model"]
    marker = tmp_path / "payload_ran"
    yaml_text = "arch: conformer_mini_test\nepochs: 2\n"
    rng = random.Random(3)
    noise = bytes(rng.randrange(256) for _ in range(4000))  # starts 0x46: neither a zip nor a pickle header
    legacy = tmp_path / "legacy.pt"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    files = {
        "truncated zip": (
            real.read_bytes()[: real.stat().st_size // 2],
            "is truncated or corrupt: a PyTorch "
            "checkpoint whose content is incomplete or damaged (its zip directory is missing",
        ),
        "truncated old format": (legacy.read_bytes()[:50_000], "is truncated or corrupt: a PyTorch checkpoint"),
        "random bytes": (
            noise,
            f"is not a checkpoint: its bytes (starting {noise[:8].hex(' ')}) are neither a "
            "PyTorch checkpoint (zip or pickle) nor a known kind of file",
        ),
        "text": (b"my notes about the run\n", "is not a checkpoint: it is a text file (first line 'my notes"),
        "yaml": (yaml_text.encode(), "is not a checkpoint: it is a YAML file (first line 'arch: conformer_mini_test')"),
        "plain pickle": (
            pickle.dumps({"lr": 0.1, "epochs": [1, 2]}, protocol=4),
            "is not a checkpoint: it is a Python pickle of plain data (written by pickle.dump",
        ),
        "pickle with code": (
            pickle.dumps({"model": Payload(marker)}, protocol=4),
            "was refused: it contains Python objects other than tensors and plain values (io.open)",
        ),
    }
    image = tmp_path / "image.pt"
    noise_image(0).save(image, format="PNG")
    checks = {"image": (image, "is not a checkpoint: it is a PNG image")}
    for name, (data, message) in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        path.write_bytes(data)
        checks[name] = (path, message)
    code = tmp_path / "code.pt"
    torch.save({"model": sd, "meta": {"epoch": Payload(marker)}}, code)
    checks["torch.save with code"] = (
        code,
        "was refused: it contains Python objects other than tensors and plain values (io.open), which could run code",
    )
    for name, (path, message) in checks.items():
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(path)
        assert str(error.value).startswith(f"{path} {message}"), (name, str(error.value))
    assert not marker.exists()

    # mmpretrain / mmengine files: numpy values in meta are data. Zip and old (non-zip) format.
    for zip_format in (True, False):
        mm = tmp_path / f"conformer-mini_8xb128_in1k_{zip_format}.pth"
        torch.save(
            {"state_dict": _mmpretrain_layout(sd), "meta": _mmengine_meta()},
            mm,
            _use_new_zipfile_serialization=zip_format,
        )
        assert read_checkpoint(mm)["meta"]["best_top1"] == np.float64(81.3)
        model = create_model("conformer_mini_test", num_classes=2, pretrained=str(mm))
        assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
        # The same file with a payload among the numpy values is still refused, and nothing runs.
        torch.save(
            {"state_dict": _mmpretrain_layout(sd), "meta": {**_mmengine_meta(), "hook": Payload(marker)}},
            mm,
            _use_new_zipfile_serialization=zip_format,
        )
        with pytest.raises(CheckpointError, match=re.escape(f"{mm} was refused") + ".*io.open"):
            create_model("conformer_mini_test", num_classes=2, pretrained=str(mm))
    assert not marker.exists()
    # One real process: random bytes are not reported as malicious.
    path = checks["random bytes"][0]
    result = conformer("export", "--checkpoint", path, "--arch", "conformer_mini_test", "--output", tmp_path / "m.onnx")
    assert_user_error(result, f"{path} is not a checkpoint")
    assert "malicious" not in result.stderr and not (tmp_path / "m.onnx").exists()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_33_checkpoints_get_the_permissions_the_umask_gives_every_file(reference_run, tmp_path):
    expected = 0o666 & ~_umask()
    written = [*checkpoints(reference_run), *(reference_run / "best").glob("*.pt")]
    assert written and {oct(p.stat().st_mode & 0o777) for p in written} == {oct(expected)}  # was 0o600
    mask = os.umask(0o027)
    try:
        atomic_save({"w": torch.zeros(1)}, tmp_path / "group.pt")
    finally:
        os.umask(mask)
    assert (tmp_path / "group.pt").stat().st_mode & 0o777 == 0o640
