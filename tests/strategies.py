"""Hypothesis strategies for mozagent's untrusted inputs (issue 18, "Bad input").

Shared by tests/test_fuzz.py: each strategy makes what a hostile or careless
writer of a znode, a Heat stack, a Procfile or a config file could produce,
both well-formed (to check round trips) and mutated (to check that only the
documented error comes out, naming where).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import strategies as st

from mozagent.desired.keys import MAX_INT, MIN_INT

# Scalars Hiera data can hold: JSON-shaped, integers in Puppet's 64-bit range.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=MIN_INT, max_value=MAX_INT),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)

# JSON-shaped values, a few levels deep: what a good znode holds.
plain_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=12), inner, max_size=5),
    ),
    max_leaves=20,
)

# Anything JSON can say, including integers beyond Puppet's range and odd keys.
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)

# YAML fragments that are known trouble: aliases, anchors, merge keys, tags,
# flow brackets, document markers, tabs, BOMs, interpolation.
YAML_TROUBLE = [
    "&a ", "*a", "<<: *a", "!!binary ", "!!set ", "!!python/object:os.system ", "!!int ",
    "!!float ", "!!timestamp ", "? ", ": ", "- ", "[", "]", "{", "}", ",", "#", "---\n",
    "...\n", "\t", "\ufeff", "%{lookup('x')}", "%YAML 1.1\n", "'", '"', "|\n", ">\n",
    "\x00", "\x85", "\u2028", "0x", "1" * 30, "~", "null", ".nan", ".inf", "2024-01-01",
    "\\", "\n  ", "&b [*a, *a, *a]",
]  # fmt: skip


def billion_laughs(levels: int, width: int) -> str:
    """The classic alias bomb: ``width ** levels`` strings from a few hundred bytes."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def nested(depth: int, flow: bool = True) -> str:
    """A value nested ``depth`` levels deep (flow lists, or block mappings)."""
    if flow:
        return "[" * depth + "1" + "]" * depth
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + "  " * depth + "1\n"


@st.composite
def mutated_text(draw: st.DrawFn, base: st.SearchStrategy[str] | str) -> str:
    """A text (or one drawn from ``base``), then a few edits: splice in trouble,
    delete a slice, duplicate a slice."""
    text = base if isinstance(base, str) else draw(base)
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "dup", "random"]))
        if op == "insert":
            text = text[:pos] + draw(st.sampled_from(YAML_TROUBLE)) + text[pos:]
        elif op == "delete":
            end = draw(st.integers(pos, min(len(text), pos + 8)))
            text = text[:pos] + text[end:]
        elif op == "dup":
            end = draw(st.integers(pos, min(len(text), pos + 16)))
            text = text[:end] + text[pos:end] + text[end:]
        else:
            text = text[:pos] + draw(st.text(max_size=4)) + text[pos:]
    return text


def yaml_text(value: Any) -> str:
    """One of the several ways an operator might write ``value``."""
    return yaml.safe_dump(value, default_flow_style=None, allow_unicode=True, sort_keys=True)


# A znode's text: good YAML or JSON of a plain value, mutated or not, or a bomb.
znode_texts = st.one_of(
    plain_values.map(yaml_text),
    plain_values.map(json.dumps),
    mutated_text(plain_values.map(yaml_text)),
    mutated_text(plain_values.map(json.dumps)),
    st.builds(billion_laughs, st.integers(1, 9), st.integers(1, 9)),
    st.builds(nested, st.integers(1, 300), st.booleans()),
    st.text(max_size=200),
)


@st.composite
def znode_bytes(draw: st.DrawFn) -> bytes:
    """A znode's raw bytes: text as UTF-8, or binary, or text with bytes broken."""
    kind = draw(st.sampled_from(["text", "binary", "broken"]))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    raw = draw(znode_texts).encode("utf-8", "surrogatepass")
    if kind == "broken" and raw:
        pos = draw(st.integers(0, len(raw) - 1))
        raw = (
            raw[:pos]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]))
            + raw[pos:]
        )
    return raw


# Names a znode might have under a layer: Hiera keys, near misses, hostile ones.
znode_names = st.one_of(
    st.from_regex(r"[a-z0-9_][a-z0-9_:.-]{0,20}", fullmatch=True),
    st.text(max_size=30),
    st.sampled_from(["", ".", "..", "a/b", "A", "-x", "x y", "é", "a\x00b", "::", "_"]),
)

INPUT_TYPES = ["String", "Number", "CommaDelimitedList", "Json", "Boolean"]


@st.composite
def heat_input(draw: st.DrawFn) -> Any:
    """One entry of a deployment's ``inputs``: each declared type, typed right or wrong."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even a mapping
    item: dict[str, Any] = {
        "name": draw(
            st.one_of(
                st.text(max_size=12),
                st.sampled_from(
                    ["deploy_signal_id", "deploy_signal_transport", "deploy_action",
                     "deploy_password", "deploy_signal_verb", "deploy_stack_id"]
                ),
                json_values,
            )
        ),
        "type": draw(st.one_of(st.sampled_from(INPUT_TYPES), st.text(max_size=8), json_values)),
    }  # fmt: skip
    value = draw(
        st.one_of(
            json_values,
            st.text(max_size=30),
            json_values.map(json.dumps),
            st.sampled_from(["8", "8.5", "a,b,,c", "", "true", "off", "[[[[", "1e999"]),
            st.builds(nested, st.integers(60, 200)),
        )
    )
    item[draw(st.sampled_from(["value", "default"]))] = value
    return item


@st.composite
def heat_deployment(draw: st.DrawFn) -> Any:
    """A deployment entry as Heat writes it, with any field dropped or mistyped."""
    if draw(st.integers(0, 14)) == 0:
        return draw(json_values)
    entry: dict[str, Any] = {
        "id": draw(st.one_of(st.uuids().map(str), st.text(max_size=200), json_values)),
        "name": draw(st.one_of(st.text(max_size=20), json_values)),
        "group": draw(
            st.one_of(st.sampled_from(["script", "puppet", "Heat::Ungrouped"]), json_values)
        ),
        "config": draw(st.one_of(st.text(max_size=60), json_values)),
        "inputs": draw(st.one_of(st.lists(heat_input(), max_size=6), json_values)),
        "outputs": draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": st.one_of(
                                st.text(max_size=10), st.sampled_from(["../x", "a/b", ""])
                            )
                        },
                        optional={"error_output": st.booleans()},
                    ),
                    max_size=3,
                ),
                json_values,
            )
        ),
        "options": draw(
            st.one_of(st.dictionaries(st.text(max_size=5), json_values, max_size=3), json_values)
        ),
        "creation_time": draw(st.one_of(st.text(max_size=30), json_values)),
    }
    for key in draw(st.lists(st.sampled_from(sorted(entry)), max_size=3)):
        entry.pop(key, None)
    return entry


heat_metadata = st.one_of(
    st.fixed_dictionaries(
        {"deployments": st.one_of(st.lists(heat_deployment(), max_size=6), json_values)},
        optional={"os-collect-config": json_values},
    ),
    json_values,
)
