"""The fleet report: what this host tells the app's other tools through ZooKeeper.

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
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

from mozagent import __version__
from mozagent.desired.fleet import host_path, result_path
from mozagent.desired.orders import OrderResult
from mozagent.report.health import Worker, run_woken
from mozagent.report.status import StatusStore
from mozagent.zkclient import CONNECTION_ERRORS

log = structlog.get_logger("mozagent")


def presence_doc(status: dict[str, Any], app: str, node: str) -> dict[str, Any]:
    """Pure: the presence znode's content from the status document."""
    last = status.get("last_apply") or None
    release = status.get("release") or {}
    return {
        "node": node,
        "app": app,
        "agent_version": __version__,
        "pid": os.getpid(),
        "data_version": status.get("applied_data_version"),
        "last_apply": None
        if last is None
        else {k: last.get(k) for k in ("ok", "data_version", "ended", "message")},
        "release": {
            "desired": release.get("desired"),
            "installed": release.get("installed"),
            "last_install": release.get("last_install"),
        },
    }


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class FleetReport:
    worker = "presence"

    def __init__(
        self,
        client: KazooClient,
        root: str,
        app: str,
        node: str,
        status: StatusStore,
        unpublished: Callable[[], list[OrderResult]],
        published: Callable[[str, str], None],
        health: Worker,
        stopping: threading.Event,
        op_timeout: float,
    ) -> None:
        self.client = client
        self.path = host_path(root, app, node)
        self.root = root
        self.app = app
        self.node = node
        self.status = status
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
        client.add_listener(self._on_state)

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._written = None  # the ephemeral went with the session
        if state == KazooState.CONNECTED:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _on_watch(self, event: WatchedEvent) -> None:
        """Someone deleted our presence (an operator, a test): put it back. A
        watch, not polling: an idle fleet puts no load on ZooKeeper."""
        if event.type == EventType.DELETED:
            self._written = None
            self._wake.set()

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs).get(timeout=self.op_timeout)

    def _mine(self) -> bool | None:
        """Whether the presence znode belongs to this session (None: absent).
        A predecessor killed with -9 leaves its ephemeral until its session
        times out: that one is replaced, not updated."""
        stat = self._call(self.client.exists_async, self.path)
        if stat is None:
            return None
        return stat.ephemeralOwner == self.client.client_id[0]

    def publish_presence(self) -> None:
        doc = presence_doc(self.status.snapshot(), self.app, self.node)
        session = self.client.client_id[0] if self.client.client_id else None
        # Skipped only when this very session wrote these bytes and re-armed
        # its watch: after an expiry (a new session) it is written again.
        if (session, encode(doc)) == self._written:
            return
        data = encode({**doc, "updated": time.time()})
        mine = self._mine()
        if mine:
            self._call(self.client.set_async, self.path, data)
        else:
            if mine is False:
                with contextlib.suppress(NoNodeError):
                    self._call(self.client.delete_async, self.path)
            try:
                self._call(self.client.create_async, self.path, data, ephemeral=True, makepath=True)
            except NodeExistsError:
                self._wake.set()  # raced with the old session's end: look again
                return
        # Re-armed after each write: our own set fires (and uses up) the watch.
        self._call(self.client.exists_async, self.path, watch=self._on_watch)
        self._written = (session, encode(doc))

    def publish_results(self) -> None:
        for result in self._unpublished():
            path = result_path(self.root, self.app, result.order, self.node)
            data = encode(result.as_dict())
            try:
                self._call(self.client.set_async, path, data)
            except NoNodeError:
                try:
                    # Never makepath: a pruned order must not come back empty.
                    with contextlib.suppress(NodeExistsError):
                        self._call(self.client.create_async, posixpath.dirname(path), b"")
                    self._call(self.client.create_async, path, data)
                except NodeExistsError:
                    self._call(self.client.set_async, path, data)
                except NoNodeError:
                    pass  # the order was pruned meanwhile: nothing to report to
            self._published(result.order, result.state)

    def step(self) -> None:
        # Cleared before looking: a CONNECTED event after this wakes us again.
        self._wake.clear()
        if not self.client.connected:
            return
        try:
            self.publish_presence()
            self.publish_results()
        except CONNECTION_ERRORS as exc:
            log.warning("fleet_report_failed", error=repr(exc))
            self._wake.set()
            self.stopping.wait(0.5)

    # --- the worker, shaped like the sources ---------------------------------------

    def run(self) -> None:
        run_woken(self.health, self.stopping, self._wake, self.step)

    def once(self) -> None:
        self.health.guarded(self.step)

    def close(self) -> None:
        """Gone with a clean stop at once, not after the session timeout."""
        try:
            if self.client.connected and self._mine():
                self._call(self.client.delete_async, self.path)
        except Exception as exc:  # a dead connection must not block shutdown
            log.warning("presence_remove_failed", error=repr(exc))
