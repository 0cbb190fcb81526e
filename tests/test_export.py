"""export + `conformer export`: every format, self-describing files, ONNX parity on real photos."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)
import onnx
import pytest
import torch

from conformer_vision.checkpoint import load_model
from conformer_vision.data import load_rgb, preprocess_image
from conformer_vision.errors import ConformerError
from conformer_vision.export import export_model
from conformer_vision.models import create_model
from conformer_vision.runtime import open_predictor

pytestmark = pytest.mark.usefixtures("one_thread")


def _photo_batch(base: Path, size: tuple[int, int]) -> torch.Tensor:
    """The 7 odd-mode photos decoded and preprocessed at ``size`` with the checkpoint's recipe."""
    _, _, pre = T.trained_model(base)
    pre = dataclasses.replace(pre, input_size=size)
    return torch.stack([preprocess_image(load_rgb(p), pre) for p in sorted(T.photos(base).iterdir())])


@pytest.mark.slow
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


@pytest.mark.slow
def test_onnx_file_is_self_describing_with_dynamic_dims(base):
    model = onnx.load(str(T.onnx_export(base)))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "input" and dims == ["batch", 3, "height", "width"]
    assert [o.name for o in model.graph.output] == ["logits", "conv_logits", "trans_logits"]
    meta = T.describe_export(T.onnx_export(base))
    _, classes, pre = T.trained_model(base)
    assert meta["class_names"] == classes and meta["preprocess"] == pre.to_dict()
    assert meta["arch"] == "conformer_mini_test" and meta["model_args"]["embed_dim"] == 32


def _compare(module, reference, x: torch.Tensor) -> None:
    with torch.inference_mode():
        logits, conv, trans = module(x)
    ref_conv, ref_trans = reference.heads(x)
    torch.testing.assert_close(conv, ref_conv, rtol=1e-4, atol=1e-4 * float(ref_conv.abs().max()))
    torch.testing.assert_close(logits, ref_conv + ref_trans, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))


@pytest.mark.slow
def test_torchscript_runs_any_size_and_carries_metadata(base, tmp_path):
    rc, out, err = T.cli(
        "export",
        "--checkpoint",
        str(T.checkpoint(base)),
        "--file_format",
        "TORCHSCRIPT",
        "--output",
        str(tmp_path / "m"),
    )
    assert rc == 0, err
    assert "checked against PyTorch" in out and "top-1 agreement 3/3" in out
    path = tmp_path / "m.torchscript.pt"
    _, classes, pre = T.trained_model(base)
    meta = T.describe_export(path)
    assert meta["class_names"] == classes and meta["preprocess"] == pre.to_dict()
    module, reference = torch.jit.load(str(path)), open_predictor(T.checkpoint(base))
    for size, batch in (((57, 83), 3), ((32, 32), 1), ((224, 160), 2)):
        _compare(module, reference, _photo_batch(base, size)[:batch])


@pytest.mark.slow
def test_a_model_in_memory_exports_from_a_copy(base, tmp_path):
    """export_model(model): a Conformer in memory (here mid-training, with inference caches built)
    exports with the given class names; the caller's model keeps its mode and weights."""
    model = create_model("conformer_mini_test", num_classes=3)
    with torch.inference_mode():
        expected = model.eval()(torch.randn(2, 3, 32, 32))  # builds the folded-weights caches
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_model(
        model, file_format="ONNX", output=tmp_path / "m.onnx", exporter="torchscript", class_names=["a", "b", "c"]
    )
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    meta = T.describe_export(path)
    assert meta["arch"] == "conformer_mini_test" and meta["class_names"] == ["a", "b", "c"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(
            open_predictor(path).heads(x)[0], model.eval().forward_heads(x)[0], rtol=1e-4, atol=1e-4
        )
    assert expected.shape == (2, 3)
    with pytest.raises(ConformerError, match="takes a Conformer or a checkpoint path"):
        export_model(torch.nn.Linear(2, 2), output=tmp_path / "x.onnx")


@pytest.mark.slow
def test_exported_program_of_a_small_input_model(base, tmp_path):
    """Input size 32 (< 2 x patch + 1): the program is exported for 32x32, batch dynamic."""
    rc, out, err = T.cli(
        "export",
        "--checkpoint",
        str(T.checkpoint(base)),
        "--file_format",
        "EXPORTED_PROGRAM",
        "--output",
        str(tmp_path / "m.pt2"),
    )
    assert rc == 0, err
    _, classes, pre = T.trained_model(base)
    assert T.describe_export(tmp_path / "m.pt2")["class_names"] == classes
    module = torch.export.load(str(tmp_path / "m.pt2")).module()
    _compare(module, open_predictor(T.checkpoint(base)), _photo_batch(base, (32, 32))[:3])


@pytest.mark.slow  # ~35 s of CPU: torch.export with a dynamic spatial size, then its reload
def test_exported_program_with_dynamic_spatial_size(base, tmp_path):
    """Input size 48: height and width dynamic from 33 up; below that a clear guard error."""
    from conformer_vision.checkpoint import atomic_save, build_checkpoint

    model, classes, pre = T.trained_model(base)
    pre48 = dataclasses.replace(pre, input_size=(48, 48))
    ckpt = atomic_save(build_checkpoint(model, class_names=classes, preprocess=pre48.to_dict()), tmp_path / "c.pt")
    rc, out, err = T.cli(  # no self-check: the sizes below compare the program with the model
        "export",
        "--checkpoint",
        str(ckpt),
        "--file_format",
        "EXPORTED_PROGRAM",
        "--output",
        str(tmp_path / "m"),
        "--no_check",
    )
    assert rc == 0, err
    module = torch.export.load(str(tmp_path / "m.pt2")).module()
    reference = open_predictor(T.checkpoint(base))
    for size, batch in (((57, 83), 3), ((48, 48), 1), ((224, 160), 2)):
        _compare(module, reference, _photo_batch(base, size)[:batch])
    with pytest.raises(Exception, match=">= 33"):
        module(torch.zeros(1, 3, 32, 32))


@pytest.mark.slow
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


@pytest.mark.slow
def test_specification_spelling_with_authors_checkpoint(base, tmp_path):
    """`export --config CFG --pretrained CKPT --file_format ONNX --arch NAME` writes <arch>.onnx in the
    cwd; an authors'-layout file exports directly, its preprocessing taken from the config."""
    model, _, _ = T.trained_model(base)
    authors = tmp_path / "authors.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, authors)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("arch: conformer_mini_test\nimage_size: 48\ncrop_pct: 0.9\nnum_classes: 10\n")
    rc, out, err = T.cli(
        "export",
        "--config",
        str(cfg),
        "--pretrained",
        str(authors),
        "--file_format",
        "ONNX",
        "--arch",
        "conformer_mini_test",
        "--exporter",
        "torchscript",
        cwd=tmp_path,
    )
    assert rc == 0, err
    path = tmp_path / "conformer_mini_test.onnx"
    assert path.exists() and str(path) in out
    meta = T.describe_export(path)
    assert meta["preprocess"]["input_size"] == [48, 48] and meta["preprocess"]["crop_pct"] == 0.9
    assert meta["class_names"] is None
    predictor = open_predictor(path)
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        assert float((predictor.fused(x) - model(x)).abs().max()) <= 1e-4 * float(model(x).abs().max())


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- HF_HUB: timm's Hugging Face Hub folder ------------------------------------------------------------


@pytest.mark.slow
def test_hub_folder_is_what_timm_rebuilds(base, tmp_path):
    """`conformer export --file_format HF_HUB` (the real command): timm.create_model("local-dir:DIR",
    pretrained=True) gives the checkpoint's logits exactly; config.json holds the class names and the
    preprocessing; predict/eval open the folder with both; re-exporting replaces the two files only."""
    import json

    import timm

    folder = tmp_path / "hub"
    run = T.cli_process(
        "export", "--checkpoint", str(T.checkpoint(base)), "--file_format", "HF_HUB", "--output", str(folder)
    )
    assert run.returncode == 0, run.stderr
    assert "checked against PyTorch" in run.stdout and f"local-dir:{folder}" in run.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    model, classes, pre = T.trained_model(base)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "conformer_mini_test" and config["label_names"] == classes
    assert config["num_classes"] == len(classes) and config["model_args"]["embed_dim"] == 32
    cfg = config["pretrained_cfg"]
    assert (cfg["input_size"], cfg["interpolation"], cfg["crop_pct"]) == (
        [3, *pre.input_size],
        pre.interpolation,
        pre.crop_pct,
    )
    assert cfg["mean"] == list(pre.mean) and cfg["std"] == list(pre.std) and cfg["license"] == "apache-2.0"
    assert config["conformer_vision"]["preprocess"] == pre.to_dict() == T.describe_export(folder)["preprocess"]
    rebuilt = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert rebuilt.pretrained_cfg["label_names"] == classes
    x = _photo_batch(base, (32, 32))[:4]
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), load_model(T.checkpoint(base)).model(x))
    predictor = open_predictor(folder)
    assert predictor.class_names == classes and predictor.preprocess == pre and predictor.arch == "conformer_mini_test"
    (folder / "README.md").write_text("model card\n")  # added by the user before pushing
    rc, out, err = T.cli(
        "export", "--checkpoint", str(T.checkpoint(base)), "--file_format", "hf", "--output", str(folder), "--no_check"
    )
    assert rc == 0, err
    assert "replacing the hub folder that was there" in out and (folder / "README.md").read_text() == "model card\n"


@pytest.mark.slow
def test_hub_folder_keeps_mindspore_numerics(tmp_path):
    """The model arguments round-trip through config.json's model_args: a model with the MindSpore
    numerics (TF 'same' max-pool padding, tanh GELU, LayerNorm eps 1e-7) comes back with them, and
    its logits (which those numerics change) are the model's own."""
    import timm

    numerics = dict(same_pad_maxpool=True, approximate_gelu=True, trans_norm_eps=1e-7)
    model = create_model("conformer_mini_test", num_classes=4, **numerics).eval()
    folder = export_model(model, file_format="HF_HUB", output=tmp_path / "ms", class_names=list("abcd"))
    rebuilt = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert {k: getattr(rebuilt.args, k) for k in numerics} == numerics and rebuilt.num_classes == 4
    x = torch.randn(2, 3, 45, 61, generator=torch.Generator().manual_seed(0))
    plain = create_model("conformer_mini_test", num_classes=4).eval()
    plain.load_state_dict(model.state_dict())
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), model(x)) and not torch.allclose(plain(x), model(x), atol=1e-6)
    fresh = timm.create_model(f"local-dir:{folder}")  # no weights asked for: the same network, initialised
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert fresh.args == rebuilt.args


@pytest.mark.slow
def test_hf_hub_names_read_a_pushed_folder(tmp_path, monkeypatch):
    """hf-hub:user/repo is read by the same code once the folder is on the Hub: the Hub client's
    download is replaced by the folder itself (no network in tests)."""
    import timm
    import timm.models._hub as timm_hub
    from huggingface_hub.errors import EntryNotFoundError

    model = create_model("conformer_mini_test", num_classes=3).eval()
    folder = export_model(model, file_format="HF_HUB", output=tmp_path / "pushed", class_names=["x", "y", "z"])
    asked = []

    def from_the_folder(repo_id, filename, revision=None, cache_dir=None, **_):
        asked.append((repo_id, filename))
        if not (folder / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(folder / filename)

    monkeypatch.setattr(timm_hub, "hf_hub_download", from_the_folder)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(timm.create_model("hf-hub:someone/conformer-mini", pretrained=True).eval()(x), model(x))
        predictor = open_predictor("hf-hub:someone/conformer-mini")
        assert predictor.class_names == ["x", "y", "z"]
        torch.testing.assert_close(predictor.fused(x), model(x), rtol=1e-4, atol=1e-5)
    assert ("someone/conformer-mini", "config.json") in asked and (
        "someone/conformer-mini",
        "model.safetensors",
    ) in asked


@pytest.mark.slow
def test_hub_output_never_replaces_a_users_folder(tmp_path, monkeypatch):
    """A folder holding files the toolkit did not write, or a file, is refused before any work (exit 2,
    one line, nothing touched); a rejected export is kept beside it as <output>.failed."""
    model = create_model("conformer_mini_test", num_classes=3).eval()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"architecture": "resnet18"}')  # someone else's hub folder
    checkpoint = tmp_path / "m.safetensors"
    export_model(model, file_format="SAFETENSORS", output=checkpoint)
    for target, message in (
        (mine, "holds files conformer-vision did not write (config.json)"),
        (checkpoint, "is a file; the HF_HUB format writes a folder"),
    ):
        rc, _, err = T.cli(
            "export", "--checkpoint", str(checkpoint), "--file_format", "HF_HUB", "--output", str(target)
        )
        assert rc == 2 and message in err and "Traceback" not in err
    assert (mine / "config.json").read_text() == '{"architecture": "resnet18"}' and checkpoint.stat().st_size > 1000
    import conformer_vision.export as export

    real = export._runner

    def off_by_a_bit(path, fmt):  # a broken writer: logits off by 1% of their scale
        run = real(path, fmt)
        return lambda x: tuple(t + 0.01 * t.abs().max() for t in run(x))

    monkeypatch.setattr(export, "_runner", off_by_a_bit)
    with pytest.raises(ConformerError, match="does not match PyTorch"):
        export_model(model, file_format="HF_HUB", output=tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "new.failed").iterdir()) == ["config.json", "model.safetensors"]


def test_unusable_hub_folders_are_one_line_errors(tmp_path):
    from conformer_vision.errors import CheckpointError

    foreign = tmp_path / "resnet"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"architecture": "resnet18", "num_classes": 10, "pretrained_cfg": {}}')
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, message in (
        (f"local-dir:{tmp_path / 'nowhere'}", "does not exist"),
        (str(empty), "is not a hub folder: it has no config.json"),
        (f"local-dir:{foreign}", "holds a timm 'resnet18' model, not a Conformer variant"),
    ):
        with pytest.raises(CheckpointError, match=message):
            open_predictor(name)
    from PIL import Image

    Image.new("RGB", (40, 40), (90, 120, 200)).save(tmp_path / "blue.png")
    rc, _, err = T.cli(
        "predict", str(tmp_path / "blue.png"), "--checkpoint", str(foreign), "--output", str(tmp_path / "p.json")
    )
    assert rc == 2 and "not a Conformer variant" in err and "Traceback" not in err
