"""quantize + `conformer export --quantize`: int8 ONNX files (dynamic and static) that every reader takes."""

from __future__ import annotations

import json
from pathlib import Path

import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)
import onnx
import pytest
import torch

from conformer_vision.data import load_rgb, preprocess_image
from conformer_vision.errors import ConformerError, DataError
from conformer_vision.export import export_model
from conformer_vision.quantize import calibration_files, integer_ops
from conformer_vision.runtime import open_predictor

# every test needs the inference tests' trained checkpoint and its exports
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def exports(base: Path) -> dict[str, Path]:
    """The trained mini checkpoint as float, int8_dynamic and int8_static ONNX (TorchScript exporter: fast).
    The static file goes through the CLI (calibrated on the Fashion-MNIST train folder); its output is kept."""
    out = base / "quantize"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = T.checkpoint(base)
    with T.one_thread():  # module-scoped: the autouse one-thread fixture is not active yet
        paths = {"float": export_model(ckpt, output=out / "float.onnx", exporter="torchscript")}
        paths["int8_dynamic"] = export_model(
            ckpt, output=out / "dyn.onnx", exporter="torchscript", quantize="int8_dynamic"
        )
        rc, stdout, err = T.cli(
            "export",
            "--checkpoint",
            str(ckpt),
            "--file_format",
            "ONNX",
            "--exporter",
            "torchscript",
            "--quantize",
            "int8_static",
            "--calibration",
            str(T.fashion_mnist(base) / "train"),
            "--calibration_size",
            "40",
            "--output",
            str(out / "static.onnx"),
        )
    assert rc == 0, err[-3000:]
    (out / "static.stdout").write_text(stdout)
    paths["int8_static"] = out / "static.onnx"
    return paths


def _val_batch(base: Path) -> torch.Tensor:
    """The 60 Fashion-MNIST val images, preprocessed with the checkpoint's recipe: (60, 3, 32, 32)."""
    _, _, pre = T.trained_model(base)
    files = sorted((T.fashion_mnist(base) / "val").glob("*/*.png"))
    return torch.stack([preprocess_image(load_rgb(f), pre) for f in files])


def test_int8_files_hold_integer_ops_and_the_metadata(base, exports):
    dynamic, static = integer_ops(exports["int8_dynamic"]), integer_ops(exports["int8_static"])
    assert dynamic.get("MatMulInteger", 0) > 0 and dynamic.get("DynamicQuantizeLinear", 0) > 0, dynamic
    assert static.get("QuantizeLinear", 0) > 0 and static.get("DequantizeLinear", 0) > 0, static
    assert not integer_ops(exports["float"])
    _, classes, pre = T.trained_model(base)
    for mode in ("int8_dynamic", "int8_static"):
        meta = T.describe_export(exports[mode])
        assert meta["class_names"] == classes and meta["preprocess"] == pre.to_dict()
        assert meta["arch"] == "conformer_mini_test"
        props = {p.key: p.value for p in onnx.load(str(exports[mode])).metadata_props}
        assert json.loads(props["quantization"]) == mode
    stdout = (exports["int8_static"].parent / "static.stdout").read_text()
    assert "int8_static graph checked against the float PyTorch model" in stdout
    assert "16 calibration images" in stdout and "top-1 agreement" in stdout


def test_int8_agrees_with_float_on_real_images(base, exports):
    """Top-1 of both int8 files equals the float graph's on most held-out images, any input size."""
    x = _val_batch(base)
    float_p = open_predictor(exports["float"])
    ref = float_p.fused(x)
    for mode in ("int8_dynamic", "int8_static"):
        got = open_predictor(exports[mode]).fused(x)
        assert torch.isfinite(got).all()
        agreement = float((got.argmax(1) == ref.argmax(1)).float().mean())
        assert agreement >= 0.9, (mode, agreement)
        odd = torch.nn.functional.interpolate(x[:3], size=(45, 37), mode="bilinear")
        assert open_predictor(exports[mode]).fused(odd).shape == (3, 10)


def test_eval_onnx_and_predict_read_int8_files(base, exports, tmp_path):
    val = T.fashion_mnist(base) / "val"
    rc, out, err = T.cli("eval-onnx", str(val), "--onnx_path", str(exports["int8_static"]))
    assert rc == 0, err
    assert "eval results:" in out and "Top1-Acc" in out
    rc, out, err = T.cli(
        "predict",
        str(val / "bag"),
        "--checkpoint",
        str(exports["int8_dynamic"]),
        "--topk",
        "2",
        "--output",
        str(tmp_path / "p.json"),
    )
    assert rc == 0, err
    doc = json.loads((tmp_path / "p.json").read_text())
    first = next(v for k, v in doc.items() if k != "errors")
    _, classes, _ = T.trained_model(base)
    assert len(first) == 2 and first[0]["name"] in classes


def _cli_error(*args: str, cwd: Path) -> str:
    rc, _, err = T.cli(*args, cwd=cwd)
    assert rc == 2 and "Traceback" not in err, err
    return err


def test_quantize_usage_errors(base, tmp_path):
    ckpt = str(T.checkpoint(base))
    export = ("export", "--checkpoint", ckpt, "--exporter", "torchscript", "--output", str(tmp_path / "m"))
    err = _cli_error(*export, "--file_format", "SAFETENSORS", "--quantize", "int8_dynamic", cwd=tmp_path)
    assert "ONNX exports only" in err and "SAFETENSORS" in err
    err = _cli_error(*export, "--file_format", "ONNX", "--quantize", "int8_static", cwd=tmp_path)
    assert "--calibration DIR" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    err = _cli_error(
        *export,
        "--file_format",
        "ONNX",
        "--quantize",
        "int8_static",
        "--calibration",
        str(tmp_path / "empty"),
        cwd=tmp_path,
    )
    assert "holds no images" in err and str(tmp_path / "empty") in err
    err = _cli_error(
        *export,
        "--file_format",
        "ONNX",
        "--quantize",
        "int8_static",
        "--calibration",
        str(tmp_path / "missing"),
        cwd=tmp_path,
    )
    assert "does not exist" in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_text("not a png")
    err = _cli_error(
        *export,
        "--file_format",
        "ONNX",
        "--quantize",
        "int8_static",
        "--calibration",
        str(tmp_path / "broken"),
        cwd=tmp_path,
    )
    assert "could be read" in err
    assert not list(tmp_path.glob("m*"))  # nothing written


def test_calibration_files_spread_over_classes(base):
    files = calibration_files(T.fashion_mnist(base) / "train", size=20)
    assert len(files) == 20 and len({f.parent.name for f in files}) == 10
    with pytest.raises(DataError, match="does not exist"):
        calibration_files(T.fashion_mnist(base) / "no-such-folder", 4)


def test_gross_int8_mismatch_fails_and_keeps_the_file(base, tmp_path, monkeypatch):
    import conformer_vision.export as export

    real = export._runner

    def broken(path, fmt):  # a broken quantiser: NaN logits
        run = real(path, fmt)
        return lambda x: tuple(t * float("nan") for t in run(x))

    monkeypatch.setattr(export, "_runner", broken)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ConformerError, match="non-finite"):
        export_model(T.checkpoint(base), output=out, exporter="torchscript", quantize="int8_dynamic")
    assert not out.exists() and (tmp_path / "bad.onnx.failed").exists()
