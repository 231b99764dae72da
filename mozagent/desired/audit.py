"""The audit trail: who changed what on the fleet, when and why.

One entry per change (a deploy, a canary, an order, a data change), written
by the CLI in the same ZooKeeper transaction as the change itself, so that
neither exists without the other: a sequential znode under
``<root>/audit/apps/<app>/`` (``audit/global/`` for the global layer), which
only admins may delete (``desired/acl.py``). An entry is a report: readers
take the fields they know (``desired/schema.py``).

Values are bounded (an entry travels in the change's transaction) and a
value whose key looks like a secret (``SECRET_WORDS``) is never written: the
entry says that it changed, not to what.

Pure: documents and words only; ``mozagent.cli.audit`` reads and writes them.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from typing import Any

from mozagent.desired.keys import InvalidValue
from mozagent.desired.schema import SCHEMA_KEY, Fields, clean

AUDIT_SCHEMA = 1
ENTRY_PREFIX = "entry-"
MAX_SHOWN = 512  # characters of one before/after value kept in an entry
MAX_CHANGES = 100  # per entry; an import of more keys says how many were left out
MAX_REASON = 1024
SECRET_WORDS = re.compile(r"(password|passwd|secret|token|private_key|api_key|credential)")
MASK = "(secret: not recorded)"
ACTIONS = (
    "deploy",
    "canary",
    "order",
    "data.set",
    "data.delete",
    "data.import",
    "heat.data",  # an agent wrote what a Heat deployment (group: zookeeper) handed it
    "heat.data.delete",
    "acl.apply",
    "audit.prune",
)


def apps_audit_dir(root: str) -> str:
    return f"{root.rstrip('/')}/audit/apps"


def audit_dir(root: str, app: str | None) -> str:
    return f"{apps_audit_dir(root)}/{app}" if app else f"{root.rstrip('/')}/audit/global"


def looks_secret(key: str) -> bool:
    return bool(SECRET_WORDS.search(key.lower()))


def shown_value(key: str, text: str | None) -> str | None:
    """A value as an entry keeps it: bounded, and never a secret's."""
    if text is None:
        return None
    if looks_secret(key):
        return MASK
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


@dataclass(frozen=True)
class Change:
    """One thing an entry changed: a key, the release, an order."""

    what: str
    before: str | None = None
    after: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"what": self.what, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class AuditEntry:
    """``who``: the ZooKeeper identity; ``user``: the OS user and host the CLI
    ran as (what the writer says of itself: ZooKeeper's ACLs vouch only that
    it held an identity allowed to write the change)."""

    action: str
    app: str | None
    target: str
    who: str
    user: str
    at: float
    reason: str = ""
    node: str | None = None
    changes: tuple[Change, ...] = ()
    left_out: int = 0
    name: str = field(default="", compare=False)  # the znode's, once read
    # Changed after it was written (its znode's mzxid is not its czxid): its
    # writer gave itself the right, so the entry is not to be believed.
    edited: bool = field(default=False, compare=False)

    def to_doc(self) -> dict[str, Any]:
        return {
            SCHEMA_KEY: AUDIT_SCHEMA,
            "action": self.action,
            "app": self.app,
            "node": self.node,
            "target": self.target,
            "who": self.who,
            "user": self.user,
            "at": self.at,
            "reason": self.reason,
            "changes": [c.to_doc() for c in self.changes[:MAX_CHANGES]],
            "left_out": self.left_out + max(0, len(self.changes) - MAX_CHANGES),
            **({"edited": True} if self.edited else {}),
        }

    @classmethod
    def parse(cls, doc: Any, name: str) -> AuditEntry:
        f = Fields(doc, f"audit entry {clean(name, 60)}")
        changes = []
        raw = f.doc.get("changes") or []
        if not isinstance(raw, list):
            raise InvalidValue(f"{f.where}: changes is not a list")
        for i, c in enumerate(raw[:MAX_CHANGES]):
            cf = Fields(c, f"{f.where}: changes[{i}]")
            changes.append(Change(cf.text("what") or "?", cf.text("before"), cf.text("after")))
        return cls(
            action=f.text("action", optional=False) or "",
            app=f.text("app"),
            node=f.text("node"),
            target=f.text("target") or "",
            who=f.text("who") or "",
            user=f.text("user") or "",
            at=f.number("at") or 0.0,
            reason=f.text("reason") or "",
            changes=tuple(changes),
            left_out=f.integer("left_out") or 0,
            name=name,
        )

    def line(self) -> str:
        """One line for a terminal: when, who, what, why; untrusted text cleaned."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        what = "; ".join(f"{c.what}: {_short(c.before)} -> {_short(c.after)}" for c in self.changes)
        more = f" (+{self.left_out} more)" if self.left_out else ""
        why = f" -- {self.reason}" if self.reason else ""
        if self.edited:
            why += " [EDITED after it was written: not to be believed]"
        where = self.app or "global"
        if self.node:
            where += f" node {self.node}"
        return clean(
            f"{when} {self.who} ({self.user}) {self.action} {where}: {what}{more}{why}", 2000
        )


def _short(text: str | None) -> str:
    if text is None:
        return "(none)"
    one = " ".join(text.split())
    return one if len(one) <= 80 else one[:79] + "…"


def check_reason(reason: str | None, required: bool) -> str:
    """The ``--reason`` as recorded; the policy can make one required."""
    text = (reason or "").strip()
    if required and not text:
        raise InvalidValue(
            "this fleet's policy requires a reason for every change: add --reason TEXT"
        )
    if len(text) > MAX_REASON:
        raise InvalidValue(f"--reason is over {MAX_REASON} characters")
    return text


_SINCE = re.compile(r"([0-9]+)([smhd])")


def parse_since(text: str, now: float) -> float:
    """``--since``: ``30m``, ``12h``, ``7d`` ago, or a date ``2026-12-01`` (UTC)."""
    m = _SINCE.fullmatch(text)
    if m:
        return now - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            continue
    raise InvalidValue(f"--since {clean(text, 40)!r}: give 30m, 12h, 7d or a date 2026-12-01")
