"""Loading weights of every supported layout, and the clear errors for everything else."""

from __future__ import annotations

import os
import re

import pytest
import torch
from safetensors.torch import save_file

from conformer_vision.errors import CheckpointError
from conformer_vision.models import create_model, describe_state_dict
from conformer_vision.models.convert import detect_layout, to_reference_keys


def _reference_sd(num_classes: int = 10) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("conformer_mini_test", num_classes=num_classes)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _to_mmpretrain(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mmpretrain layout, written out independently of the loader's rename table."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("conv_cls_head", "trans_cls_head")):
            out["head." + k] = v
            continue
        if re.match(r"(trans_1|conv_trans_\d+\.trans_block)\.", k):
            k = k.replace(".norm1.", ".ln1.").replace(".norm2.", ".ln2.")
            k = k.replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1.")
        out["backbone." + k] = v
    return out


def _assert_same_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_authors_layouts_load(tmp_path):
    sd = _reference_sd()
    for i, obj in enumerate([sd, {"model": sd, "epoch": 3, "args": "ignored"}]):
        path = tmp_path / f"ref{i}.pth"
        torch.save(obj, path)
        _assert_same_weights(create_model("conformer_mini_test", 10, pretrained=str(path)), sd)


def test_mmpretrain_round_trip(tmp_path):
    sd = _reference_sd()
    mm = _to_mmpretrain(sd)
    assert detect_layout(mm) == "mmpretrain"
    assert to_reference_keys(mm) == sd
    path = tmp_path / "conformer-mini_8xb128_in1k.pth"
    torch.save({"state_dict": mm, "meta": {"epoch": 1}}, path)
    _assert_same_weights(create_model("conformer_mini_test", 10, pretrained=str(path)), sd)


def test_mindspore_names_map():
    sd = _reference_sd()
    ms = {}
    for k, v in sd.items():
        k = re.sub(r"^conv_trans_(\d+)\.", lambda m: f"conv_trans_blocks.{int(m.group(1)) - 2}.", k)
        if "bn" in k or "norm" in k or ".ln." in k:
            k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
            k = k.replace(".running_mean", ".moving_mean").replace(".running_var", ".moving_variance")
        ms[k] = v
    assert detect_layout(ms) == "mindspore"
    assert to_reference_keys(ms) == sd


def test_safetensors_round_trip(tmp_path):
    sd = _reference_sd()
    path = tmp_path / "mini.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    _assert_same_weights(create_model("conformer_mini_test", 10, pretrained=str(path)), sd)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"a": torch.zeros(100)}, str(path))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated"):
        create_model("conformer_mini_test", 10, pretrained=str(path))


def test_transfer_to_other_class_count_reinitialises_heads(tmp_path, caplog):
    sd = _reference_sd(num_classes=10)
    path = tmp_path / "ref.pth"
    torch.save(sd, path)
    model = create_model("conformer_mini_test", num_classes=4, pretrained=str(path))
    assert model.conv_cls_head.out_features == 4
    assert torch.equal(model.state_dict()["conv_1.conv1.weight"], sd["conv_1.conv1.weight"])
    assert "re-initialised both heads" in caplog.text


@pytest.mark.slow
def test_wrong_architecture_names_keys_and_the_file(tmp_path):
    big = create_model("conformer_tiny_patch16", num_classes=10).state_dict()
    path = tmp_path / "tiny.pth"
    torch.save(big, path)
    with pytest.raises(CheckpointError) as err:
        create_model("conformer_mini_test", 10, pretrained=str(path))
    msg = str(err.value)
    assert "mis-shaped" in msg and "conformer_tiny_patch16" in msg and str(path) in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = _reference_sd()
    sd.pop("trans_norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    with pytest.raises(
        CheckpointError, match=r"(?s)1 missing keys: trans_norm.weight.*1 unexpected keys: extra.weight"
    ):
        create_model("conformer_mini_test", 10, pretrained=str(path))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty (0 bytes)"),
        (b"hello, I am not a checkpoint\n", "is not a checkpoint: it is a text file (first line 'hello, I am not"),
        (None, "is truncated or corrupt: a PyTorch checkpoint whose content is incomplete or damaged"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_unreadable_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "model.pth"
    if content is None:
        torch.save(_reference_sd(), path)
        content = path.read_bytes()[: os.path.getsize(path) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(f"{path} {message}")):
        create_model("conformer_mini_test", 10, pretrained=str(path))


def test_non_checkpoint_objects(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        create_model("conformer_mini_test", 10, pretrained=str(path))
    torch.save({"step": 3}, path)
    with pytest.raises(CheckpointError, match="no tensors"):
        create_model("conformer_mini_test", 10, pretrained=str(path))
    with pytest.raises(CheckpointError, match="no such file"):
        create_model("conformer_mini_test", 10, pretrained=str(tmp_path / "missing.pth"))


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_has_no_effect(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        create_model("conformer_mini_test", 10, pretrained=str(path))
    assert not marker.exists()


def test_describe_state_dict():
    with torch.device("meta"):
        sd = create_model("conformer_small_patch32", num_classes=5).state_dict()
    text = describe_state_dict(sd)
    assert text.startswith("conformer_small_patch32") and "5 classes" in text
    assert describe_state_dict({}).startswith("no Conformer weights")


def test_load_pretrained_checks_a_built_model_against_a_self_describing_file(tmp_path, caplog):
    """``load_pretrained`` (``train --pretrained``) into a model built beforehand: another structure
    that the tensors cannot show (num_heads) is an error, other numerics are logged, an unknown
    ``model_args`` field (a newer writer) is an error, never dropped."""
    from conformer_vision.checkpoint import build_checkpoint
    from conformer_vision.models import load_pretrained

    ckpt = build_checkpoint(create_model("conformer_mini_test", num_classes=3, approximate_gelu=True))
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=re.escape("num_heads=4 (the file has 2) contradicts it")):
        load_pretrained(create_model("conformer_mini_test", num_classes=3, num_heads=4), path)
    exact_gelu = create_model("conformer_mini_test", num_classes=3)
    load_pretrained(exact_gelu, path)
    assert "was trained with approximate_gelu=True; using approximate_gelu=False" in caplog.text
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in exact_gelu.state_dict().items())
    ckpt["model_args"]["future_option"] = 1
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="future_option.*newer conformer-vision"):
        create_model("conformer_mini_test", pretrained=str(path))
