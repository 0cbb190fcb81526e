"""export + `conformer export`: every format, self-describing files, ONNX parity on real photos."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import onnx
import pytest
import torch

from conformer_vision.checkpoint import load_model
from conformer_vision.data import load_rgb, preprocess_image
from conformer_vision.errors import ConformerError
from conformer_vision.export import describe_export, export_model
from conformer_vision.models import create_model
from conformer_vision.runtime import open_predictor


import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)


pytestmark = pytest.mark.usefixtures("one_thread")


def _photo_batch(base: Path, size: tuple[int, int]) -> torch.Tensor:
    """The 7 odd-mode photos decoded and preprocessed at ``size`` with the checkpoint's recipe."""
    _, _, pre = T.trained_model(base)
    pre = dataclasses.replace(pre, input_size=size)
    return torch.stack([preprocess_image(load_rgb(p), pre) for p in sorted(T.photos(base).iterdir())])


@pytest.mark.parametrize("size", [(224, 224), (160, 224), (200, 240), (97, 131)])
def test_onnx_matches_pytorch_on_real_photos(base, size):
    """Default (torch.export-based) ONNX export: same top-1 on every photo, logits within 1e-4 of the
    logit scale, at batch 1 and 3, square and non-square, multiples of the patch size or not."""
    torch_p, onnx_p = open_predictor(T.checkpoint(base)), open_predictor(T.onnx_export(base))
    images = _photo_batch(base, size)
    for batch in (images[:1], images[1:4], images[4:5]):
        ref, got = torch_p.heads(batch), onnx_p.heads(batch)
        fused_ref, fused_got = ref[0] + ref[1], got[0] + got[1]
        scale = float(fused_ref.abs().max())
        for r, g in zip((fused_ref, *ref), (fused_got, *got)):
            assert float((r - g).abs().max()) <= 1e-4 * scale, (size, batch.shape)
        assert torch.equal(fused_ref.argmax(1), fused_got.argmax(1))


def test_onnx_file_is_self_describing_with_dynamic_dims(base):
    model = onnx.load(str(T.onnx_export(base)))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "input" and dims == ["batch", 3, "height", "width"]
    assert [o.name for o in model.graph.output] == ["logits", "conv_logits", "trans_logits"]
    meta = describe_export(T.onnx_export(base))
    _, classes, pre = T.trained_model(base)
    assert meta["class_names"] == classes and meta["preprocess"] == pre.to_dict()
    assert meta["arch"] == "conformer_mini_test" and meta["model_args"]["embed_dim"] == 32


def _compare(module, reference, x: torch.Tensor) -> None:
    with torch.inference_mode():
        logits, conv, trans = module(x)
    ref_conv, ref_trans = reference.heads(x)
    torch.testing.assert_close(conv, ref_conv, rtol=1e-4, atol=1e-4 * float(ref_conv.abs().max()))
    torch.testing.assert_close(logits, ref_conv + ref_trans, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))


def test_torchscript_runs_any_size_and_carries_metadata(base, tmp_path):
    rc, out, err = T.cli("export", "--checkpoint", str(T.checkpoint(base)), "--file_format", "TORCHSCRIPT",
                         "--output", str(tmp_path / "m"))  # fmt: skip
    assert rc == 0, err
    assert "checked against PyTorch" in out and "top-1 agreement 3/3" in out
    path = tmp_path / "m.torchscript.pt"
    _, classes, pre = T.trained_model(base)
    meta = describe_export(path)
    assert meta["class_names"] == classes and meta["preprocess"] == pre.to_dict()
    module, reference = torch.jit.load(str(path)), open_predictor(T.checkpoint(base))
    for size, batch in (((57, 83), 3), ((32, 32), 1), ((224, 160), 2)):
        _compare(module, reference, _photo_batch(base, size)[:batch])


def test_a_model_in_memory_exports_from_a_copy(base, tmp_path):
    """export_model(model): a Conformer in memory (here mid-training, with inference caches built)
    exports with the given class names; the caller's model keeps its mode and weights."""
    model = create_model("conformer_mini_test", num_classes=3)
    with torch.inference_mode():
        expected = model.eval()(torch.randn(2, 3, 32, 32))  # builds the folded-weights caches
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_model(model, file_format="ONNX", output=tmp_path / "m.onnx", exporter="torchscript",
                        class_names=["a", "b", "c"])  # fmt: skip
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    meta = describe_export(path)
    assert meta["arch"] == "conformer_mini_test" and meta["class_names"] == ["a", "b", "c"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(open_predictor(path).heads(x)[0], model.eval().forward_heads(x)[0], rtol=1e-4, atol=1e-4)
    assert expected.shape == (2, 3)
    with pytest.raises(ConformerError, match="takes a Conformer or a checkpoint path"):
        export_model(torch.nn.Linear(2, 2), output=tmp_path / "x.onnx")


def test_exported_program_of_a_small_input_model(base, tmp_path):
    """Input size 32 (< 2 x patch + 1): the program is exported for 32x32, batch dynamic."""
    rc, out, err = T.cli("export", "--checkpoint", str(T.checkpoint(base)), "--file_format", "EXPORTED_PROGRAM",
                         "--output", str(tmp_path / "m.pt2"))  # fmt: skip
    assert rc == 0, err
    _, classes, pre = T.trained_model(base)
    assert describe_export(tmp_path / "m.pt2")["class_names"] == classes
    module = torch.export.load(str(tmp_path / "m.pt2")).module()
    _compare(module, open_predictor(T.checkpoint(base)), _photo_batch(base, (32, 32))[:3])


@pytest.mark.skipif(not os.environ.get("CONFORMER_SLOW_TESTS"),
                    reason="slow (~35 s CPU: torch.export with dynamic spatial size, then its reload); "
                           "set CONFORMER_SLOW_TESTS=1 to run")  # fmt: skip
def test_exported_program_with_dynamic_spatial_size(base, tmp_path):
    """Input size 48: height and width dynamic from 33 up; below that a clear guard error."""
    from conformer_vision.checkpoint import atomic_save, build_checkpoint

    model, classes, pre = T.trained_model(base)
    pre48 = dataclasses.replace(pre, input_size=(48, 48))
    ckpt = atomic_save(build_checkpoint(model, class_names=classes, preprocess=pre48.to_dict()), tmp_path / "c.pt")
    rc, out, err = T.cli("export", "--checkpoint", str(ckpt), "--file_format", "EXPORTED_PROGRAM",
                         "--output", str(tmp_path / "m"))  # fmt: skip
    assert rc == 0, err
    module = torch.export.load(str(tmp_path / "m.pt2")).module()
    reference = open_predictor(T.checkpoint(base))
    for size, batch in (((57, 83), 3), ((48, 48), 1), ((224, 160), 2)):
        _compare(module, reference, _photo_batch(base, size)[:batch])
    with pytest.raises(Exception, match=">= 33"):
        module(torch.zeros(1, 3, 32, 32))


def test_safetensors_round_trip(base, tmp_path):
    path = export_model(T.checkpoint(base), file_format="SAFETENSORS", output=tmp_path / "w.safetensors")
    loaded = load_model(path)  # no --arch: the header names it, with classes and preprocessing
    model, classes, pre = T.trained_model(base)
    assert loaded.arch == "conformer_mini_test" and loaded.class_names == classes and loaded.preprocess == pre.to_dict()
    x = torch.randn(2, 3, 32, 32)
    again = create_model("conformer_mini_test", num_classes=10, pretrained=str(path)).eval()
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), model(x))
        assert torch.equal(again(x), model(x))
    ema = export_model(T.checkpoint(base), file_format="SAFETENSORS", output=tmp_path / "ema", use_ema=True)
    assert ema.name == "ema.safetensors" and float(load_model(ema).model.conv_cls_head.weight.detach().abs().max()) == 0


def test_specification_spelling_with_authors_checkpoint(base, tmp_path):
    """`export --config CFG --pretrained CKPT --file_format ONNX --arch NAME` writes <arch>.onnx in the
    cwd; an authors'-layout file exports directly, its preprocessing taken from the config."""
    model, _, _ = T.trained_model(base)
    authors = tmp_path / "authors.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, authors)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("arch: conformer_mini_test\nimage_size: 48\ncrop_pct: 0.9\nnum_classes: 10\n")
    rc, out, err = T.cli("export", "--config", str(cfg), "--pretrained", str(authors), "--file_format", "ONNX",
                         "--arch", "conformer_mini_test", "--exporter", "torchscript", cwd=tmp_path)  # fmt: skip
    assert rc == 0, err
    path = tmp_path / "conformer_mini_test.onnx"
    assert path.exists() and str(path) in out
    meta = describe_export(path)
    assert meta["preprocess"]["input_size"] == [48, 48] and meta["preprocess"]["crop_pct"] == 0.9
    assert meta["class_names"] is None
    predictor = open_predictor(path)
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        assert float((predictor.fused(x) - model(x)).abs().max()) <= 1e-4 * float(model(x).abs().max())


def test_export_errors(base, tmp_path, monkeypatch):
    model, _, _ = T.trained_model(base)
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    rc, _, err = T.cli("export", "--checkpoint", str(bare), "--file_format", "SAFETENSORS", cwd=tmp_path)
    assert rc == 2 and "--arch" in err and "Traceback" not in err
    rc, _, err = T.cli("export", "--file_format", "ONNX", cwd=tmp_path)
    assert rc == 2 and "--checkpoint" in err
    rc, _, err = T.cli("export", "--checkpoint", str(bare), "--file_format", "MINDIR", cwd=tmp_path)
    assert rc == 2 and "MindSpore" in err

    import conformer_vision.export as export

    real = export._runner

    def off_by_a_bit(path, fmt):  # a broken exporter: logits off by 1% of their scale
        run = real(path, fmt)
        return lambda x: tuple(t + 0.01 * t.abs().max() for t in run(x))

    monkeypatch.setattr(export, "_runner", off_by_a_bit)
    out = tmp_path / "bad.safetensors"
    with pytest.raises(ConformerError, match="does not match PyTorch"):
        export_model(T.checkpoint(base), file_format="SAFETENSORS", output=out)
    assert not out.exists() and (tmp_path / "bad.safetensors.failed").exists()
    assert not any(p.name.endswith(".tmp.safetensors") for p in tmp_path.iterdir())


def test_a_rejected_export_never_replaces_an_existing_file(tmp_path, monkeypatch):
    """The self-check's rejected file is kept beside the output, under a name no file holds yet:
    a user's own ``<output>.failed`` (or an earlier rejected export) stays as it was."""
    import conformer_vision.export as export

    real = export._runner

    def off_by_a_bit(path, fmt):  # a broken exporter: logits off by 1% of their scale
        run = real(path, fmt)
        return lambda x: tuple(t + 0.01 * t.abs().max() for t in run(x))

    monkeypatch.setattr(export, "_runner", off_by_a_bit)
    model = create_model("conformer_mini_test", num_classes=3).eval()
    out = tmp_path / "w.safetensors"
    mine = tmp_path / "w.safetensors.failed"
    mine.write_text("my notes\n")
    for expected in ("w.safetensors.failed.2", "w.safetensors.failed.3"):
        with pytest.raises(ConformerError, match="does not match PyTorch"):
            export_model(model, file_format="SAFETENSORS", output=out)
        assert (tmp_path / expected).stat().st_size > 1000
    assert mine.read_text() == "my notes\n" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "w.safetensors.failed.2", "w.safetensors.failed.3"]
