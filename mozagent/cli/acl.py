"""``mozagent acl``: make the tree's ACLs the policy's, and find where they are not.

``apply`` stores the policy at ``<root>/acl``, creates the znodes every app
needs with their ACLs (so that nobody's create permission on a parent can
make them with an ACL of its own) and sets the ACL of every znode under the
root that differs; run again, it changes nothing. ``check`` lists each znode
whose ACL is not the policy's (made with zkCli, say, or before the policy),
exit 1. ``id`` prints the identity a credentials file gives, to put in the
policy; ``table`` prints who may do what (the README's table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TextIO

from kazoo.exceptions import NodeExistsError, NoNodeError

from mozagent.cli.audit import Note
from mozagent.cli.parser import Usage
from mozagent.cli.session import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    Session,
    commit_change,
    connected,
    identity_of,
    timeout_of,
)
from mozagent.desired.acl import (
    APP_SKELETON,
    ROOT_SKELETON,
    InvalidPolicy,
    Policy,
    acl_for,
    acl_text,
    differences,
    digest_id,
    parse_policy,
    table_text,
)
from mozagent.desired.audit import Change
from mozagent.desired.keys import InvalidValue, parse_yaml_text
from mozagent.desired.schema import clean
from mozagent.zkacl import Refused, from_kazoo, policy_path, to_kazoo
from mozagent.zkauth import read_credentials

MAX_POLICY_FILE = 1024 * 1024
MAX_WALKS = 3  # walks of the tree by one apply, until one changes nothing
ARITY = {"apply": ["FILE"], "check": [], "id": ["CREDENTIALS_FILE"], "table": []}


def cmd_acl(args: argparse.Namespace) -> int:
    cmd = args.acl_command
    words = args.words
    wanted = ARITY[cmd]
    if cmd == "check" and len(words) == 1:
        wanted = ["FILE"]
    if len(words) != len(wanted):
        raise Usage(f"acl {cmd} takes {' '.join(wanted) or 'nothing'} (got {len(words)} words)")
    if cmd == "table":
        sys.stdout.write(table_text())
        return EXIT_OK
    if cmd == "id":
        digest = read_credentials(words[0])
        print(digest_id(digest.user, digest.password))
        return EXIT_OK
    policy = load_policy_file(words[0]) if words else None
    timeout = timeout_of(args, False)
    if cmd == "apply":
        _not_locked_out(args, policy)
        return connected(
            args,
            timeout,
            True,
            lambda s: apply_policy(s, policy, args.dry_run, sys.stdout),
            load_policy=False,  # apply reads it itself: a damaged one must not lock it out
        )
    return connected(args, timeout, False, lambda s: check_policy(s, policy, sys.stdout))


def load_policy_file(path: str) -> Policy:
    """The operator's policy file (YAML); names identities, never passwords,
    so it need not be private, but it is read with the same bounds."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_POLICY_FILE + 1)
    except OSError as exc:
        raise Usage(f"cannot read the policy {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise Usage(f"the policy {path} is not UTF-8 text") from None
    if len(text) > MAX_POLICY_FILE:
        raise Usage(f"the policy {path} is over 1 MiB")
    try:
        return parse_policy(parse_yaml_text(text, path), path)
    except InvalidValue as exc:
        raise Usage(str(exc)) from None


def _not_locked_out(args: argparse.Namespace, policy: Policy | None) -> None:
    """Refuse a policy that would take the admin rights from whoever applies it."""
    assert policy is not None
    identity = identity_of(args)
    if identity is None:
        raise Usage(
            "acl apply needs an admin identity (a credentials file named by "
            "$MOZAGENT_ZOOKEEPER_CREDENTIALS): without one, the policy would lock this "
            "command out of the tree it just closed"
        )
    mine = digest_id(identity.user, identity.password)
    if mine not in policy.admins:
        raise Usage(
            f"the policy's admins do not include digest user {identity.user!r} ({mine}), "
            "who is applying it: add it, or apply it as one of them"
        )


def skeleton(policy: Policy, root: str) -> list[str]:
    """The znodes ``apply`` makes: the root's own, and each app's fixed ones."""
    base = root.rstrip("/")
    paths = [base, *(f"{base}/{p}" for p in ROOT_SKELETON)]
    for app in sorted(policy.apps):
        paths.append(f"{base}/apps/{app}")
        paths.extend(f"{base}/apps/{app}/{p}" for p in APP_SKELETON)
        paths.append(f"{base}/audit/apps/{app}")
        hosts = policy.apps[app].hosts
        if hosts:  # per-host identities: each host's claim, writable by it alone
            paths.append(f"{base}/apps/{app}/claims")
            paths.extend(f"{base}/apps/{app}/claims/{node}" for node in sorted(hosts))
    return paths


def walk(session: Session, top: str) -> Iterator[tuple[str, dict[str, int] | None]]:
    """Every znode under ``top``, parents first, with its ACL (None: unreadable).
    One level at a time, each level's requests in flight together."""
    client = session.client
    level = [top]
    while level:
        acls = {p: client.get_acls_async(p) for p in level}
        kids = {p: client.get_children_async(p) for p in level}
        below: list[str] = []
        for path in level:
            try:
                grants: dict[str, int] | None = from_kazoo(session.result(acls[path])[0])
            except NoNodeError:
                continue  # gone meanwhile (an ephemeral presence)
            except Refused:
                grants = None
            yield path, grants
            with contextlib.suppress(NoNodeError, Refused):
                below.extend(f"{path.rstrip('/')}/{n}" for n in sorted(session.result(kids[path])))
        level = below


def apply_policy(session: Session, policy: Policy | None, dry_run: bool, out: TextIO) -> int:
    """The policy first (with its audit entry), so that no agent or command
    goes on creating with the old one; then the fixed znodes; then every
    znode's ACL, walked again until a walk changes nothing (what was created
    with the old policy during the first walk is caught by the next)."""
    assert policy is not None
    client, root = session.client, session.root
    try:
        stored = client.load_policy()
    except InvalidPolicy as exc:  # a damaged or half-written policy is replaced, not obeyed
        print(f"the stored policy cannot be used ({exc}): replacing it", file=out)
        stored = None
    client.use_policy(policy)
    if stored != policy:
        print(
            f"{'would store' if dry_run else 'stored'} the policy at {policy_path(root)}", file=out
        )
        if not dry_run:
            _store(session, policy)
            session.written = True  # a cut-short apply has changed the tree
    made = 0
    for path in skeleton(policy, root):
        if client.exists(path) is None:
            made += 1
            print(f"{'would create' if dry_run else 'created'} {path}", file=out)
            if not dry_run:
                with contextlib.suppress(NodeExistsError):
                    client.create(path, b"", makepath=True)
    changed = kept = 0
    failed: dict[str, str] = {}
    for _ in range(MAX_WALKS):
        changes = 0
        for path, grants in walk(session, root):
            want = acl_for(policy, root, path)
            if grants == want:
                kept += 1
                continue
            if path in failed:
                continue
            changes += 1
            was = "unreadable" if grants is None else acl_text(grants)
            print(
                f"{'would set' if dry_run else 'set'} {clean(path, 300)}: {was} -> "
                f"{acl_text(want)}",
                file=out,
            )
            if not dry_run:
                try:
                    client.set_acls(path, to_kazoo(want))
                except NoNodeError:
                    pass
                except Refused as exc:
                    failed[path] = str(exc)
        changed += changes
        if dry_run or not changes:
            break
        kept = 0
    if not dry_run:
        session.written = True
    verb = "would change" if dry_run else "changed"
    print(
        f"{verb} {changed} ACLs, {made} znodes created, {kept} ACLs already the policy's", file=out
    )
    for path, why in failed.items():
        print(
            f"could not set {clean(path, 300)}: {why} (its ACL leaves the admins out: only a "
            "ZooKeeper superuser can change it)",
            file=out,
        )
    return EXIT_FAILED if failed else EXIT_OK


def _store(session: Session, policy: Policy) -> None:
    """The policy and its audit entry, in one transaction."""
    client = session.client
    where = policy_path(session.root)
    doc = json.dumps(policy.to_doc(), sort_keys=True).encode()
    client.ensure_path(session.root)
    found = client.exists(where)
    txn = client.transaction()
    if found is None:
        txn.create(where, doc)
    else:
        txn.set_data(where, doc, version=found.version)
    apps = ", ".join(sorted(policy.apps)) or "none"
    Note(session, None, None, "mozagent acl apply").add(
        txn,
        "acl.apply",
        where,
        [Change("policy", None, f"{len(policy.admins)} admins; apps {apps}")],
    )
    if commit_change(txn, "storing the policy") is None:
        raise CommandError(f"someone changed {where} meanwhile; nothing written, run it again")


def check_policy(session: Session, policy: Policy | None, out: TextIO) -> int:
    client, root = session.client, session.root
    stored = client.policy
    if policy is None:
        if stored is None:
            raise CommandError(
                f"no ACL policy at {policy_path(root)}: the tree is open to anyone who can "
                "reach ZooKeeper; write one and run `mozagent acl apply FILE`"
            )
        policy = stored
    elif stored != policy:
        print(
            f"{policy_path(root)}: the stored policy is not this file's; `acl apply` stores it",
            file=out,
        )
    missing = [p for p in skeleton(policy, root) if client.exists(p) is None]
    for path in missing:
        print(f"{path}: missing (anyone allowed to create beside it could make it)", file=out)
    found = list(walk(session, root))
    wrong = differences(policy, root, found)
    for path, why in wrong:
        print(f"{path}: {why}", file=out)
    seen = len(found)
    unread = sum(1 for _, grants in found if grants is None)
    if unread:
        print(
            f"{unread} znodes not checked: this identity may not read their ACLs (run it as "
            "an admin; an admin that cannot read one has found a znode that leaves it out)",
            file=out,
        )
    if wrong or missing or stored != policy or unread:
        print(f"{len(wrong)} of {seen} znodes differ from the policy", file=out)
        return EXIT_FAILED
    print(f"all {seen} znodes under {root} carry the policy's ACL", file=out)
    return EXIT_OK
