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


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys: they hide an operator's mistake."""


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
    except (TypeError, ValueError) as exc:
        prefix = f"{where}: " if where else ""
        raise InvalidValue(f"{prefix}value holds data Hiera cannot use ({exc})") from None
    return value


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where, without PyYAML's multi-line context dump."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"not valid YAML: {' '.join(str(problem).split())}"


def parse_yaml_text(text: str, where: str | None = None) -> Any:
    try:
        value = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        message = describe_yaml_error(exc)
        raise InvalidValue(f"{where}: {message}" if where else message) from None
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


def encode_value(value: Any) -> bytes:
    """The canonical bytes the CLI writes: YAML that round-trips through parse_value."""
    if value is None:
        return b""
    text = yaml.safe_dump(value, default_flow_style=None, allow_unicode=True, sort_keys=True)
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
