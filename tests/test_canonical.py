"""Tests of canonical JSON (harness.canonical), the one text of a value that run keys,
environment ids and the store's JSON columns share."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from harness.api import MeasureSettings
from harness.canonical import canonical_json, describe


def test_canonical_json() -> None:
    assert canonical_json({"b": [1, 2.5, None], "a": {"y": True, "x": "é"}}) == (
        '{"a":{"x":"é","y":true},"b":[1,2.5,null]}'
    )
    assert canonical_json(0.1 + 0.2) == "0.30000000000000004"
    assert canonical_json(-0.0) == "0.0"
    assert canonical_json(float("inf")) == '"inf"'
    assert canonical_json(float("nan")) == '"nan"'
    assert canonical_json((1, 2)) == canonical_json([1, 2])
    assert canonical_json(Path("/a/b")) == '"/a/b"'
    assert canonical_json(MeasureSettings()) == canonical_json(
        MeasureSettings().model_dump(mode="json")
    )
    with pytest.raises(TypeError, match="mapping keys must be strings, got int 1"):
        canonical_json({1: "x"})
    with pytest.raises(TypeError, match="cannot turn object"):
        canonical_json(object())


def test_default_replaces_what_canonical_json_cannot_hold() -> None:
    day = datetime.date(2024, 5, 1)
    assert canonical_json({"day": day, "n": [{1, 2}]}, default=str) == (
        '{"day":"2024-05-01","n":["{1, 2}"]}'
    )
    # what has a canonical text keeps it; default is only asked about the rest
    assert canonical_json({"x": -0.0, "p": Path("/p")}, default=repr) == '{"p":"/p","x":0.0}'
    # and its answer is made canonical in turn
    assert canonical_json(day, default=lambda value: {"b": 1.0, "a": (value.year,)}) == (
        '{"a":[2024],"b":1.0}'
    )
    with pytest.raises(TypeError, match="mapping keys must be strings"):
        canonical_json({1: "x"}, default=str)


@pytest.mark.parametrize(("value", "text"), [
    (None, "null"),
    (True, "boolean true"),
    (4, "int 4"),
    (2.5, "float 2.5"),
    ("", "an empty string"),
    ("x", "string 'x'"),
    ({}, "an empty mapping"),
    ([1], "a list"),
    (("a",) * 40, "tuple (" + "'a', " * 11 + "'a'…"),  # 60 characters of repr at most
])
def test_describe(value: object, text: str) -> None:
    assert describe(value) == text
