"""``mozagent data …``: operators read and write app data in ZooKeeper.

Everything is validated with the same rules the agent applies (``keys``) before
a byte is written, so what the CLI accepts the agent renders. ``import``
replaces a whole layer in one ZooKeeper transaction: the agent sees the old
layer or the new one, never a mix.

Exit codes: 0 done; 1 failed (not found, ZooKeeper unreachable or changed
meanwhile); 2 invalid input (nothing written). ``cmd_data`` checks the words
and the value before connecting; each action then works on the session's
client, and a write with ``--wait`` follows the hosts (``cli.fleet``).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import yaml
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import ZnodeStat

from mozagent.cli.audit import Note
from mozagent.cli.fleet import layer_version, reread, wait_for_data
from mozagent.cli.parser import DATA_ARITY, Usage, check_word, fail
from mozagent.cli.session import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    Session,
    commit_change,
    connected,
    target_of,
    timeout_of,
)
from mozagent.desired.audit import MASK, Change, shown_value
from mozagent.desired.keys import (
    MAX_TRANSACTION_BYTES,
    MAX_VALUE_BYTES,
    InvalidValue,
    check_key,
    check_name,
    encode_value,
    parse_value,
    parse_yaml_text,
    same_value,
)
from mozagent.desired.layers import layer_paths
from mozagent.zkacl import PolicyClient, first_refusal

SET_ATTEMPTS = 3  # a set races only with other writers of the same key


def cmd_data(args: argparse.Namespace) -> int:
    cmd = args.data_command
    is_global = getattr(args, "is_global", False)
    node = getattr(args, "node", None)
    wait = getattr(args, "wait", False)
    timeout = timeout_of(args, wait)
    names = DATA_ARITY[cmd]
    expected = names if is_global else ["APP", *names]
    whole_layer = cmd == "delete" and len(args.words) == len(expected) - 1
    if whole_layer:
        expected = expected[:-1]
    if len(args.words) != len(expected):
        usage = " ".join(expected) + (" --global" if is_global else "")
        return fail(f"data {cmd} takes {usage} (got {len(args.words)} arguments)")
    words = dict(zip(expected, args.words, strict=False))
    if "APP" in words:
        check_word("app", words["APP"])
    if wait and (
        cmd not in ("set", "import", "delete") or whole_layer or getattr(args, "dry_run", False)
    ):
        raise Usage(
            "--wait follows a set, an import or a key's delete: "
            "not a read, a --dry-run or a whole-layer delete"
        )
    target = target_of(args)

    try:
        ref = layer_ref(
            target[1], words.get("APP"), node, is_global, getattr(args, "is_secret", False)
        )
        value = None
        if cmd == "set":
            _check_key(words["KEY"])
            if ref.secret and words["VALUE"] != "-":
                raise CommandError(
                    "give a secret's value on stdin (`data set APP KEY - --secret`): a "
                    "command line is seen by every user in ps, and kept in shell history",
                    EXIT_INVALID,
                )
            text = read_stdin_value() if words["VALUE"] == "-" else words["VALUE"]
            value = parse_cli_value(text, args.string, words["KEY"])
        elif cmd == "import":
            load_import_file(words["FILE"]) if words["FILE"] != "-" else None
        elif "KEY" in words:
            _check_key(words["KEY"])
        if whole_layer and not args.force:
            raise CommandError(
                f"`data delete` without a KEY deletes the whole {ref.label} ({ref.path}); "
                "hosts then render it empty. Add --force to do that.",
                EXIT_INVALID,
            )
    except CommandError as exc:
        return fail(str(exc), exc.code)

    def work(session: Session) -> int:
        client = session.client
        if ref.secret and client.policy is None:
            raise CommandError(
                f"no ACL policy at {session.root}: a secret would be readable by anyone who "
                "can reach ZooKeeper; apply one first (`mozagent acl apply FILE`)"
            )
        reason = getattr(args, "reason", None)
        note = Note.of(session, reason, ref.app, ref.node) if changes else Note.none(session)
        if cmd == "set":
            code = set_key(client, ref, words["KEY"], value, args.dry_run, note)
        elif cmd == "get":
            return get_key(client, ref, words["KEY"])
        elif cmd == "delete" and whole_layer:
            return delete_layer(client, ref, note)
        elif cmd == "delete":
            code = delete_key(client, ref, words["KEY"], note)
        elif cmd == "list":
            return list_keys(client, ref)
        elif cmd == "export":
            return export_layer(client, ref)
        else:
            code = import_layer(client, ref, words["FILE"], args.dry_run, note)
        if not wait or code != EXIT_OK:
            return code
        session.written = True
        version = reread(session, lambda: layer_version(session, ref.path))
        app = None if is_global else words["APP"]
        return wait_for_data(session, app, node, version, sys.stdout)

    changes = cmd in ("set", "delete", "import") and not getattr(args, "dry_run", False)
    return connected(args, timeout, changes, work, target)


@dataclass(frozen=True)
class LayerRef:
    """Which layer a command works on: an app's, one node's of an app, or the global one."""

    path: str
    label: str
    app: str | None = None
    node: str | None = None
    secret: bool = False  # the app's secrets: values never read but by `get --secret`


def key_change(key: str, before: bytes | None, after: bytes | None, secret: bool = False) -> Change:
    """A key's change as the audit entry keeps it (secrets masked, bounded)."""

    def text(raw: bytes | None) -> str | None:
        if raw is None:
            return None
        return MASK if secret else shown_value(key, raw.decode("utf-8", "replace").rstrip("\n"))

    return Change(key, text(before), text(after))


def _current(
    client: PolicyClient, ref: LayerRef, path: str
) -> tuple[bytes | None, ZnodeStat | None]:
    """A key's bytes and stat; for a secret, its stat alone (``exists`` needs no
    permission to read, and the value is not the writer's to see)."""
    if ref.secret:
        stat = client.retry(client.exists, path)
        return (MASK.encode() if stat is not None else None), stat
    try:
        return client.retry(client.get, path)
    except NoNodeError:
        return None, None


def layer_ref(
    root: str, app: str | None, node: str | None, is_global: bool, is_secret: bool = False
) -> LayerRef:
    try:
        if is_secret:
            if is_global or node or not app:
                raise CommandError(
                    "--secret is for an APP's secrets: no --global or --node", EXIT_INVALID
                )
            check_name("app", app)
            path = layer_paths(root, app, "_")["secrets"]
            return LayerRef(path, f"secrets of app {app}", app, secret=True)
        if is_global:
            if node:
                raise CommandError("--global and --node exclude each other", EXIT_INVALID)
            return LayerRef(layer_paths(root, "_", "_")["global"], "global layer")
        if not app:
            raise CommandError("an APP is required (or --global)", EXIT_INVALID)
        check_name("app", app)
        if node:
            check_name("node", node)
            return LayerRef(
                layer_paths(root, app, node)["node"], f"node {node} of app {app}", app, node
            )
        return LayerRef(layer_paths(root, app, "_")["app"], f"app {app}", app)
    except InvalidValue as exc:
        raise CommandError(str(exc), EXIT_INVALID) from None


def parse_cli_value(text: str, as_string: bool, where: str) -> Any:
    """A VALUE on the command line is YAML (so JSON works), unless --string says literal."""
    if as_string:
        value: Any = text
    else:
        try:
            value = parse_yaml_text(text, where)
        except InvalidValue as exc:
            raise CommandError(str(exc), EXIT_INVALID) from None
    size = len(encode_value(value))
    if size > MAX_VALUE_BYTES:
        raise CommandError(f"{where}: value is {size} bytes, over the 1 MiB limit", EXIT_INVALID)
    return value


def read_stdin_value() -> str:
    """``set KEY -``: an empty stdin is a mistake (a failed pipe), never a null."""
    text = sys.stdin.read()
    if not text.strip():
        raise CommandError(
            "no value on stdin (it was empty); to store undef, pass `null` as the VALUE",
            EXIT_INVALID,
        )
    return text


def _check_key(key: str) -> str:
    try:
        return check_key(key)
    except InvalidValue as exc:
        raise CommandError(str(exc), EXIT_INVALID) from None


@dataclass
class LayerContent:
    exists: bool
    version: int  # the layer znode's data version, bumped by every import
    raw: dict[str, tuple[bytes, int]]  # name -> (bytes, znode version)
    secret: bool = False  # names and versions only; every value shows as MASK

    def values(self) -> tuple[dict[str, Any], dict[str, str]]:
        if self.secret:
            return dict.fromkeys(self.raw, MASK), {}
        good: dict[str, Any] = {}
        bad: dict[str, str] = {}
        for name, (data, _) in sorted(self.raw.items()):
            try:
                check_key(name)
                good[name] = parse_value(data, name)
            except InvalidValue as exc:
                bad[name] = str(exc)
        return good, bad


def read_layer(client: PolicyClient, ref: LayerRef) -> LayerContent:
    try:
        children, stat = client.retry(client.get_children, ref.path, include_data=True)
    except NoNodeError:
        return LayerContent(False, -1, {})
    if ref.secret:  # names and versions only: an operator may not read the values
        stats = {name: client.exists_async(f"{ref.path}/{name}") for name in children}
        found = {name: result.get() for name, result in stats.items()}
        raw = {name: (MASK.encode(), s.version) for name, s in found.items() if s is not None}
        return LayerContent(True, stat.version, raw, secret=True)
    pending = {name: client.get_async(f"{ref.path}/{name}") for name in children}
    raw = {}
    for name, result in pending.items():
        try:
            data, kstat = result.get()
        except NoNodeError:
            continue
        raw[name] = (data or b"", kstat.version)
    return LayerContent(True, stat.version, raw)


def existing_layer(client: PolicyClient, ref: LayerRef) -> LayerContent:
    content = read_layer(client, ref)
    if not content.exists:
        raise CommandError(f"the {ref.label} does not exist ({ref.path})")
    return content


def _yaml(values: dict[str, Any]) -> str:
    if not values:
        return ""
    return yaml.safe_dump(values, sort_keys=True, default_flow_style=False, allow_unicode=True)


def diff_text(old: dict[str, Any], new: dict[str, Any], before: str, after: str) -> str:
    lines = difflib.unified_diff(
        _yaml(old).splitlines(keepends=True),
        _yaml(new).splitlines(keepends=True),
        fromfile=before,
        tofile=after,
    )
    return "".join(lines)


def _shown(content: LayerContent) -> dict[str, Any]:
    """Current layer for a diff: bad znodes appear as a marker rather than vanishing."""
    good, bad = content.values()
    shown = dict(good)
    for name, why in bad.items():
        shown[name] = f"<invalid: {why}>"
    return shown


def set_key(
    client: PolicyClient,
    ref: LayerRef,
    key: str,
    value: Any,
    dry_run: bool,
    note: Note,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    _check_key(key)
    data = encode_value(value)
    path = f"{ref.path}/{key}"
    if dry_run and ref.secret:
        raise CommandError("a secret has no diff to show: its value is not read back", EXIT_INVALID)
    if dry_run:
        current = read_layer(client, ref)
        old = _shown(current)
        new = dict(old)
        new[key] = value
        text = diff_text(old, new, f"zookeeper:{ref.path}", f"zookeeper:{ref.path} (after set)")
        out.write(text or f"no change: {key} already has that value in the {ref.label}\n")
        return EXIT_OK
    for _ in range(SET_ATTEMPTS):
        before, stat = _current(client, ref, path)
        txn = client.transaction()
        if stat is None:
            client.retry(client.ensure_path, ref.path)
            txn.create(path, data)
        else:
            txn.set_data(path, data, version=stat.version)
        note.add(txn, "data.set", path, [key_change(key, before, data, ref.secret)])
        if commit_change(txn, f"setting {key} in the {ref.label}") is not None:
            break
    else:
        raise CommandError(f"{path} kept changing while it was set; nothing written, run again")
    out.write(f"set {key} in the {ref.label}\n")
    return EXIT_OK


def get_key(client: PolicyClient, ref: LayerRef, key: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    _check_key(key)
    try:
        data, _ = client.retry(client.get, f"{ref.path}/{key}")
    except NoNodeError:
        raise CommandError(f"{key}: no such key in the {ref.label} ({ref.path})") from None
    try:
        value = parse_value(data, f"{ref.path}/{key}")
    except InvalidValue as exc:
        raise CommandError(f"{exc} (the agent ignores this value)") from None
    out.write(format_value(value))
    return EXIT_OK


def format_value(value: Any) -> str:
    """Strings print as themselves (handy in shell scripts); anything else as YAML."""
    if isinstance(value, str):
        return value + "\n"
    text = yaml.safe_dump(value, default_flow_style=False, allow_unicode=True, sort_keys=True)
    return text[: -len("...\n")] if text.endswith("\n...\n") else text


def delete_key(
    client: PolicyClient, ref: LayerRef, key: str, note: Note, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    _check_key(key)
    path = f"{ref.path}/{key}"
    before, stat = _current(client, ref, path)
    if stat is None:
        raise CommandError(f"{key}: no such key in the {ref.label} ({ref.path})")
    if stat.numChildren:
        raise CommandError(f"{path} has children: it is not a key znode")
    txn = client.transaction()
    txn.delete(path, version=stat.version)
    note.add(txn, "data.delete", path, [key_change(key, before, None, ref.secret)])
    if commit_change(txn, f"deleting {key} from the {ref.label}") is None:
        raise CommandError(f"{path} changed while it was deleted; nothing deleted, run again")
    out.write(f"deleted {key} from the {ref.label}\n")
    return EXIT_OK


def delete_layer(client: PolicyClient, ref: LayerRef, note: Note, out: TextIO | None = None) -> int:
    """Delete a layer and its keys in one transaction: hosts see it whole or empty."""
    out = out or sys.stdout
    content = existing_layer(client, ref)
    txn = client.transaction()
    for name, (_, version) in sorted(content.raw.items()):
        txn.delete(f"{ref.path}/{name}", version=version)
    if client.policy is None:
        txn.delete(ref.path, version=content.version)
    else:
        # Under a policy the layer znode is part of the tree `mozagent acl`
        # made, with its ACL: it stays, emptied.
        txn.check(ref.path, version=content.version)
    changes = [
        key_change(name, data, None, ref.secret) for name, (data, _) in sorted(content.raw.items())
    ]
    note.add(txn, "data.delete", ref.path, changes)
    failures = [r for r in txn.commit() if isinstance(r, Exception)]
    if (refused := first_refusal(failures)) is not None:
        raise CommandError(f"{refused}; nothing was deleted")
    if failures:
        raise CommandError(
            f"deleting the {ref.label} failed: it changed meanwhile or has nested znodes "
            f"({type(failures[0]).__name__}); nothing was deleted"
        )
    out.write(f"deleted the {ref.label} ({len(content.raw)} keys)\n")
    return EXIT_OK


def list_keys(
    client: PolicyClient, ref: LayerRef, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    content = existing_layer(client, ref)
    _, bad = content.values()
    for name in sorted(content.raw):
        if name in bad:
            err.write(f"warning: {ref.path}/{name}: {bad[name]}\n")
        else:
            out.write(f"{name}\n")
    return EXIT_FAILED if bad else EXIT_OK


def export_layer(
    client: PolicyClient, ref: LayerRef, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    good, bad = existing_layer(client, ref).values()
    out.write(f"# {ref.label} ({ref.path})\n")
    out.write(_yaml(good) or "{}\n")
    for name, why in bad.items():
        err.write(f"warning: {ref.path}/{name} left out: {why}\n")
    return EXIT_FAILED if bad else EXIT_OK


def load_import_file(path: str) -> dict[str, Any]:
    """Read and validate an import file completely before touching ZooKeeper."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: cannot read: {exc}", EXIT_INVALID) from None
    try:
        doc = parse_yaml_text(text, path)
    except InvalidValue as exc:
        raise CommandError(str(exc), EXIT_INVALID) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise CommandError(
            f"{path}: must be a mapping of key: value, got {type(doc).__name__}", EXIT_INVALID
        )
    problems = []
    for key, value in doc.items():
        if not isinstance(key, str):
            problems.append(f"{path}: key {key!r} is not a string")
            continue
        try:
            check_key(key)
        except InvalidValue as exc:
            problems.append(f"{path}: {exc}")
            continue
        if len(encode_value(value)) > MAX_VALUE_BYTES:
            problems.append(f"{path}: {key}: value is over the 1 MiB limit")
    total = sum(len(k) + len(encode_value(v)) + 64 for k, v in doc.items() if isinstance(k, str))
    if total > MAX_TRANSACTION_BYTES:
        problems.append(
            f"{path}: {total} bytes is too large for one ZooKeeper transaction (limit about "
            f"{MAX_TRANSACTION_BYTES}): split the data, or use `set` per key"
        )
    if problems:
        raise CommandError("\n".join(problems), EXIT_INVALID)
    return doc


def import_layer(
    client: PolicyClient,
    ref: LayerRef,
    path: str,
    dry_run: bool,
    note: Note,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    if ref.secret:
        raise CommandError(
            "secrets are set one by one (`data set APP KEY VALUE --secret`): an import "
            "would have to read them to know what changes",
            EXIT_INVALID,
        )
    desired = load_import_file(path)
    current = read_layer(client, ref)
    text = diff_text(_shown(current), desired, f"zookeeper:{ref.path}", path)
    if dry_run:
        out.write(text or f"no change: the {ref.label} already matches {path}\n")
        return EXIT_OK
    encoded = {key: encode_value(value) for key, value in desired.items()}
    txn = client.transaction()
    if current.exists:
        # Bumping the layer's own version makes two concurrent imports conflict
        # instead of interleaving.
        txn.set_data(ref.path, b"", version=current.version)
    else:
        client.retry(client.ensure_path, ref.path.rsplit("/", 1)[0])
        txn.create(ref.path, b"")
    for name, (data, version) in sorted(current.raw.items()):
        if name not in encoded:
            txn.delete(f"{ref.path}/{name}", version=version)
        elif not same_value(data, desired[name]):
            txn.set_data(f"{ref.path}/{name}", encoded[name], version=version)
        else:
            # Unchanged keys are checked too: a concurrent `set` on one of them
            # must fail the import, not be silently kept.
            txn.check(f"{ref.path}/{name}", version)
    for name in sorted(set(encoded) - set(current.raw)):
        txn.create(f"{ref.path}/{name}", encoded[name])
    changes = [
        key_change(name, current.raw[name][0] if name in current.raw else None, encoded.get(name))
        for name in sorted(set(encoded) | set(current.raw))
        if name not in current.raw or name not in encoded or current.raw[name][0] != encoded[name]
    ]
    note.add(txn, "data.import", ref.path, changes)
    if commit_change(txn, f"import into the {ref.label}") is None:
        raise CommandError(
            f"import into the {ref.label} failed: the layer changed while importing; "
            "nothing was written, run it again"
        )
    out.write(text or f"no change: the {ref.label} already matches {path}\n")
    extra = sorted(set(client.retry(client.get_children, ref.path)) - set(encoded))
    if extra:
        raise CommandError(
            f"imported {len(desired)} keys, but {', '.join(extra)} appeared in the "
            f"{ref.label} meanwhile; run the import again to remove them"
        )
    out.write(f"imported {len(desired)} keys into the {ref.label}\n")
    return EXIT_OK
