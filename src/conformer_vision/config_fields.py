"""How a configuration field is declared and checked: :func:`opt` makes a dataclass field that
carries its one-line doc and its rules, :func:`coerce` turns a value given as text (YAML, a command
line) or as a Python value into the field's type, and :func:`check` applies the rules. ``config.py``
declares the options with them; nothing here knows a particular option.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from conformer_vision.errors import ConfigError, did_you_mean

__all__ = ["BadValue", "InvalidValues", "check", "choices_of", "coerce", "opt", "pairs"]


def pairs(text: str) -> dict[str, str]:
    """``"a=b c=d"`` as ``{"a": "b", "c": "d"}``: a spelling table written one pair per word."""
    return dict(pair.split("=") for pair in text.split())


def opt(default: Any, doc: str, **rules: Any) -> Any:
    """A field with its one-line ``doc`` and ``rules``: ``range`` as users read it ('> 0', '>= 1',
    'in [0, 1)'), for each element of a list; ``length`` of a list; ``choices`` (a callable for tables
    that live beside torch), matched case-insensitively; ``aliases`` ("other=choice ...") other
    spellings of a choice; ``rejected`` known but unsupported values, with why; ``check`` a function
    that returns the value to keep or raises :class:`BadValue`; ``spec_default`` the specification's
    default where it is not ours."""
    metadata = dict(help=doc, choices=(), rejected={}, range=None, length=None, check=None, spec_default=default)
    metadata.update(rules, aliases=pairs(rules.get("aliases", "")))
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class BadValue(ValueError):
    """One field's value is wrong (the message without the key)."""


class InvalidValues(ConfigError):
    """Problems as (key, message) pairs, each labelled with where its key came from."""

    def __init__(self, problems: list[tuple[str, str]], sources: Mapping[str, str] = {}, origin: str = "") -> None:
        self.problems = problems
        lines = [f"  - {k}: {msg}" + (f"  [{sources[k]}]" if k in sources else "") for k, msg in problems]
        super().__init__("\n".join([f"invalid configuration{f' ({origin})' if origin else ''}:", *lines]))

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return ConfigError, (str(self),)  # pickles as the plain public error


_TRUE, _FALSE, _NULL = {"true", "1", "yes", "y", "on"}, {"false", "0", "no", "n", "off"}, {"none", "null", "~"}
_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    return _NAMES.get(tp) or " or ".join(_describe(a) for a in typing.get_args(tp))


def coerce(value: Any, tp: Any) -> Any:
    """``value`` (from YAML, a dict or the command line's strings) as type ``tp``, or :class:`BadValue`.
    Strings are parsed; other values must have the type already (ints do for floats, 0/1 for bools)."""
    text = value.strip().lower() if isinstance(value, str) else None
    if typing.get_origin(tp) in (Union, types.UnionType):
        arms = typing.get_args(tp)
        if type(None) in arms and (value is None or text in _NULL):
            return None
        for arm in (a for a in arms if a is not type(None)):
            with contextlib.suppress(BadValue):
                return coerce(value, arm)
        raise BadValue(f"expected {_describe(tp)}, got {value!r}")
    if typing.get_origin(tp) is list:
        if isinstance(value, str):  # 0.9,0.999 or 0.9 0.999 or [0.9, 0.999]
            value = [v for v in re.split(r"[,\s]+", value.strip().removeprefix("[").removesuffix("]")) if v]
        if not isinstance(value, (list, tuple)):
            raise BadValue(f"expected {_describe(tp)} (e.g. [0.9, 0.999] or 0.9,0.999), got {value!r}")
        return [coerce(v, typing.get_args(tp)[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
            return bool(value)
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise BadValue(f"expected true/false (also yes/no, 1/0), got {value!r}")
    if tp is int:
        if type(value) is int or (text is not None and re.fullmatch(r"[+-]?\d+", text)):
            return int(value)
        raise BadValue(f"expected an integer, got {value!r}")
    if tp is float:
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            result = float(value)  # a string too: PyYAML reads 1e-8 (no dot) as one
        except ValueError:
            raise BadValue(f"expected a number, got {value!r}") from None
        if not math.isfinite(result):
            raise BadValue(f"expected a finite number, got {value!r}")
        return result
    if isinstance(value, str):
        return value
    hint = "; quote it in YAML" if isinstance(value, (int, float, bool)) else ""
    raise BadValue(f"expected a string, got {value!r} ({type(value).__name__}){hint}")


def choices_of(f: dataclasses.Field) -> tuple[str, ...]:
    """The field's choices (empty: any value of its type)."""
    choices = f.metadata["choices"]
    return tuple(choices() if callable(choices) else choices)


def _within(v: float, rng: str) -> bool:
    """Whether ``v`` meets ``rng`` as written for users: '> 0', '>= 1', 'in [0, 1)', 'in (0, 1]'."""
    if rng.startswith(">"):
        op, bound = rng.split()
        return v >= float(bound) if op == ">=" else v > float(bound)
    lo, hi = (float(x) for x in rng[4:-1].split(","))
    return (lo <= v if rng[3] == "[" else lo < v) and (v <= hi if rng[-1] == "]" else v < hi)


def check(f: dataclasses.Field, value: Any) -> Any:
    """``value`` (already of the field's type) after the field's rules: a choice in its canonical
    spelling, or the value that passed the field's own check, its length and its range."""
    md, choices = f.metadata, choices_of(f)
    if choices and isinstance(value, str):
        key = value.strip().lower()
        if key in md["rejected"]:
            raise BadValue(
                f"{value!r} is not supported here: {md['rejected'][key]}; valid choices: {', '.join(choices)}"
            )
        table = {c.lower(): c for c in choices} | {a.lower(): c for a, c in md["aliases"].items()}
        if key not in table:
            aliases = f" (aliases: {', '.join(md['aliases'])})" if md["aliases"] else ""
            hint = did_you_mean(value, table, n=3)
            raise BadValue(f"{value!r} is not a valid choice; valid choices: {', '.join(choices)}{aliases}{hint}")
        return table[key]
    if md["check"] is not None:
        value = md["check"](value)
    if isinstance(value, list) and md["length"] is not None and len(value) != md["length"]:
        raise BadValue(f"expected {md['length']} values, got {value!r}")
    for v in value if isinstance(value, list) else [value]:
        if md["range"] and not _within(v, md["range"]):
            raise BadValue(f"{v!r} is out of range; it must be {md['range']}")
    return value
