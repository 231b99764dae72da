"""``mozagent fleet``, ``deploy``, ``order`` and ``data … --wait``: the operator's
view of what the agents publish in ZooKeeper, and waiting for them.

Each command is ``cmd_<name>(args)``: it checks its words (a bad one exits 2
before connecting), then runs its work on a session (``session.connected``).
The ZooKeeper I/O lives here; every decision (who is done, failed, lagging,
a canary) is ``desired.convergence``'s and every view ``cli.fleetviews``', so
the commands cannot disagree.

Waiting is polling (every ``POLL_INTERVAL`` s) rather than watches: a poll
re-reads everything, so it cannot miss an update around a reconnect, and
each read is bounded by the wait's deadline, so a ZooKeeper that stops
answering ends the wait with the hosts named instead of hanging. Only a read
that got no answer is called a stall: a wait that merely ran out of time
says which hosts did not answer, and nothing about ZooKeeper.

Only an ephemeral ``hosts/<node>`` is a live host (``convergence.NotLive``):
a persistent one is shown, never waited for.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO, TypeVar

from kazoo.client import TransactionRequest
from kazoo.exceptions import (
    ConnectionLoss,
    SessionExpiredError,
)
from kazoo.protocol.states import ZnodeStat

from mozagent.cli import fleetviews as views
from mozagent.cli.audit import Note
from mozagent.cli.parser import Usage, check_word
from mozagent.cli.session import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    OutOfTime,
    Session,
    Stalled,
    commit_change,
    connected,
    timeout_of,
)
from mozagent.desired import convergence as cv
from mozagent.desired import fleet
from mozagent.desired.audit import Change
from mozagent.desired.claims import HostClaim, presence_untrusted, result_untrusted
from mozagent.desired.fleet import DesiredRelease
from mozagent.desired.keys import InvalidValue, check_name, encode_value
from mozagent.desired.layers import layer_paths
from mozagent.desired.orders import (
    MAX_BY_CHARS,
    ORDER_NAME_RE,
    InvalidOrder,
    Order,
    OrderResult,
    order_doc,
    order_seq,
    parse_order,
)
from mozagent.desired.release import (
    DEFAULT_INSTALL_SCRIPT,
    InvalidRelease,
    Release,
    display_source,
    parse_release,
)
from mozagent.zkaudit import os_user

EXIT_NOTHING = 3  # no live host to show or to wait for; no such order
EXIT_IN_PROGRESS = 4  # order status without --wait: some hosts have not finished
POLL_INTERVAL = 0.25

T = TypeVar("T")


# --- reading -----------------------------------------------------------------------------------


def layer_version(session: Session, path: str, deadline: float | None = None) -> int:
    """A layer's data version as agents count it (``layers.LayerView``): the
    layer znode's pzxid and each key's mzxid; 0 for a layer that does not exist."""
    listing = session.children(path, deadline)
    if listing is None:
        return 0
    names, stat = listing
    # exists() needs no read permission: a secret's version without its value.
    keys = session.stats((f"{path}/{name}" for name in names), deadline)
    return max([stat.pzxid, *(found.mzxid for found in keys.values() if found)])


def read_presences(session: Session, app: str, deadline: float | None = None) -> dict[str, cv.Seen]:
    """Every znode under the app's ``hosts/``, judged: live (ephemeral) or not."""
    listing = session.children(fleet.hosts_path(session.root, app), deadline)
    if listing is None:
        return {}
    presences: dict[str, cv.Seen] = {}
    valid = []
    for name in listing[0]:
        try:
            valid.append(check_name("node", name))
        except InvalidValue as exc:
            presences[cv.clean(name, 60)] = cv.Unreadable(str(exc))
    paths = {fleet.host_path(session.root, app, name): name for name in valid}
    claims = read_claims(session, app, valid, deadline)
    for path, found in session.get_many(paths, deadline).items():
        if found is not None:  # None: the host went away while we listed
            data, stat = found
            node = paths[path]
            seen = cv.judge_presence(data, stat.ephemeralOwner, node, app)
            why = untrusted(claims, node, stat.ephemeralOwner)
            if why and cv.is_live(seen):
                seen = cv.NotLive(why, "UNTRUSTED: presence")
            presences[node] = seen
    return presences


def read_claims(
    session: Session, app: str, nodes: Sequence[str], deadline: float | None = None
) -> dict[str, HostClaim | str | None] | None:
    """With per-host identities in the policy: each node's claim (or why it
    cannot be read; None: the node has no identity of its own). None: the
    app's hosts share identities, and there is nothing to check against."""
    policy = session.client.policy
    hosts = policy.roles(app).hosts if policy is not None else {}
    if not hosts:
        return None
    paths = {fleet.claim_path(session.root, app, n): n for n in nodes if n in hosts}
    claims: dict[str, HostClaim | str | None] = dict.fromkeys(nodes)
    for path, found in session.get_many(paths, deadline).items():
        if found is None:
            claims[paths[path]] = "it does not exist: run `mozagent acl apply`"
            continue
        try:
            claims[paths[path]] = HostClaim.parse(found[0], path)
        except InvalidValue as exc:
            claims[paths[path]] = str(exc)
    return claims


def untrusted(
    claims: dict[str, HostClaim | str | None] | None, node: str, owner: int
) -> str | None:
    if claims is None:
        return None
    why = presence_untrusted(claims.get(node), owner)
    return f"presence not trusted: {why}" if why else None


def live_only(
    presences: dict[str, cv.Seen], out: TextIO | None = None, prefix: str = ""
) -> dict[str, cv.Seen]:
    """The live hosts; each znode that is not one is named on ``out``."""
    for node, seen in sorted(presences.items()):
        if isinstance(seen, cv.NotLive) and out is not None:
            print(f"{prefix}{node}: {seen.reason}; not waited for", file=out)
    return {node: seen for node, seen in presences.items() if cv.is_live(seen)}


def read_release(session: Session, path: str) -> tuple[DesiredRelease | None, ZnodeStat | None]:
    """The release znode as the agents judge it (``release.parse_release``);
    None when there is none. Its version is the mzxid hosts report back."""
    found = session.get(path)
    if found is None:
        return None, None
    data, stat = found
    try:
        release = parse_release(data, path)
    except InvalidRelease as exc:
        return DesiredRelease(path, stat.mzxid, None, str(exc)), stat
    return DesiredRelease(path, stat.mzxid, release), stat


def identity(session: Session) -> str:
    """Who wrote a release or an order, for the record: the ZooKeeper identity
    and the OS user (``digest:bob bob@laptop``), or the user alone."""
    zk = session.client.identity_name
    return (os_user() if zk == "anonymous" else f"{zk} {os_user()}")[:MAX_BY_CHARS]


# --- fleet -------------------------------------------------------------------------------------


def _words(args: argparse.Namespace, command: str, names: Sequence[str]) -> list[str]:
    if len(args.words) != len(names):
        raise Usage(f"{command} takes {' '.join(names)} (got {len(args.words)} arguments)")
    return list(args.words)


def cmd_fleet(args: argparse.Namespace) -> int:
    (app,) = _words(args, "fleet", ["APP"])
    check_word("app", app)
    timeout = timeout_of(args, False)
    return connected(args, timeout, False, lambda s: show_fleet(s, app, args.json))


def show_fleet(session: Session, app: str, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    root = session.root
    presences = read_presences(session, app)
    paths = layer_paths(root, app, "_")
    shared = max(layer_version(session, paths[name]) for name in ("secrets", "app", "global"))
    node_data = {
        node: layer_version(session, layer_paths(root, app, node)["node"]) for node in presences
    }
    app_release = read_release(session, fleet.release_path(root, app))[0]
    overrides: dict[str, DesiredRelease] = {}
    for node in presences:
        override = read_release(session, fleet.node_release_path(root, app, node))[0]
        if override is not None:
            overrides[node] = override
    states = cv.fleet_states(presences, shared, node_data, app_release, overrides)
    if not any(s.live for s in states):
        code = EXIT_NOTHING
    elif any(s.problems for s in states):
        code = EXIT_FAILED
    else:
        code = EXIT_OK
    if as_json:
        doc = views.fleet_json(app, shared, app_release, states)
        doc["exit_code"] = code
        out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        out.write(views.format_fleet(app, shared, app_release, states, time.time()))
    return code


# --- waiting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A host to wait for: ``label`` is how progress lines name it."""

    label: str
    app: str
    node: str


Poll = Callable[[float], dict[str, cv.Standing]]


def reread(session: Session, read: Callable[[], T]) -> T:
    """A wait's first reads, made just after its write: a connection lost there
    (a reset, a leader election) is retried until the wait's deadline, as
    ``follow`` does with its polls. Reads change nothing and kazoo reconnects,
    so a blip must not end a wait whose change was already made."""
    while True:
        try:
            return read()
        except (ConnectionLoss, SessionExpiredError):
            if time.monotonic() + POLL_INTERVAL >= session.wait_deadline:
                raise
            time.sleep(POLL_INTERVAL)


def follow(
    session: Session,
    labels: list[str],
    poll: Poll,
    out: TextIO,
    initial: dict[str, cv.Standing] | None = None,
) -> dict[str, cv.Standing]:
    """Poll until every host in ``labels`` is final or the wait's deadline;
    print each host's line once, as it finishes. Returns every outcome:
    ``initial`` (hosts already decided, not waited for) updated by the polls."""
    deadline = session.wait_deadline
    start = time.monotonic()
    outcomes = dict(initial or {})
    outcomes.update({label: cv.Standing(cv.PENDING, "pending") for label in labels})
    reported: set[str] = set()
    while True:
        try:
            fresh = poll(session.read_deadline)
            outcomes.update({label: fresh[label] for label in labels if label in fresh})
        except Stalled as exc:
            print(
                f"mozagent: ZooKeeper at {session.hosts} stopped answering during the wait "
                f"(a read got no answer in {exc.waited:.1f} s)",
                file=sys.stderr,
            )
            return outcomes
        except OutOfTime:
            return outcomes
        except (ConnectionLoss, SessionExpiredError):
            pass  # kazoo reconnects; the next poll reads again
        for label in labels:
            outcome = outcomes[label]
            if outcome.state in cv.FINAL and label not in reported:
                reported.add(label)
                line = views.progress_line(label, outcome, time.monotonic() - start)
                print(line, file=out, flush=True)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or all(outcomes[label].state in cv.FINAL for label in labels):
            return outcomes
        time.sleep(min(POLL_INTERVAL, remaining))


def conclude(
    session: Session, outcomes: dict[str, cv.Standing], out: TextIO, prefix: str = ""
) -> int:
    """The summary line on stdout when all are done; else the error naming the others."""
    summary = prefix + views.wait_summary(outcomes, session.timeout)
    code = cv.exit_code(outcomes, EXIT_FAILED)
    if code != EXIT_OK:
        raise CommandError(summary, code)
    print(summary, file=out, flush=True)
    return code


def _poll_presences(
    session: Session, targets: list[Target], decide: Callable[[Any], cv.Standing]
) -> Poll:
    apps = sorted({t.app for t in targets})

    def poll(deadline: float) -> dict[str, cv.Standing]:
        seen = {app: read_presences(session, app, deadline) for app in apps}
        return {t.label: decide(seen[t.app].get(t.node)) for t in targets}

    return poll


def _nothing_to_wait_for(what: str) -> CommandError:
    return CommandError(f"{what}: no live host to wait for (the change is written)", EXIT_NOTHING)


def wait_for_data(
    session: Session, app: str | None, node: str | None, version: int, out: TextIO
) -> int:
    """After a data write of ``version``: the hosts that render the layer, i.e.
    the node, the app's live hosts, or every app's (global layer)."""
    targets = reread(session, lambda: _data_targets(session, app, node, out))
    scope = f"node {node} of app {app}" if node else (f"app {app}" if app else "all apps")
    if not targets:
        raise _nothing_to_wait_for(scope)
    print(f"waiting for {len(targets)} hosts to apply data version {version}", file=out)
    poll = _poll_presences(session, targets, lambda p: cv.data_outcome(p, version))
    return conclude(session, follow(session, [t.label for t in targets], poll, out), out)


def _data_targets(session: Session, app: str | None, node: str | None, out: TextIO) -> list[Target]:
    if app is None:
        listing = session.children(fleet.apps_path(session.root))
        apps = [a for a in (listing[0] if listing else []) if _valid_name(a)]
    else:
        apps = [app]
    targets = []
    seen = {each: read_presences(session, each) for each in apps}  # all read before printing
    for each, presences in seen.items():
        if node is not None:
            presences = {n: p for n, p in presences.items() if n == node}
        prefix = "" if app is not None else f"{each}/"
        for name in sorted(live_only(presences, out, prefix)):
            targets.append(Target(prefix + name, each, name))
    return targets


def _valid_name(name: str) -> bool:
    try:
        check_name("app", name)
    except InvalidValue:
        return False
    return True


# --- deploy ------------------------------------------------------------------------------------


def cmd_deploy(args: argparse.Namespace) -> int:
    app, ref = _words(args, "deploy", ["APP", "REF"])
    check_word("app", app)
    try:
        cv.check_release(ref, args.source, args.install_script)
    except InvalidRelease as exc:
        raise Usage(str(exc)) from None
    if args.node is not None:
        check_word("node", args.node)
    wait = getattr(args, "wait", False)
    timeout = timeout_of(args, wait)

    def work(session: Session) -> int:
        note = Note.of(session, getattr(args, "reason", None), app, args.node)
        return deploy(session, app, ref, args.source, args.install_script, args.node, wait, note)

    return connected(args, timeout, True, work)


def deploy(
    session: Session,
    app: str,
    ref: str,
    source: str | None,
    install_script: str | None,
    node: str | None,
    wait: bool,
    note: Note,
    out: TextIO | None = None,
) -> int:
    """Compare-and-set on the release znode: two operators deploying at once
    must not silently overwrite each other, so a change between our read and
    our write refuses the write."""
    out = out or sys.stdout
    root = session.root
    app_path = fleet.release_path(root, app)
    path = fleet.node_release_path(root, app, node) if node else app_path
    current, stat = read_release(session, path)
    base = current if current is not None or not node else read_release(session, app_path)[0]
    if base is not None and base.release is None and (source is None or install_script is None):
        raise CommandError(
            f"the current release is unreadable ({base.error}); "
            "pass --source and --install-script to replace it",
            EXIT_INVALID,
        )
    if base is not None and base.release is not None:
        source = source or base.release.source
        install_script = install_script or base.release.install_script
    if source is None:
        raise CommandError(
            f"no current release of app {app} to take the source from: pass --source URL",
            EXIT_INVALID,
        )
    try:
        release = Release(
            ref, source, install_script or DEFAULT_INSTALL_SCRIPT, identity(session), time.time()
        )
    except InvalidRelease as exc:
        raise CommandError(str(exc), EXIT_INVALID) from None
    change = Change(
        "release",
        _release_words(current.release) if current is not None else None,
        _release_words(release),
    )
    note_it = partial(
        note.add, action="canary" if node else "deploy", target=path, changes=[change]
    )
    written = write_release(session, path, encode_value(release.to_doc()), stat, note_it)
    session.written = True
    what = f"node {node} of app {app}" if node else f"app {app}"
    print(
        f"release of {what} is now {ref} from {display_source(source)} "
        f"(release version {written.mzxid})",
        file=out,
        flush=True,
    )
    if not wait:
        return EXIT_OK
    return _wait_for_release(session, app, node, DesiredRelease(path, written.mzxid, release), out)


def _release_words(release: Release | None) -> str:
    if release is None:
        return "(unreadable)"
    return f"{release.ref} from {display_source(release.source)}"


def write_release(
    session: Session,
    path: str,
    data: bytes,
    stat: ZnodeStat | None,
    note_it: Callable[[TransactionRequest], None],
) -> ZnodeStat:
    """The release and its audit entry, in one transaction."""
    client = session.client
    txn = client.transaction()
    if stat is None:
        client.ensure_path(path.rsplit("/", 1)[0])
        txn.create(path, data)
    else:
        txn.set_data(path, data, version=stat.version)
    note_it(txn)
    results = commit_change(txn, "writing the release")
    if results is None:
        raise CommandError(
            f"someone else changed the release meanwhile ({path}); nothing written: "
            "look at it (`mozagent fleet`) and deploy again",
            EXIT_FAILED,
        )
    written = results[0] if isinstance(results[0], ZnodeStat) else client.exists(path)
    assert written is not None
    return written


def _wait_for_release(
    session: Session, app: str, node: str | None, wanted: DesiredRelease, out: TextIO
) -> int:
    """``wanted`` is the release as written, at the version the write made:
    a host is done once it installed exactly that (``release_outcome``)."""
    presences = reread(session, lambda: read_presences(session, app))
    if node is not None:
        presences = {n: p for n, p in presences.items() if n == node}
    app_path = fleet.release_path(session.root, app)
    targets, skipped = [], []
    for name, presence in sorted(live_only(presences, out).items()):
        canary = None if node else cv.canary_path(presence, app_path)
        if canary:
            print(f"{name}: canary: follows its own release ({canary}); not waited for", file=out)
            skipped.append(name)
        else:
            targets.append(Target(name, app, name))
    if not targets:
        raise _nothing_to_wait_for(f"node {node} of app {app}" if node else f"app {app}")
    version = wanted.version
    print(f"waiting for {len(targets)} hosts to install release version {version}", file=out)
    poll = _poll_presences(session, targets, lambda p: cv.release_outcome(p, wanted))
    outcomes = follow(session, [t.label for t in targets], poll, out)
    return conclude(session, outcomes, out)


# --- orders ------------------------------------------------------------------------------------


def cmd_order(args: argparse.Namespace) -> int:
    """``order status APP [SEQ]`` or ``order APP NAME``: the word ``status`` first
    means the status command; ``--app`` takes the place of APP in both."""
    words = list(args.words)
    wait = getattr(args, "wait", False)
    status = bool(words) and words[0] == "status"
    if status:
        words = words[1:]
    if args.app is None:
        if not words:
            raise Usage("order takes APP NAME, or status APP [SEQ]")
        app, words = words[0], words[1:]
    else:
        app = args.app
    check_word("app", app)
    nodes = [check_word("node", n) for n in args.nodes] if args.nodes else None
    timeout = timeout_of(args, wait)
    if status:
        if len(words) > 1:
            raise Usage(f"order status takes APP [SEQ] (got {' '.join(args.words)})")
        if nodes is not None:
            raise Usage("--node is for creating an order, not for order status")
        seq = check_word("order", words[0]) if words else None

        def show(session: Session) -> int:
            return order_status(session, app, seq, wait, args.json)

        return connected(args, timeout, False, show)
    if len(words) != 1:
        raise Usage(f"order takes APP NAME (got {' '.join(args.words) or 'nothing'})")
    command = check_word("order command", words[0])

    def create(session: Session) -> int:
        note = Note.of(session, getattr(args, "reason", None), app, None)
        return push_order(session, app, command, nodes, wait, args.json, note)

    return connected(args, timeout, True, create)


def push_order(
    session: Session,
    app: str,
    command: str,
    nodes: list[str] | None,
    wait: bool,
    as_json: bool,
    note: Note,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    client = session.client
    base = fleet.orders_path(session.root, app)
    doc = order_doc(command, identity(session), time.time(), nodes)
    live = live_only(read_presences(session, app))
    missing = sorted(set(nodes or ()) - set(live))
    if wait and (missing or not live):
        # Waiting for a host that is not there could only end in "went away".
        who = f"no such live host: {', '.join(missing)}" if missing else "no live hosts"
        raise CommandError(
            f"app {app} has {who} (no agent's presence under "
            f"{fleet.hosts_path(session.root, app)}); nothing written. Without --wait the "
            "order is pushed anyway, and a host that joins within orders.max_age runs it",
            EXIT_NOTHING,
        )
    client.ensure_path(base)
    txn = client.transaction()
    txn.create(f"{base}/{fleet.ORDER_PREFIX}", json.dumps(doc).encode(), sequence=True)
    on = ", ".join(nodes) if nodes else "every host"
    note.add(txn, "order", base, [Change("order", None, f"{command} on {on}")])
    results = commit_change(txn, "creating the order")
    if results is None:
        raise CommandError(f"{base} changed while the order was created; nothing written")
    path = results[0]
    session.written = True
    name = path.rsplit("/", 1)[1]
    # With --json the name is in the document: stdout stays one JSON value.
    print(name, file=err if as_json and wait else out, flush=True)
    for node in missing:
        print(f"mozagent: warning: {node} is not live now", file=err)
    if not live and nodes is None:
        print(f"mozagent: warning: app {app} has no live hosts now", file=err)
    if not wait:
        return EXIT_OK
    return order_status(session, app, name, True, as_json, out)


def newest_order(session: Session, app: str) -> str:
    listing = session.children(fleet.orders_path(session.root, app))
    names = [n for n in (listing[0] if listing else []) if ORDER_NAME_RE.fullmatch(n)]
    if not names:
        raise CommandError(f"app {app} has no orders", EXIT_NOTHING)
    return max(names, key=order_seq)


def read_order(session: Session, app: str, name: str) -> Order:
    path = fleet.order_path(session.root, app, name)
    found = session.get(path)
    if found is None:
        raise CommandError(f"app {app} has no order {name}", EXIT_NOTHING)
    try:
        return parse_order(name, found[0], found[1].ctime / 1000, path)
    except InvalidOrder as exc:
        raise CommandError(f"order {name} of app {app} is unreadable: {exc}", EXIT_FAILED) from None


def read_results(
    session: Session, app: str, name: str, deadline: float | None = None
) -> dict[str, OrderResult | cv.Unreadable]:
    base = fleet.results_path(session.root, app, name)
    listing = session.children(base, deadline)
    if listing is None:
        return {}
    nodes = [n for n in listing[0] if _valid_name(n)]
    found = session.get_many((f"{base}/{n}" for n in nodes), deadline)
    claims = read_claims(session, app, nodes, deadline)
    results: dict[str, OrderResult | cv.Unreadable] = {}
    for n in nodes:
        hit = found[f"{base}/{n}"]
        if hit is None:
            continue
        why = result_untrusted(claims.get(n), name, hit[0]) if claims is not None else None
        results[n] = (
            cv.Unreadable(f"result not trusted: {why}") if why else cv.parse_result(hit[0], n, name)
        )
    return results


def order_status(
    session: Session,
    app: str,
    seq: str | None,
    wait: bool,
    as_json: bool,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    name = (
        cv.order_name(seq)
        if seq is not None
        else reread(session, lambda: newest_order(session, app))
    )
    order = reread(session, lambda: read_order(session, app, name))
    results: dict[str, OrderResult | cv.Unreadable] = {}
    was_live: set[str] = set()  # a host live earlier in this command that is not now went away

    def poll(deadline: float | None = None) -> dict[str, cv.Standing]:
        live = set(live_only(read_presences(session, app, deadline)))
        results.clear()
        results.update(read_results(session, app, name, deadline))
        outcomes = cv.order_outcomes(order, live, results, was_live)
        was_live.update(live)
        return outcomes

    outcomes = reread(session, poll)
    if not outcomes:
        raise CommandError(
            f"{name}: no targeted host of app {app} is live, and no host answered", EXIT_NOTHING
        )
    if not wait:
        code = cv.exit_code(outcomes, EXIT_IN_PROGRESS)
    else:
        # In JSON mode the document is the output: progress goes nowhere.
        shown = io.StringIO() if as_json else out
        waiting = [node for node, o in outcomes.items() if o.state not in cv.FINAL]
        print(f"{name}: {order.command}: waiting for {len(waiting)} hosts", file=shown)
        for node, outcome in outcomes.items():
            if node not in waiting:
                print(views.progress_line(node, outcome, 0.0), file=shown)
        outcomes = follow(session, waiting, poll, shown, outcomes)
        code = cv.exit_code(outcomes, EXIT_FAILED)
    if as_json:
        doc = views.order_json(name, order, outcomes, results)
        doc["exit_code"] = code
        out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return code
    if not wait:
        out.write(views.format_order(name, order, outcomes, results, time.time()))
        return code
    return conclude(session, outcomes, out, f"{name}: ")
