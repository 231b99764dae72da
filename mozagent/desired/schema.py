"""How the documents that cross process boundaries are versioned and read.

Agents, the CLI and older or newer releases of both meet in ZooKeeper and in
``status.json``, so every such document carries a ``schema`` number and is
read by one typed definition (``to_doc()`` to write it, ``parse()`` to read
it). Two rules, by who writes the document:

* **Reports** (a host's presence, an order's result, ``status.json``) are
  written by agents and read by tools that may be older or newer. A reader
  takes the fields it knows and ignores the rest, whatever the schema: a newer
  schema only ever *adds* fields (a field whose meaning changes gets a new
  name), so an old ``mozagent fleet`` keeps working against new agents.
* **Commands** (a release znode, an order) are written by operators and
  obeyed by agents. A key the agent does not know is refused (a typo must not
  deploy the wrong thing quietly), and so is a schema newer than the agent's:
  a command it does not fully understand is not carried out half-way.

A document without ``schema`` was written before schemas existed: it reads as
schema 1, which is what those documents were.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mozagent.desired.keys import InvalidValue

SCHEMA_KEY = "schema"
MAX_TEXT = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: Any, limit: int = 200) -> str:
    """Untrusted text made safe for a terminal: a host could otherwise put
    escape sequences on an operator's screen."""
    shown = _CONTROL.sub("?", str(text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


@dataclass(frozen=True)
class Unreadable:
    """A document that could not be understood: shown with why, counted as a problem."""

    reason: str


def schema_of(doc: dict[str, Any], what: str) -> int:
    """The document's schema number (1 when it has none), or why it has none usable."""
    value = doc.get(SCHEMA_KEY, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValue(f"{what}: schema is not a positive integer")
    return value


def obeyable(doc: dict[str, Any], what: str, supported: int) -> None:
    """Refuse a command written for a newer agent (see the module's rules)."""
    version = schema_of(doc, what)
    if version > supported:
        raise InvalidValue(
            f"{what} has schema {version}, written by a newer mozagent; this agent "
            f"understands schema {supported} and up to it only: upgrade the agent"
        )


class Fields:
    """Typed access to an untrusted mapping; every mismatch names the field.
    Fields it is not asked for are not looked at: that is what makes a report
    from a newer agent readable."""

    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, dict):
            raise InvalidValue(f"{where} is not a mapping")
        self.doc = doc
        self.where = where

    def _get(self, name: str, kinds: tuple[type, ...], what: str, optional: bool) -> Any:
        value = self.doc.get(name)
        if value is None:
            if optional:
                return None
            raise InvalidValue(f"{self.where}: {name} is missing")
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise InvalidValue(f"{self.where}: {name} is not {what}")
        return value

    def text(self, name: str, optional: bool = True) -> str | None:
        value = self._get(name, (str,), "a string", optional)
        if value is not None and len(value) > MAX_TEXT:
            raise InvalidValue(f"{self.where}: {name} is too long")
        return value

    def integer(self, name: str, optional: bool = True) -> int | None:
        return self._get(name, (int,), "an integer", optional)

    def number(self, name: str, optional: bool = True) -> float | None:
        value = self._get(name, (int, float), "a number", optional)
        return None if value is None else float(value)

    def flag(self, name: str, optional: bool = True) -> bool | None:
        return self._get(name, (bool,), "true or false", optional)

    def sub(self, name: str) -> Fields | None:
        value = self.doc.get(name)
        return None if value is None else Fields(value, f"{self.where}.{name}")
