"""``conformer_vision.config_fields``: a field's doc and rules, and how a value is coerced and checked
(the options themselves are tested through ``Config`` in test_config.py)."""

from __future__ import annotations

import dataclasses

import pytest

from conformer_vision.config_fields import BadValue, InvalidValues, check, coerce, opt, pairs
from conformer_vision.errors import ConfigError, did_you_mean


def _upper(value: str) -> str:
    if value == "bad":
        raise BadValue("'bad' is refused by its own check")
    return value.upper()


@dataclasses.dataclass
class Example:
    ratio: float = opt(0.5, "A fraction.", range="in [0, 1)")
    sizes: list[int] = opt([1, 2], "Two sizes.", range=">= 1", length=2)
    mode: str = opt(
        "fast", "A mode.", choices=("fast", "slow"), aliases="quick=fast", rejected={"warp": "no warp here"}
    )
    tag: str = opt("x", "A tag.", check=_upper, spec_default="y")


FIELDS = {f.name: f for f in dataclasses.fields(Example)}


def test_a_field_carries_its_doc_rules_and_defaults():
    md = FIELDS["mode"].metadata
    assert md["help"] == "A mode." and md["aliases"] == {"quick": "fast"} and md["spec_default"] == "fast"
    assert FIELDS["tag"].metadata["spec_default"] == "y"
    assert Example().sizes == [1, 2] and Example().sizes is not Example().sizes  # a fresh list each time
    assert pairs("a=b c=d") == {"a": "b", "c": "d"}


@pytest.mark.parametrize(
    "value, tp, expected",
    [
        ("3", int, 3),
        (" -2 ", int, -2),
        ("1e-8", float, 1e-8),
        (2, float, 2.0),
        ("Yes", bool, True),
        (0, bool, False),
        ("0.9, 0.999", list[float], [0.9, 0.999]),
        ("[2 3]", list[int], [2, 3]),
        ("null", float | None, None),
        ("7", int | list[int], 7),
        ("7,8", int | list[int], [7, 8]),
        ("ft", int | str, "ft"),
    ],
)
def test_coerce_parses_text_and_keeps_typed_values(value, tp, expected):
    assert coerce(value, tp) == expected


@pytest.mark.parametrize(
    "value, tp, message",
    [
        (2.5, int, "expected an integer, got 2.5"),
        (True, int, "expected an integer, got True"),
        ("maybe", bool, "expected true/false (also yes/no, 1/0), got 'maybe'"),
        (float("inf"), float, "expected a finite number"),
        (2012, str, "expected a string, got 2012 (int); quote it in YAML"),
        (0.9, list[float], "expected a list of numbers (e.g. [0.9, 0.999] or 0.9,0.999), got 0.9"),
        ("fast", float | None, "expected a number or null, got 'fast'"),
    ],
)
def test_coerce_refuses_with_what_it_expected(value, tp, message):
    with pytest.raises(BadValue) as info:
        coerce(value, tp)
    assert message in str(info.value)


def test_check_applies_choices_own_check_length_and_range():
    assert check(FIELDS["mode"], "QUICK") == "fast" and check(FIELDS["tag"], "ok") == "OK"
    for name, value, message in [
        (
            "mode",
            "slwo",
            "'slwo' is not a valid choice; valid choices: fast, slow (aliases: quick); did you mean 'slow'?",
        ),
        ("mode", "Warp", "'Warp' is not supported here: no warp here; valid choices: fast, slow"),
        ("tag", "bad", "'bad' is refused by its own check"),
        ("sizes", [1], "expected 2 values, got [1]"),
        ("sizes", [1, 0], "0 is out of range; it must be >= 1"),
        ("ratio", 1.0, "1.0 is out of range; it must be in [0, 1)"),
    ]:
        with pytest.raises(BadValue) as info:
            check(FIELDS[name], value)
        assert str(info.value) == message


def test_problems_are_one_config_error_naming_each_source():
    error = InvalidValues([("ratio", "1.0 is out of range")], {"ratio": "run.yaml:3"}, "run.yaml")
    assert isinstance(error, ConfigError)
    assert str(error) == "invalid configuration (run.yaml):\n  - ratio: 1.0 is out of range  [run.yaml:3]"


def test_did_you_mean():
    assert did_you_mean("slwo", ["fast", "slow"]) == "; did you mean 'slow'?"
    assert did_you_mean("zzz", ["fast", "slow"]) == ""
