"""The fleet report: what this host tells the app's other tools through ZooKeeper.

A node name is held by one live agent at a time, and the ephemeral
``hosts/<node>`` is the claim. An agent that finds it held by another live
session (a second agent configured with the same name) refuses to take
over: it says so in its log and status (``mozagent status`` exits 3), never
writes or deletes the other's presence, publishes no order results and runs
no orders (``holds_name`` gates the executor's order jobs) until the holder
goes; then it takes the name, and orders pushed before that are left to the
previous holder (``took_over``). The one ephemeral it may replace is its own
predecessor's (an agent killed with -9 leaves it until its session times
out): ``<state_dir>/presence.json`` records the session that wrote it, with
the machine's boot id and the agent's pid (and that process's start time).
A session id alone is not enough: a VM cloned or imaged from a running host
carries its presence.json, and would take the real host's live presence for
its predecessor's. So the ephemeral is ours only when it is that session's,
recorded in this very boot, by a process that is no longer running: a kill
-9 and a restart. Anything else (another boot: a clone, or a reboot faster
than the session timeout; or the recorded agent still running) is another
holder, and the agent waits for that session to end (within the session
timeout when its agent is gone) rather than take the name.

Two sinks on one worker, both fed from what the executor recorded:

* presence: an ephemeral ``hosts/<node>`` znode with the agent's version, the
  data version it applied, its last apply and its release. It is rewritten
  after every job and recreated after a session expiry (an ephemeral dies with
  its session), so ``mozagent fleet`` and ``--wait`` see live hosts only.
* order results: each order's result, recorded durably in the state dir by the
  executor first, is published to ``orders/<order>/results/<node>`` and only
  then marked published, so a crash or an outage delays a result, never loses
  it.

The worker never blocks the executor: jobs only wake it.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from kazoo.client import KazooState, TransactionRequest
from kazoo.exceptions import NodeExistsError, NoNodeError, RolledBackError
from kazoo.protocol.states import EventType, WatchedEvent, ZnodeStat

from mozagent import __version__
from mozagent.desired.claims import HostClaim
from mozagent.desired.fleet import claim_path, host_path, result_path
from mozagent.desired.keys import InvalidValue
from mozagent.desired.orders import OrderResult
from mozagent.desired.presence import HostFacts, Presence
from mozagent.desired.schema import clean
from mozagent.fileio import read_json_object, write_json
from mozagent.report.status import StatusStore
from mozagent.runtime import Worker, run_woken
from mozagent.zkacl import PolicyClient, Refused
from mozagent.zkclient import CONNECTION_ERRORS, describe

log = structlog.get_logger("mozagent")

# Where this machine's boot id is read. MOZAGENT_BOOT_ID_FILE is a hook for
# tests (a second agent whose file says another boot plays a clone of a host)
# and for a sandbox whose /proc has none.
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
REFUSED_RETRY = 5.0  # s before a refused write is tried again (a fixed policy, a new ACL)
BOOT_ID_ENV = "MOZAGENT_BOOT_ID_FILE"


def read_boot_id(path: str) -> str | None:
    """None where there is none (no /proc): then no presence is ever taken
    for our predecessor's, and a restart waits for the old session to end."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(200).strip()
    except OSError:
        return None
    return clean(text, 64) or None


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot), which tells a pid
    reused within the boot from the process that had it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # The fields after the command name, which may hold spaces and ")":
        # state is field 3 of proc(5), starttime field 22.
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Claim:
    """What ``presence.json`` records about the agent that claimed the name:
    enough to tell its own restart from a copy of its state dir."""

    session: int
    boot_id: str | None = None
    pid: int | None = None
    started: int | None = None
    host: str | None = None

    @classmethod
    def of(cls, doc: dict[str, Any] | None) -> Claim | None:
        """Pure: the record read back; fields of the wrong type are missing,
        which makes its presence another agent's (the safe side)."""

        def number(key: str) -> int | None:
            value = (doc or {}).get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        def text(key: str) -> str | None:
            value = (doc or {}).get(key)
            return value if isinstance(value, str) else None

        session = number("session")
        if session is None:
            return None
        return cls(session, text("boot_id"), number("pid"), number("started"), text("host"))


def agent_running(claim: Claim) -> bool:
    """Whether the process that made the claim still runs on this machine:
    its pid is a mozagent started when the record says (a pid reused by
    anything else, a later agent included, is not it)."""
    if claim.pid is None:
        return True  # cannot tell: the safe side
    try:
        with open(f"/proc/{claim.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    if not any(b"mozagent" in arg for arg in argv):
        return False
    return claim.started is None or process_start(claim.pid) == claim.started


PREDECESSOR, ANOTHER_BOOT, STILL_RUNNING, ANOTHER = (
    "predecessor",
    "another boot",
    "still running",
    "another agent",
)


def relation(
    claim: Claim | None, owner: int, boot_id: str | None, running: Callable[[Claim], bool]
) -> str:
    """Pure but for ``running``: how the ephemeral of session ``owner`` stands
    to this agent's recorded claim. Only a kill -9 and a restart in the same
    boot make it our predecessor's: a clone or a reboot (another boot) and a
    copy of a running agent's state dir (its agent still running) do not."""
    if claim is None or not owner or claim.session != owner:
        return ANOTHER
    if boot_id is None or claim.boot_id != boot_id:
        return ANOTHER_BOOT
    if running(claim):
        return STILL_RUNNING
    return PREDECESSOR


def presence_doc(
    facts: HostFacts, app: str, node: str, boot_id: str | None = None
) -> dict[str, Any]:
    """The presence znode's content, from what this agent's jobs know."""
    presence = Presence.of(
        facts, app, node, __version__, os.getpid(), socket.gethostname(), boot_id
    )
    return presence.to_doc()


def _raise_first(results: list[Any]) -> None:
    """A failed transaction as the error of the operation that failed it."""
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise next((r for r in failed if not isinstance(r, RolledBackError)), failed[0])


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def holder_text(
    node: str,
    path: str,
    stat: ZnodeStat,
    raw: bytes | None,
    why: str = ANOTHER,
    claim: Claim | None = None,
    boot_id: str | None = None,
) -> str:
    """Pure: why this agent does not hold its node name, for status and log."""
    if not stat.ephemeralOwner:
        return (
            f"node name {node} is taken by a persistent znode {path}, which is not an agent's "
            "presence (agents write ephemeral ones): remove it; until then this agent runs "
            "no orders and publishes nothing to the fleet"
        )
    held = f"node name {node} is held by session 0x{stat.ephemeralOwner:x}"
    meanwhile = "until then this agent runs no orders and publishes nothing to the fleet"
    if claim is not None and why == ANOTHER_BOOT:
        return (
            f"{held}, which this agent's state dir records as its own, but from another boot "
            f"(pid {claim.pid} on {clean(claim.host, 80)}, boot {clean(claim.boot_id, 64)}; "
            f"this is boot {clean(boot_id, 64)}): either this machine restarted within the "
            "ZooKeeper session timeout, and the name is taken when that session ends, or this "
            f"machine is a copy (clone, image) of that host, which still holds it; {meanwhile}"
        )
    if claim is not None and why == STILL_RUNNING:
        return (
            f"{held}, which this agent's state dir records as the one of pid {claim.pid}, "
            "still running on this machine: this state dir is a copy of a running agent's; "
            f"{meanwhile}, and the name is taken when the other goes"
        )
    try:
        doc = json.loads(raw or b"")
    except (ValueError, RecursionError):
        doc = None
    doc = doc if isinstance(doc, dict) else {}
    who = f"pid {clean(doc.get('pid', '?'), 20)} on {clean(doc.get('host', '?'), 80)}, "
    return (
        f"node name {node} is held by another live agent ({who}session "
        f"0x{stat.ephemeralOwner:x}): two agents are configured with this node name; this one "
        "runs no orders and publishes nothing to the fleet, and takes the name when the "
        "other goes"
    )


class FleetReport:
    worker = "presence"

    def __init__(
        self,
        client: PolicyClient,
        root: str,
        app: str,
        node: str,
        status: StatusStore,
        facts: Callable[[], HostFacts],
        unpublished: Callable[[], list[OrderResult]],
        published: Callable[[str, str], None],
        health: Worker,
        stopping: threading.Event,
        op_timeout: float,
        claim_file: str | None = None,
        took_over: Callable[[float], None] | None = None,
        boot_id_file: str | None = None,
    ) -> None:
        self.client = client
        self.path = host_path(root, app, node)
        self.root = root
        self.app = app
        self.node = node
        self.status = status  # where this report's own problems are shown
        # What the host's jobs know (typed, from the executor and the release job).
        self.facts = facts
        # The executor's durable records of order results (apply.orders.OrderBook).
        self._unpublished = unpublished
        self._published = published
        self.health = health
        self.stopping = stopping
        self.op_timeout = op_timeout
        self._wake = threading.Event()
        self._wake.set()
        # (session, bytes) of the presence this agent last wrote and watches.
        self._written: tuple[int | None, bytes] | None = None
        # Where the claim on the name is recorded, and what a predecessor
        # recorded there: its ephemeral is ours if it is that one's, from
        # this boot, and its agent is gone (``relation``).
        self.claim_file = claim_file
        self.boot_id = read_boot_id(boot_id_file or os.environ.get(BOOT_ID_ENV) or BOOT_ID_FILE)
        self._started = process_start(os.getpid())
        self._predecessor = self._recorded_claim()
        # Told the server time (s) this agent took its name after another
        # agent held it: orders pushed before are that one's.
        self._took_over = took_over
        self._holds = threading.Event()
        self._refused: str | None = None  # why not, while another holds the name
        # Called when this agent comes to hold its name (the executor runs
        # the orders it held back).
        self.listeners: list[Callable[[], None]] = []
        client.add_listener(self._on_state)

    @property
    def holds_name(self) -> bool:
        """Whether this agent's presence is the live claim on its node name:
        orders run, and results are published, only while it is."""
        return self._holds.is_set()

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._written = None  # the ephemeral went with the session
            self._holds.clear()
        if state == KazooState.CONNECTED:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _on_watch(self, event: WatchedEvent) -> None:
        """Someone deleted our presence (an operator, a test): put it back; or
        the other agent holding our name changed or dropped it: look again. A
        watch, not polling: an idle fleet puts no load on ZooKeeper."""
        if event.type == EventType.DELETED:
            self._written = None
            self._wake.set()
        elif not self._holds.is_set():
            self._wake.set()  # the holder's rewrite used up our watch: re-arm it

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs).get(timeout=self.op_timeout)

    # --- the claim on the node name ---------------------------------------------

    def _recorded_claim(self) -> Claim | None:
        return Claim.of(read_json_object(self.claim_file) if self.claim_file else None)

    def _record_session(self, session: int | None) -> None:
        """Before the claim is made: an agent killed right after making it
        still recognises it. A full disk must not stop the claim: the cost of
        a lost record is a restart that waits for the old session to end."""
        if not self.claim_file or session is None:
            return
        claim = Claim(session, self.boot_id, os.getpid(), self._started, socket.gethostname())
        try:
            write_json(self.claim_file, {**asdict(claim), "path": self.path}, 0o600)
        except OSError as exc:
            log.warning("presence_record_failed", file=self.claim_file, error=str(exc))

    def _create(self, data: bytes, session: int | None) -> bool:
        self._record_session(session)
        try:
            if self._own_claim() is not None and session is not None:
                stat = self._create_vouched(data, session)
            else:
                _, stat = self._call(
                    self.client.create_async,
                    self.path,
                    data,
                    ephemeral=True,
                    makepath=True,
                    include_data=True,
                )
        except NodeExistsError:
            self._wake.set()  # raced with another claim or the old session's end: look again
            return False
        if self._refused is not None and self._took_over is not None:
            self._took_over(stat.ctime / 1000)
        return True

    def _replace_predecessor(self, stat: ZnodeStat, data: bytes, session: int | None) -> bool:
        """Our predecessor's ephemeral, replaced in one transaction that
        deletes it only at the version we looked at: a presence another agent
        created meanwhile is left alone."""
        self._record_session(session)
        t = self.client.transaction()
        t.delete(self.path, version=stat.version)
        t.create(self.path, data, ephemeral=True)
        if session is not None:
            self._vouch_in(t, lambda c: c.with_session(session))
        results = t.commit_async().get(timeout=self.op_timeout)
        if any(isinstance(r, Exception) for r in results):
            self._wake.set()  # it changed under us: look again
            return False
        log.info(
            "presence_replaced",
            predecessor_session=f"0x{stat.ephemeralOwner:x}",
            predecessor_pid=self._predecessor.pid if self._predecessor else None,
        )
        return True

    # --- with per-host identities: the claim that vouches for what we write ----

    def _own_claim(self) -> str | None:
        """Our ``claims/<node>``, if the policy gives this host an identity of its own."""
        policy = self.client.policy
        if policy is None or self.node not in policy.roles(self.app).hosts:
            return None
        return claim_path(self.root, self.app, self.node)

    def _vouch_in(self, t: TransactionRequest, change: Callable[[HostClaim], HostClaim]) -> None:
        """The claim's update, as one more operation of ``t``: the claim and
        what it vouches for are written together or not at all (a twin that
        loses the race for the presence must not have claimed it)."""
        path = self._own_claim()
        if path is None:
            return
        raw, stat = self._call(self.client.get_async, path)
        try:
            claim = HostClaim.parse(raw, path)
        except InvalidValue:
            claim = HostClaim()  # ours to write: a damaged one is replaced
        t.set_data(path, change(claim).encode(), version=stat.version)

    def _create_vouched(self, data: bytes, session: int) -> ZnodeStat:
        t = self.client.transaction()
        self._vouch_in(t, lambda c: c.with_session(session))
        t.create(self.path, data, ephemeral=True)
        _raise_first(t.commit_async().get(timeout=self.op_timeout))
        stat = self._call(self.client.exists_async, self.path)
        if stat is None:
            raise NodeExistsError()  # gone already: look again
        return stat

    def _refuse(self, stat: ZnodeStat, standing: str) -> None:
        """Another session (or a persistent znode) holds our name: hands off.
        The exists watch armed by the look wakes us when it changes or goes."""
        raw = None
        with contextlib.suppress(NoNodeError):
            raw = self._call(self.client.get_async, self.path)[0]
        why = holder_text(
            self.node, self.path, stat, raw, standing, self._predecessor, self.boot_id
        )
        self._holds.clear()
        self._written = None
        if why != self._refused:
            log.warning("node_name_held_elsewhere", node=self.node, path=self.path, reason=why)
            self._refused = why
            self.status.set_errors("presence", [{"where": self.path, "message": why}])

    def _holding(self) -> None:
        if self._refused is not None:
            log.warning("node_name_taken", node=self.node, path=self.path)
            self._refused = None
            self.status.set_errors("presence", [])
        if not self._holds.is_set():
            self._holds.set()
            for listener in self.listeners:
                listener()

    def publish_presence(self) -> None:
        doc = presence_doc(self.facts(), self.app, self.node, self.boot_id)
        session = self.client.client_id[0] if self.client.client_id else None
        # Skipped only when this very session wrote these bytes and re-armed
        # its watch: after an expiry (a new session) it is written again.
        if self._holds.is_set() and (session, encode(doc)) == self._written:
            return
        data = encode({**doc, "updated": time.time()})
        stat = self._call(self.client.exists_async, self.path, watch=self._on_watch)
        if stat is None:
            if not self._create(data, session):
                return
        elif stat.ephemeralOwner == session:
            self._call(self.client.set_async, self.path, data)
        else:
            holder = relation(self._predecessor, stat.ephemeralOwner, self.boot_id, agent_running)
            if holder != PREDECESSOR:
                self._refuse(stat, holder)
                return
            if not self._replace_predecessor(stat, data, session):
                return
        # Re-armed after each write: our own set fires (and uses up) the watch.
        self._call(self.client.exists_async, self.path, watch=self._on_watch)
        self._written = (session, encode(doc))
        self._holding()

    def publish_results(self) -> None:
        for result in self._unpublished():
            path = result_path(self.root, self.app, result.order, self.node)
            data = encode(result.to_doc())
            try:
                self._write_result(False, path, data, result.order)
            except NoNodeError:
                try:
                    # Never makepath: a pruned order must not come back empty.
                    with contextlib.suppress(NodeExistsError):
                        self._call(self.client.create_async, posixpath.dirname(path), b"")
                    self._write_result(True, path, data, result.order)
                except NodeExistsError:
                    self._write_result(False, path, data, result.order)
                except NoNodeError:
                    pass  # the order was pruned meanwhile: nothing to report to
            self._published(result.order, result.state)

    def _write_result(self, create: bool, path: str, data: bytes, order: str) -> None:
        """With a claim of our own, the result and its digest in the claim together."""
        if self._own_claim() is None:
            method = self.client.create_async if create else self.client.set_async
            self._call(method, path, data)
            return
        t = self.client.transaction()
        if create:
            t.create(path, data)
        else:
            t.set_data(path, data)
        self._vouch_in(t, lambda c: c.with_result(order, data))
        _raise_first(t.commit_async().get(timeout=self.op_timeout))

    def step(self) -> None:
        # Cleared before looking: a CONNECTED event after this wakes us again.
        self._wake.clear()
        if not self.client.connected:
            return
        try:
            # Read before each round of writes: what they create carries its ACL.
            self.client.load_policy(self.op_timeout)
            self.publish_presence()
            if self._holds.is_set():  # results under our name only while it is ours
                self.publish_results()
            self.status.set_errors("acl", [])
        except (Refused, InvalidValue) as exc:
            # Refused by the ACLs, or a policy that cannot be used: said in
            # status, nothing written with a wrong ACL, tried again shortly.
            log.error("fleet_report_refused", error=str(exc))
            self.status.set_errors("acl", [{"where": self.path, "message": str(exc)}])
            self.stopping.wait(REFUSED_RETRY)
            self._wake.set()
        except CONNECTION_ERRORS as exc:
            log.warning("fleet_report_failed", error=describe(exc))
            self._wake.set()
            self.stopping.wait(0.5)

    # --- the worker, shaped like the sources ---------------------------------------

    def run(self) -> None:
        run_woken(self.health, self.stopping, self._wake, self.step)

    def once(self) -> None:
        self.health.guarded(self.step)

    def close(self) -> None:
        """Gone with a clean stop at once, not after the session timeout; only
        our own presence, at the version we saw, never another agent's."""
        try:
            session = self.client.client_id[0] if self.client.client_id else None
            if not self.client.connected or session is None:
                return
            stat = self._call(self.client.exists_async, self.path)
            if stat is not None and stat.ephemeralOwner == session:
                self._call(self.client.delete_async, self.path, version=stat.version)
        except Exception as exc:  # a dead connection must not block shutdown
            log.warning("presence_remove_failed", error=repr(exc))
