"""``conformer_vision.cli._common``: the checks the model commands (``eval``, ``eval-onnx``,
``predict``, ``export``) share, before any model or data is read."""

from __future__ import annotations

import pytest

from conformer_vision.cli._common import check_counts, config_file_keys, request_levels
from conformer_vision.errors import ConfigError


@pytest.mark.parametrize(
    "counts, message",
    [
        ({"batch_size": (0, 1)}, "--batch_size must be >= 1, got 0"),
        ({"workers": (-1, 0)}, "--workers must be >= 0 (0 = in this process), got -1"),
        ({"batch_size": (4, 1), "topk": (-2, 1), "prefetch": (0, 1)}, "--topk must be >= 1, got -2"),  # the first
    ],
)
def test_a_count_below_its_minimum_names_the_option(counts, message):
    with pytest.raises(ConfigError) as info:
        check_counts(**counts)
    assert str(info.value) == message


def test_counts_at_their_minimum_or_not_given_pass():
    check_counts(batch_size=(1, 1), workers=(0, 0), topk=(None, 1))


def test_where_an_option_came_from_decides_what_a_contradiction_is(tmp_path):
    """Given on the command line: an error; set by the config file: a warning; a default: ignored."""
    config = tmp_path / "run.yaml"
    config.write_text("num_classes: 10\nlr: 0.1\n")
    in_file = config_file_keys(str(config))
    assert in_file == {"num_classes", "base_lr"}  # aliases are read as their option
    levels, sources = request_levels({"arch"}, in_file, str(config))
    assert levels == {"arch": "error", "num_classes": "warn"}
    assert sources == {"arch": "command line", "num_classes": f"config file {config}"}
    levels, sources = request_levels(set(), set(), None)
    assert levels == {"arch": "ignore", "num_classes": "ignore"} and set(sources.values()) == {"default"}
    assert config_file_keys(None) == set()
