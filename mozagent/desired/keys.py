"""What a Hiera key and a znode value may be.

The rules live here, free of I/O, so the daemon (reading ZooKeeper) and the
operator CLI (writing to it) reject exactly the same things with the same words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

KEY_RE = re.compile(r"[a-z0-9_][a-z0-9_:.-]*")
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_VALUE_BYTES = 1024 * 1024
# ZooKeeper refuses a request over jute.maxbuffer (1 MiB by default): what one
# write of many keys (an import, a Heat deployment's inputs) may total, with margin.
MAX_TRANSACTION_BYTES = 1_000_000
# Bounds checked while the YAML is composed, before any value is built: a value
# in the global layer reaches every host, so one znode must not be able to cost
# a host its CPU, its memory or its stack. Puppet's Integer is 64-bit signed,
# so a larger integer could never be used anyway; 64 levels is far deeper than
# any Hiera data, and far from Python's recursion limit.
MAX_DEPTH = 64
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)


class InvalidValue(ValueError):
    """A znode value or a key that cannot be used; str() says what and why."""


def check_key(key: str) -> str:
    """Return the key, or raise InvalidValue saying why it is not a Hiera key."""
    if not key:
        raise InvalidValue("empty key")
    if key in (".", ".."):
        raise InvalidValue(f"key {key!r} is a path component, not a Hiera key")
    if "/" in key:
        raise InvalidValue(f"key {key!r} contains '/'")
    if not KEY_RE.fullmatch(key):
        raise InvalidValue(f"key {key!r} is not a Hiera key: it must match [a-z0-9_][a-z0-9_:.-]*")
    return key


def check_name(kind: str, name: str) -> str:
    """App and node names become znode path components: keep them boring."""
    if not name or name in (".", "..") or not NAME_RE.fullmatch(name):
        raise InvalidValue(
            f"{kind} name {name!r} is invalid: letters, digits, '.', '_' and '-' only"
        )
    return name


class OverLimit(yaml.MarkedYAMLError):
    """Valid YAML that is refused because it is over one of the bounds above."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, aliases and deep nesting.

    Duplicate keys hide an operator's mistake. Aliases are refused outright: a
    500-byte "billion laughs" value expands to gigabytes, and Hiera data never
    needs them (write the value twice, or use Hiera's own ``alias()``). Nesting
    is capped here, in the composer, because everything after it (the
    constructor, ``json.dumps``, the renderer) recurses.
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise OverLimit(
                None,
                None,
                f"YAML aliases (*{event.anchor}) are not allowed in Hiera data: "
                "write the value out",
                event.start_mark,
            )
        if self._depth >= MAX_DEPTH:
            raise OverLimit(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        # Python refuses to parse integers of over 4,300 digits with a bare
        # ValueError; anything over 20 digits is out of Puppet's range anyway.
        digits = node.value.replace("_", "").lstrip("+-")
        if len(digits) > 66:  # 0b + 64 binary digits is the longest in-range form
            raise OverLimit(
                None, None, "integer out of range (Puppet integers are 64-bit)", node.start_mark
            )
        value = super().construct_yaml_int(node)
        if not MIN_INT <= value <= MAX_INT:
            raise OverLimit(
                None, None, "integer out of range (Puppet integers are 64-bit)", node.start_mark
            )
        return value


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
# Dates stay strings: `2024-01-01` as a Python date could not be rendered as
# JSON facts or compared, and Hiera users mean the text anyway.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def check_plain_data(value: Any, where: str | None = None) -> Any:
    """Hiera data is JSON-shaped: refuse sets, binary and mixed-type keys.

    Such values parse as YAML but cannot be rendered deterministically, so they
    must be a per-key error, not a crash of the renderer.
    """
    try:
        json.dumps(value, sort_keys=True)
    except (TypeError, ValueError, RecursionError) as exc:
        prefix = f"{where}: " if where else ""
        raise InvalidValue(f"{prefix}value holds data Hiera cannot use ({exc})") from None
    return value


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where, without PyYAML's multi-line context dump."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, OverLimit) and mark is not None:
        return f"refused at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if mark is not None:
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"not valid YAML: {' '.join(str(problem).split())}"


def parse_yaml_text(text: str, where: str | None = None) -> Any:
    """Parse untrusted YAML into JSON-shaped data, or raise InvalidValue.

    Any failure is the value's fault, never the caller's: PyYAML and Python can
    raise more than YAMLError on hostile input (ValueError, RecursionError), and
    every one of them must become a per-key error, not a crash of the reader.
    """
    prefix = f"{where}: " if where else ""
    try:
        value = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise InvalidValue(prefix + describe_yaml_error(exc)) from None
    except Exception as exc:  # PyYAML's constructors fail in many ways
        # Found by tests/test_fuzz.py: a set as a mapping key (``? !!set {a}``)
        # is a TypeError, an explicit ``!!timestamp`` on a non-date an
        # AttributeError; ValueError, RecursionError and MemoryError also occur.
        raise InvalidValue(f"{prefix}value cannot be used: {type(exc).__name__}: {exc}") from None
    return check_plain_data(value, where)


def parse_value(raw: bytes | None, where: str | None = None) -> Any:
    """Decode a znode's bytes into the Hiera value, or raise InvalidValue.

    An empty znode is Hiera's undef (None): zkCli.sh creates such nodes and an
    operator may use one as a placeholder.
    """
    if raw is None or raw == b"":
        return None
    prefix = f"{where}: " if where else ""
    if len(raw) > MAX_VALUE_BYTES:
        raise InvalidValue(f"{prefix}value is {len(raw)} bytes, over the 1 MiB limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValue(
            f"{prefix}value is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    return parse_yaml_text(text, where)


# Characters YAML 1.1 counts as line breaks besides \n and \r.
_YAML_BREAKS = "\x85\u2028\u2029"


def encode_value(value: Any) -> bytes:
    """The canonical bytes the CLI writes: YAML that round-trips through parse_value."""
    if value is None:
        return b""
    text = yaml.safe_dump(value, default_flow_style=None, allow_unicode=True, sort_keys=True)
    if any(ch in text for ch in _YAML_BREAKS):
        # PyYAML writes these raw in a quoted scalar and its reader then folds
        # them as line breaks ('\x85' read back as ' '): escape everything.
        text = yaml.safe_dump(value, default_flow_style=None, sort_keys=True)
    if text.endswith("\n...\n"):
        text = text[: -len("...\n")]
    return text.encode("utf-8")


@dataclass(frozen=True)
class Entry:
    """One key as read from ZooKeeper: its raw bytes and the zxid that last changed it."""

    raw: bytes
    mzxid: int
    # Set when the znode exists but could not be read (e.g. no READ permission).
    error: str | None = None
    # Child znodes under a key are not data; counted so that they can be reported.
    children: int = 0


def same_value(data: bytes, value: Any) -> bool:
    """Whether a znode already holds ``value``, however it was spelt (JSON, other
    YAML formatting): writing the same data again must not rewrite the layer."""
    try:
        current = parse_value(data)
    except InvalidValue:
        return False
    return json.dumps(current, sort_keys=True) == json.dumps(value, sort_keys=True)
