import pytest

from conformer_vision.errors import ConfigError
from conformer_vision.paths import check_output_dir, check_output_file, free_bytes, nearest_existing


def test_creatable_and_existing_folders_pass_and_nothing_is_left_behind(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b", "ckpt_root_dir") == tmp_path / "a" / "b"
    assert check_output_file(tmp_path / "x" / "model.onnx", "--output") == tmp_path / "x" / "model.onnx"
    assert list(tmp_path.iterdir()) == []  # no folder created, the probe file removed
    assert nearest_existing(tmp_path / "a" / "b") == tmp_path
    assert free_bytes(tmp_path / "a") > 0


def test_a_regular_file_on_the_way_is_named(tmp_path):
    (tmp_path / "some_file.yaml").write_text("x: 1\n")
    with pytest.raises(
        ConfigError, match=r"--output .*some_file.yaml/out.onnx cannot be created: .*some_file.yaml is a file"
    ):
        check_output_file(tmp_path / "some_file.yaml" / "out.onnx", "--output")
    with pytest.raises(ConfigError, match="ckpt_root_dir .* is a file, not a folder"):
        check_output_dir(tmp_path / "some_file.yaml" / "ck", "ckpt_root_dir")
    with pytest.raises(ConfigError, match="is a folder; give a file name"):
        check_output_file(tmp_path, "--output")


def test_pseudo_and_read_only_file_systems_are_refused():
    with pytest.raises(ConfigError, match=r"--output /proc/x.onnx cannot be written"):
        check_output_file("/proc/x.onnx", "--output")
    with pytest.raises(ConfigError, match=r"ckpt_root_dir /proc/ck cannot be written"):
        check_output_dir("/proc/ck", "ckpt_root_dir")
