"""The key and value rules shared by the agent and the operator CLI."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mozagent.desired.keys import (
    MAX_VALUE_BYTES,
    InvalidValue,
    check_key,
    encode_value,
    parse_value,
)
from tests.poison import POISON


@pytest.mark.parametrize("key", ["greeting", "apache::vhost_name", "a.b-c", "_x", "0port"])
def test_valid_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "empty key"),
        ("..", "path component"),
        (".", "path component"),
        ("a/b", "contains '/'"),
        ("Upper", "not a Hiera key"),
        ("-x", "not a Hiera key"),
        ("sp ace", "not a Hiera key"),
        ("ünï", "not a Hiera key"),
    ],
)
def test_invalid_keys(key: str, why: str) -> None:
    with pytest.raises(InvalidValue, match=why):
        check_key(key)


def test_values_are_yaml_and_json() -> None:
    assert parse_value(b"8080") == 8080
    assert parse_value(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_value(b"hosts:\n  - a\n  - b\n") == {"hosts": ["a", "b"]}
    assert parse_value(b"") is None


@pytest.mark.parametrize(
    "value",
    [
        "hello",
        3,
        2.5,
        True,
        None,
        [1, "a"],
        {"k": {"n": [1]}},
        "yes",
        "8080",
        "multi\nline",
        "ünïcødé",
    ],
)
def test_encode_round_trips(value: object) -> None:
    assert parse_value(encode_value(value)) == value


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"a: [1", "not valid YAML at line 1"),
        (b"a: 1\na: 2\n", "duplicate key 'a'"),
        (b"x" * (MAX_VALUE_BYTES + 1), "over the 1 MiB"),
        (b"!!python/object:os.system x", "not valid YAML"),
    ],
)
def test_bad_values_say_why(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidValue, match=why):
        parse_value(raw, "/mozagent/apps/shop/data/k")


def test_dates_stay_strings() -> None:
    assert parse_value(b"2024-01-01") == "2024-01-01"
    assert parse_value(b"expires: 2024-01-01 10:00:00") == {"expires": "2024-01-01 10:00:00"}


@pytest.mark.parametrize("raw", [b"!!binary aGVsbG8=", b"!!set {a, b}", b"{1: a, b: c}"])
def test_values_hiera_cannot_hold_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidValue, match="value holds data Hiera cannot use"):
        parse_value(raw, "k")


@pytest.mark.parametrize(("name", "raw", "why"), POISON, ids=[p[0] for p in POISON])
def test_hostile_values_are_refused_quickly_with_a_reason(name: str, raw: bytes, why: str) -> None:
    with pytest.raises(InvalidValue, match=why) as info:
        parse_value(raw, "/mozagent/global/data/x")
    assert str(info.value).startswith("/mozagent/global/data/x: ")


def test_integers_in_puppets_range_are_kept() -> None:
    assert parse_value(b"9223372036854775807") == 2**63 - 1
    assert parse_value(b"-9223372036854775808") == -(2**63)
    assert parse_value(b"1_000") == 1000
    assert parse_value(b"[" * 63 + b"]" * 63) is not None  # 63 levels: still fine


def test_anchors_without_aliases_are_fine() -> None:
    assert parse_value(b"a: &x 1\nb: 2\n") == {"a": 1, "b": 2}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_any_bytes_give_a_value_or_invalid_value(raw: bytes) -> None:
    """Fuzz: no input may raise anything but InvalidValue (a crash stops a host)."""
    try:
        value = parse_value(raw, "/x")
    except InvalidValue:
        return
    json.dumps(value)  # whatever is accepted can be rendered


_yaml_alphabet = st.sampled_from(
    [*"[]{}:,-&*!|>'\"#%@` \n\t0123456789abcxyz.+_<=?~", "\u00e9", "\x00", "\ufeff"]
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(_yaml_alphabet, max_size=400))
def test_yaml_shaped_text_gives_a_value_or_invalid_value(text: str) -> None:
    try:
        value = parse_value(text.encode("utf-8"), "/x")
    except InvalidValue:
        return
    json.dumps(value)
