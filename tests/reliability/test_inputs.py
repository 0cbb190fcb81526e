"""Scenarios 14, 16 and 17 of docs/reliability.md: bad configuration (YAML and command line), the
ONNX export end to end, and prediction inputs that are not images or do not exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conformer_vision.checkpoint import load_model
from conformer_vision.data import Preprocess
from conformer_vision.data.images import load_rgb

from .conftest import assert_user_error, checkpoints, conformer_inprocess, load, noise_image, write_odd_images


def test_14_unknown_yaml_key_is_reported_before_any_data_or_model_work(tmp_path):
    """The data folder does not exist either: the config is checked first, so that is not the error."""
    config = tmp_path / "run.yaml"
    run = tmp_path / "run"
    config.write_text(
        f"arch: conformer_mini_test\nbatch_szie: 8\ndata_url: {tmp_path / 'no_such_data'}\n"
        f"ckpt_root_dir: {run / 'checkpoints'}\nsummary_root_dir: {run / 'summary'}\n"
    )
    result = conformer_inprocess("train", "--config", config, "--device_target", "cpu")
    suggestion = f"unknown option 'batch_szie' [{config}:2]: did you mean 'batch_size'?"
    assert_user_error(result, suggestion, "valid options: ")
    assert "no_such_data" not in result.stderr and not run.exists()


@pytest.mark.parametrize(
    "yaml_text, cli, expected",
    [
        ("epochs: ten\n", [], "epochs: expected an integer, got 'ten'  [{config}:1]"),
        ("base_lr: -1\n", [], "base_lr: -1.0 is out of range; it must be > 0  [{config}:1]"),
        ("", ["--batch_size", "abc"], "batch_size: expected an integer, got 'abc'"),
        ("", ["--drop_path", "1.5"], "drop_path: 1.5 is out of range; it must be in [0, 1)"),
        ("", ["--optimizer", "adamx"], "'adamx' is not a valid choice; valid choices: adamw, sgd"),
        ("", ["--bsae_lr", "0.1"], "unknown option 'bsae_lr' [command line]: did you mean 'base_lr'?"),
    ],
    ids=["yaml-type", "yaml-range", "cli-type", "cli-range", "cli-choice", "cli-unknown"],
)
def test_14_wrong_types_ranges_and_names_are_clear_errors(tmp_path, yaml_text, cli, expected):
    config = tmp_path / "run.yaml"
    config.write_text(f"{yaml_text}data_url: {tmp_path / 'no_such_data'}\nckpt_root_dir: {tmp_path / 'run' / 'c'}\n")
    result = conformer_inprocess("train", "--config", config, *cli)
    assert_user_error(result, expected.format(config=config))
    assert "no_such_data" not in result.stderr and not (tmp_path / "run").exists()


def _real_photos() -> list[Path]:
    """Photographs and graphics shipped with matplotlib (a declared dependency): a JPEG portrait
    and two RGBA PNGs."""
    from matplotlib import cbook

    names = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
    return [Path(cbook.get_sample_data(name, asfileobj=False)) for name in names]


@pytest.mark.slow
def test_16_onnx_export_is_valid_dynamic_and_matches_pytorch_on_real_photos(reference_run, onnx_model, tmp_path):
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(onnx_model), full_check=True)
    dims = onnx.load(str(onnx_model)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    ckpt = checkpoints(reference_run)[-1]
    model = load_model(ckpt).model
    photos = [*_real_photos(), *write_odd_images(tmp_path / "odd").values()]
    for size in ((32, 32), (48, 40)):  # the trained size and another one (dynamic spatial size)
        pre = Preprocess.from_dict({**load(ckpt)["preprocess"], "input_size": list(size)})
        x = torch.stack([pre.eval_transform()(load_rgb(p)) for p in photos])  # (8, 3, H, W)
        for batch in (x[:1], x[:3], x):
            with torch.no_grad():
                expected = model(batch)  # (B, 2) fused logits
            got = torch.from_numpy(session.run(["logits"], {"input": batch.numpy()})[0])
            scale = max(1.0, float(expected.abs().max()))
            assert float((got - expected).abs().max()) <= 1e-4 * scale, (size, len(batch))
            assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.slow
def test_16_eval_of_the_onnx_export_reports_the_checkpoint_metrics(dataset, reference_run, onnx_model, tmp_path):
    metrics = {}
    for name, model in (("ckpt", checkpoints(reference_run)[-1]), ("onnx", onnx_model)):
        out = tmp_path / f"{name}.json"
        result = conformer_inprocess(
            "eval",
            "--checkpoint",
            model,
            "--data_url",
            dataset,
            "--val_dir",
            "val",
            "--device_target",
            "cpu",
            "--num_parallel_workers",
            "0",
            "--output",
            out,
        )
        assert result.rc == 0, result.output[-3000:]
        metrics[name] = json.loads(out.read_text())
    assert metrics["onnx"]["Top1-Acc"] == metrics["ckpt"]["Top1-Acc"]
    assert metrics["onnx"]["num_samples"] == metrics["ckpt"]["num_samples"] == 8
    assert abs(metrics["onnx"]["Loss"] - metrics["ckpt"]["Loss"]) < 1e-4


@pytest.mark.slow
def test_17_predict_reports_unreadable_and_missing_inputs_and_predicts_the_rest(reference_run, tmp_path):
    good = [tmp_path / "a.png", tmp_path / "b.jpg"]
    noise_image(1).save(good[0])
    noise_image(2).save(good[1])
    notes = tmp_path / "notes.jpg"
    notes.write_text("a text file named .jpg\n")
    readme = tmp_path / "readme.txt"
    readme.write_text("not an image at all\n")
    missing = tmp_path / "gone.jpg"
    out = tmp_path / "predictions.json"
    result = conformer_inprocess(
        "predict",
        good[0],
        notes,
        missing,
        readme,
        good[1],
        "--checkpoint",
        checkpoints(reference_run)[-1],
        "--output",
        out,
    )
    assert result.rc == 1, result.output[-3000:]
    assert "Traceback" not in result.output
    doc, errors = json.loads(out.read_text()), json.loads((tmp_path / "predictions.errors.json").read_text())
    assert {k: type(v) for k, v in doc.items()} == {str(good[0]): int, str(good[1]): int}  # the spec's format only
    assert set(errors) == {str(notes), str(missing), str(readme)}
    assert "not a recognised image format" in errors[str(notes)]
    assert "does not exist" in errors[str(missing)]
    for path in (notes, missing, readme):
        assert f"cannot read {path}" in result.stderr
    assert f"{good[0]} (class: {doc[str(good[0])]})" in result.stdout
