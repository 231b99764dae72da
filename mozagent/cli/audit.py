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
    commit_change,
    connected,
    timeout_of,
)
from mozagent.desired.audit import (
    ENTRY_PREFIX,
    AuditEntry,
    Change,
    apps_audit_dir,
    audit_dir,
    check_reason,
    parse_since,
)
from mozagent.desired.keys import InvalidValue
from mozagent.desired.schema import Unreadable, clean
from mozagent.zkaudit import add_entry, os_user

MAX_SHOWN_ENTRIES = 10_000
PRUNE_BATCH = 500  # deletes per transaction: one request stays far under ZooKeeper's 1 MiB
PRUNE_TRIES = 3  # per batch, when another prune took some of its entries meanwhile


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
        add_entry(txn, client, self.session.root, entry)


# --- mozagent audit ------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    words = args.words
    if len(words) > 1:
        raise Usage(f"audit takes [APP] (got {' '.join(words)})")
    app = check_word("app", words[0]) if words else None
    if args.all and (app or not args.prune):
        raise Usage("--all goes with --prune and without an APP")
    if args.dry_run and not args.prune:
        raise Usage("--dry-run goes with --prune")
    if args.prune:
        if args.since or args.json:
            raise Usage("--prune takes neither --since nor --json")
        cutoff = _age(args.prune, "--prune")

        def prune(session: Session) -> int:
            apps = _all_apps(session) if args.all else [app]
            note = Note.of(session, getattr(args, "reason", None), None, None)
            for one in apps:
                print(prune_entries(session, replace(note, app=one), cutoff, args.dry_run))
            return EXIT_OK

        return connected(args, timeout_of(args, False), not args.dry_run, prune)
    since = _age(args.since, "--since") if args.since else 0.0

    def show(session: Session) -> int:
        entries = read_entries(session, app, since)
        return print_entries(entries, args.json, sys.stdout)

    return connected(args, timeout_of(args, False), False, show)


def _age(text: str, option: str) -> float:
    try:
        return parse_since(text, time.time())
    except InvalidValue as exc:
        raise Usage(str(exc).replace("--since", option)) from None


def _all_apps(session: Session) -> list[str | None]:
    """The global layer's trail and every app's that has one."""
    listing = session.children(apps_audit_dir(session.root))
    return [None, *(listing[0] if listing else [])]


def prune_entries(session: Session, note: Note, cutoff: float, dry_run: bool) -> str:
    """Remove a trail's entries made before ``cutoff`` (by the server's clock);
    the first batch's transaction also writes an entry saying so, so a prune
    is itself on the record. Only admins may delete entries (``acl table``)."""
    where = audit_dir(session.root, note.app)
    label = f"audit {note.app or 'global'}"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cutoff))
    old, kept = _entries_before(session, where, cutoff)
    if not old:
        return f"{label}: no entries before {when} ({kept} kept)"
    if dry_run:
        return f"{label}: would remove {_entries(len(old))} made before {when} ({kept} kept)"
    removed = 0
    for start in range(0, len(old), PRUNE_BATCH):
        batch = old[start : start + PRUNE_BATCH]
        for _ in range(PRUNE_TRIES):
            txn = session.client.transaction()
            if start == 0:
                note.add(
                    txn,
                    "audit.prune",
                    where,
                    [Change(f"entries before {when}", str(len(old)), "0")],
                )
            for name in batch:
                txn.delete(f"{where}/{name}")
            if commit_change(txn, f"pruning the {label} trail") is not None:
                session.written = True
                removed += len(batch)
                break
            # Another prune took some of these meanwhile: drop what is gone, try again.
            gone = session.stats(f"{where}/{name}" for name in batch)
            batch = [name for name in batch if gone[f"{where}/{name}"] is not None]
            if not batch and start:
                break
        else:
            raise CommandError(
                f"pruning the {label} trail: its entries kept changing; removed {removed}"
            )
    return f"{label}: removed {_entries(removed)} made before {when} ({kept} kept)"


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _entries_before(session: Session, where: str, cutoff: float) -> tuple[list[str], int]:
    listing = session.children(where)
    if listing is None:
        return [], 0
    names = [n for n in listing[0] if n.startswith(ENTRY_PREFIX)]
    stats = session.stats(f"{where}/{n}" for n in names)
    old = [
        n for n in names if (st := stats[f"{where}/{n}"]) is not None and st.ctime / 1000 < cutoff
    ]
    return old, len(names) - len(old)


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
