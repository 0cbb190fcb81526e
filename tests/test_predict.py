"""predict + `conformer predict` on real image files: odd modes, broken files, checkpoint vs ONNX."""

from __future__ import annotations

import json
import re
from pathlib import Path

import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)
import pytest
import torch

from conformer_vision.data import load_rgb, preprocess_image
from conformer_vision.errors import ConformerError, DataError
from conformer_vision.predict import collect_images, errors_path, predict_paths, predictions_json, write_json
from conformer_vision.runtime import open_predictor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_predict_paths_batches_equal_single_images(base):
    """Batched inference of the odd-mode photos equals one image at a time through the same
    decode + preprocess functions."""
    predictor = open_predictor(T.checkpoint(base))
    files = collect_images([T.photos(base)])
    assert len(files) == 7
    results, errors = predict_paths(predictor, files, topk=3, batch_size=4)
    assert not errors and list(results) == [str(f) for f in files]
    for f in files:
        x = preprocess_image(load_rgb(f), predictor.preprocess)[None]
        probs = predictor.fused(x).double().softmax(1)[0]
        best = results[str(f)]
        assert [p["class"] for p in best] == probs.topk(3).indices.tolist()
        assert best[0]["prob"] == pytest.approx(float(probs.max()), abs=1e-6)
        assert best[0]["name"] == predictor.class_names[best[0]["class"]]
        assert best[0]["prob"] >= best[1]["prob"] >= best[2]["prob"]


def test_predictions_json_shapes():
    results = {"a.png": [{"class": 2, "name": "c", "prob": 0.7}, {"class": 0, "name": "a", "prob": 0.2}]}
    assert predictions_json(results) == {"a.png": 2}
    assert predictions_json(results, topk=1) == {"a.png": results["a.png"][:1]}
    assert errors_path("out/predictions.json") == Path("out/predictions.errors.json")
    assert errors_path("preds") == Path("preds.errors.json")


def test_write_json_replaces_atomically_and_leaves_no_temporary_file_on_failure(tmp_path):
    target = tmp_path / "p.json"
    target.write_text("{}")
    write_json({"a.png": 1}, target)
    assert json.loads(target.read_text()) == {"a.png": 1}
    (tmp_path / "folder.json").mkdir()  # the final rename fails: nothing replaced, no temp left
    with pytest.raises(ConformerError, match="could not write .*folder.json"):
        write_json({"a.png": 1}, tmp_path / "folder.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.json", "p.json"]


@pytest.mark.slow
def test_predict_cli_folder_checkpoint_and_onnx_write_the_same_json(base, tmp_path):
    photos = T.photos(base)
    rc, out, err = T.cli(
        "predict",
        str(photos),
        "--checkpoint",
        str(T.checkpoint(base)),
        "--output",
        str(tmp_path / "ckpt.json"),
        "--batch_size",
        "3",
    )
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 7 and all(re.fullmatch(r".+\.(jpg|png) \(class: \d+\)", line) for line in lines)
    plain = json.loads((tmp_path / "ckpt.json").read_text())
    assert lines[0] == f"{photos / 'a_rgb.jpg'} (class: {plain[str(photos / 'a_rgb.jpg')]})"
    assert all(isinstance(v, int) for v in plain.values())

    docs = {}
    for name, model in (("ckpt", T.checkpoint(base)), ("onnx", T.onnx_export(base))):
        rc, _, err = T.cli(
            "predict",
            str(photos),
            "--checkpoint",
            str(model),
            "--topk",
            "3",
            "--output",
            str(tmp_path / f"{name}_top3.json"),
        )
        assert rc == 0, err
        docs[name] = json.loads((tmp_path / f"{name}_top3.json").read_text())
    onnx_path = str(T.onnx_export(base))
    rc, _, _ = T.cli("predict", str(photos), "--checkpoint", onnx_path, "--output", str(tmp_path / "o.json"))
    assert rc == 0 and json.loads((tmp_path / "o.json").read_text()) == plain
    assert docs["ckpt"].keys() == docs["onnx"].keys() == plain.keys()
    for path, top in docs["ckpt"].items():
        other = docs["onnx"][path]
        assert [p["class"] for p in top] == [p["class"] for p in other]
        assert [p["name"] for p in top] == [p["name"] for p in other]
        assert max(abs(a["prob"] - b["prob"]) for a, b in zip(top, other)) < 1e-3
        assert top[0]["class"] == plain[path]


@pytest.mark.slow
def test_predict_with_autocast(base, tmp_path):
    """--amp bf16 / fp16 run the checkpoint under autocast: the same classes as float32 (top-3
    probabilities within autocast rounding); ONNX files refuse it with a clear message."""
    photos, ckpt = T.photos(base), str(T.checkpoint(base))
    docs = {}
    for amp in ("O0", "bf16", "fp16"):
        rc, _, err = T.cli(
            "predict",
            str(photos),
            "--checkpoint",
            ckpt,
            "--topk",
            "3",
            "--amp",
            amp,
            "--output",
            str(tmp_path / f"{amp}.json"),
        )
        assert rc == 0, err
        docs[amp] = json.loads((tmp_path / f"{amp}.json").read_text())
    # bf16 keeps 8 bits of mantissa: on the near-tie photo (top-3 0.35 / 0.34 / 0.16) its third
    # probability moves by 0.06 on a Xeon; fp16 (11 bits) stays within 0.005.
    for amp, tolerance in (("bf16", 0.1), ("fp16", 0.01)):
        for path, top in docs["O0"].items():
            other = {p["class"]: p["prob"] for p in docs[amp][path]}
            assert top[0]["class"] == docs[amp][path][0]["class"] or top[0]["prob"] - top[1]["prob"] < tolerance
            assert all(abs(p["prob"] - other[p["class"]]) < tolerance for p in top if p["class"] in other)
    rc, _, err = T.cli("predict", str(photos), "--checkpoint", str(T.onnx_export(base)), "--amp", "bf16")
    assert rc == 2 and "applies to checkpoints run by PyTorch" in err and "Traceback" not in err


@pytest.mark.slow
def test_unreadable_files_are_reported_and_the_rest_predicted(base, tmp_path):
    folder = T.broken_folder(tmp_path)
    out_json = tmp_path / "p.json"
    rc, out, err = T.cli("predict", str(folder), "--checkpoint", str(T.checkpoint(base)), "--output", str(out_json))
    assert rc == 1
    doc, errors = json.loads(out_json.read_text()), json.loads((tmp_path / "p.errors.json").read_text())
    assert set(doc) == {str(folder / "good1.png"), str(folder / "good2.jpg")}
    assert set(errors) == {str(folder / "truncated.jpg"), str(folder / "notes.jpg")}
    assert "not a recognised image format" in errors[str(folder / "notes.jpg")]
    assert f"cannot read {folder / 'truncated.jpg'}" in err and len(out.strip().splitlines()) == 2
    # a single file that is not an image: an error entry, exit status 1, no prediction
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    rc, out, err = T.cli("predict", str(text), "--checkpoint", str(T.checkpoint(base)), "--output", str(out_json))
    assert rc == 1 and json.loads(out_json.read_text()) == {}
    assert json.loads((tmp_path / "p.errors.json").read_text()) == {str(text): "not a recognised image format"}
    assert f"replaced the existing {out_json} and {tmp_path / 'p.errors.json'}" in err


@pytest.mark.slow
def test_predict_usage_errors(base, tmp_path):
    rc, _, err = T.cli("predict", str(tmp_path / "missing"), "--checkpoint", str(T.checkpoint(base)))
    assert rc == 2 and "no such file or folder" in err and "Traceback" not in err
    good = T.photos(base) / "a_rgb.jpg"  # one missing path among existing ones: an error entry, exit 1
    rc, _, err = T.cli(
        "predict",
        str(good),
        str(tmp_path / "gone.jpg"),
        "--checkpoint",
        str(T.checkpoint(base)),
        "--output",
        str(tmp_path / "some.json"),
    )
    doc = json.loads((tmp_path / "some.json").read_text())
    errors = json.loads((tmp_path / "some.errors.json").read_text())
    assert rc == 1 and list(doc) == [str(good)] and errors == {str(tmp_path / "gone.jpg"): "file does not exist"}
    (tmp_path / "empty").mkdir()
    rc, _, err = T.cli("predict", str(tmp_path / "empty"), "--checkpoint", str(T.checkpoint(base)))
    assert rc == 2 and "no image files" in err
    with pytest.raises(DataError):
        collect_images([tmp_path / "missing"])
    bare = tmp_path / "authors.pth"  # a foreign state dict: needs --arch
    model, _, _ = T.trained_model(base)
    torch.save({"model": model.state_dict()}, bare)
    rc, _, err = T.cli("predict", str(T.photos(base)), "--checkpoint", str(bare), "--output", str(tmp_path / "x.json"))
    assert rc == 2 and "--arch" in err and "Traceback" not in err
    rc, out, err = T.cli(
        "predict",
        str(T.photos(base) / "a_rgb.jpg"),
        "--checkpoint",
        str(bare),
        "--arch",
        "conformer_mini_test",
        "--output",
        str(tmp_path / "x.json"),
    )
    assert rc == 0 and out.startswith(str(T.photos(base) / "a_rgb.jpg"))
    assert isinstance(json.loads((tmp_path / "x.json").read_text())[str(T.photos(base) / "a_rgb.jpg")], int)
    rc, _, err = T.cli("predict", str(T.photos(base)), "--checkpoint", str(T.checkpoint(base)), "--topk", "0")
    assert rc == 2 and "topk" in err


@pytest.mark.slow
def test_recursive_folders(base, tmp_path):
    (tmp_path / "top" / "sub").mkdir(parents=True)
    for name in ("top/a.png", "top/sub/b.jpg"):
        load_rgb(T.photos(base) / "b_shapes.png").save(tmp_path / name)
    assert len(collect_images([tmp_path / "top"])) == 1
    assert len(collect_images([tmp_path / "top"], recursive=True)) == 2


@pytest.mark.slow
def test_real_entry_point_exit_status(base, tmp_path):
    """`python -m conformer_vision predict` in its own process: status 1 with a broken file."""
    folder = T.broken_folder(tmp_path)
    proc = T.cli_process(
        "predict", str(folder), "--checkpoint", str(T.checkpoint(base)), "--output", str(tmp_path / "p.json")
    )
    assert proc.returncode == 1, proc.stderr
    assert "(class: " in proc.stdout and "cannot read" in proc.stderr
