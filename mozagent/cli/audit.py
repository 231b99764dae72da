"""The audit trail from the CLI: ``Note`` adds an entry to each change's
transaction; ``mozagent audit`` shows them.

An entry and its change are one ZooKeeper transaction: a CLI killed between
the two leaves neither (there is no between). ``desired/audit.py`` has the
document and the rules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, TextIO

from kazoo.client import TransactionRequest

from mozagent.cli.parser import Usage, check_word
from mozagent.cli.session import (
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    Session,
    connected,
    os_user,
    timeout_of,
)
from mozagent.desired.audit import (
    ENTRY_PREFIX,
    AuditEntry,
    Change,
    audit_dir,
    check_reason,
    parse_since,
)
from mozagent.desired.keys import InvalidValue
from mozagent.desired.schema import Unreadable, clean

MAX_SHOWN_ENTRIES = 10_000


@dataclass
class Note:
    """Who is changing what and why, for one command's change."""

    session: Session
    app: str | None
    node: str | None
    reason: str

    @classmethod
    def of(cls, session: Session, reason: str | None, app: str | None, node: str | None) -> Note:
        policy = session.client.policy
        try:
            text = check_reason(reason, bool(policy and policy.require_reason))
        except InvalidValue as exc:
            raise CommandError(f"{exc}; nothing written", EXIT_INVALID) from None
        return cls(session, app, node, text)

    @classmethod
    def none(cls, session: Session) -> Note:
        """For a command that changes nothing (a read, a dry run)."""
        return cls(session, None, None, "")

    def add(
        self,
        txn: TransactionRequest,
        action: str,
        target: str,
        changes: Iterable[Change],
        left_out: int = 0,
    ) -> None:
        """The entry, as one more operation of the change's transaction."""
        client = self.session.client
        where = audit_dir(self.session.root, self.app)
        client.ensure_path(where)  # `mozagent acl apply` makes it under a policy
        entry = AuditEntry(
            action=action,
            app=self.app,
            node=self.node,
            target=target,
            who=client.identity_name,
            user=os_user(),
            at=time.time(),
            reason=self.reason,
            changes=tuple(changes),
            left_out=left_out,
        )
        doc = json.dumps(entry.to_doc(), sort_keys=True).encode()
        txn.create(f"{where}/{ENTRY_PREFIX}", doc, sequence=True)


# --- mozagent audit ------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    words = args.words
    if len(words) > 1:
        raise Usage(f"audit takes [APP] (got {' '.join(words)})")
    app = check_word("app", words[0]) if words else None
    since = 0.0
    if args.since:
        try:
            since = parse_since(args.since, time.time())
        except InvalidValue as exc:
            raise Usage(str(exc)) from None

    def show(session: Session) -> int:
        entries = read_entries(session, app, since)
        return print_entries(entries, args.json, sys.stdout)

    return connected(args, timeout_of(args, False), False, show)


def read_entries(session: Session, app: str | None, since: float) -> list[AuditEntry | Unreadable]:
    """An app's entries (None: the global layer's), oldest first, since ``since``."""
    where = audit_dir(session.root, app)
    listing = session.children(where)
    if listing is None:
        return []
    names = [n for n in listing[0] if n.startswith(ENTRY_PREFIX)][-MAX_SHOWN_ENTRIES:]
    found = session.get_many((f"{where}/{n}" for n in names), refused=True)
    entries: list[AuditEntry | Unreadable] = []
    for name in names:
        hit = found[f"{where}/{name}"]
        if isinstance(hit, Exception):  # its writer chose an ACL that leaves us out
            entries.append(Unreadable(f"{clean(name, 60)}: {hit}"))
            continue
        if hit is None or hit[1].ctime / 1000 < since:
            continue
        try:
            entry = AuditEntry.parse(json.loads(hit[0].decode("utf-8")), name)
            # When: the server's clock (the writer's ``at`` is its own word).
            stat = hit[1]
            entries.append(replace(entry, at=stat.ctime / 1000, edited=stat.mzxid != stat.czxid))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            entries.append(Unreadable(f"{clean(name, 60)}: {clean(exc)}"))
    return entries


def print_entries(entries: list[AuditEntry | Unreadable], as_json: bool, out: TextIO) -> int:
    if as_json:
        docs: list[dict[str, Any]] = [
            {"entry": e.name, **e.to_doc()}
            if isinstance(e, AuditEntry)
            else {"unreadable": e.reason}
            for e in entries
        ]
        json.dump(docs, out, indent=2, sort_keys=True)
        out.write("\n")
        return EXIT_OK
    for e in entries:
        print(e.line() if isinstance(e, AuditEntry) else f"UNREADABLE: {e.reason}", file=out)
    if not entries:
        print("no audit entries", file=out)
    return EXIT_OK
