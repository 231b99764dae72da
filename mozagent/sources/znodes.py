"""The shape shared by the sources that follow a few znodes of an app's fleet
(its release, its orders): watches as hints, reads on the source's own thread.

As with the data reader, a watch only says "look again": the worker re-reads
everything it follows after any watch, after every (re)connection (watches are
gone with an expired session) and every ``resync`` seconds, so a missed event
costs at most one resync interval, never the change. The few znodes these
sources follow make a whole re-read cheaper than bookkeeping per znode.
"""

from __future__ import annotations

import threading
import time

import structlog
from kazoo.client import KazooClient, KazooState
from kazoo.protocol.states import WatchedEvent, ZnodeStat

from mozagent.runtime import Worker, run_woken
from mozagent.zkclient import CONNECTION_ERRORS

log = structlog.get_logger("mozagent")


class ZnodeSource:
    """Subclasses say what to read (``read``); this runs it when it may have changed."""

    worker = "znodes"

    def __init__(
        self,
        client: KazooClient,
        health: Worker,
        stopping: threading.Event,
        op_timeout: float,
        resync: float,
    ) -> None:
        self.client = client
        self.health = health
        self.stopping = stopping
        self.op_timeout = op_timeout
        self.resync = resync
        self._wake = threading.Event()
        self._wake.set()  # read once as soon as we are connected
        self._last_read = 0.0
        client.add_listener(self._on_state)

    # --- kazoo's threads: note and wake ------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._wake.set()

    def _on_watch(self, event: WatchedEvent) -> None:
        self._wake.set()

    # --- bounded reads for ``read`` ----------------------------------------------

    def exists(self, path: str) -> ZnodeStat | None:
        """Watched whether or not the znode is there, so its creation wakes us."""
        return self.client.exists_async(path, watch=self._on_watch).get(timeout=self.op_timeout)

    def get(self, path: str) -> tuple[bytes, ZnodeStat]:
        return self.client.get_async(path).get(timeout=self.op_timeout)

    def children(self, path: str) -> list[str]:
        return self.client.get_children_async(path, watch=self._on_watch).get(
            timeout=self.op_timeout
        )

    def read(self) -> None:
        raise NotImplementedError

    # --- the Source shape --------------------------------------------------------

    def start(self) -> None:
        """The ZooKeeper source starts the shared client."""

    def report(self) -> None:
        """Connection state is the ZooKeeper source's to show."""

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """The ZooKeeper source closes the shared client."""

    def step(self) -> None:
        # Cleared before looking: a CONNECTED event after this wakes us again.
        self._wake.clear()
        if not self.client.connected:
            return
        try:
            self.read()
        except CONNECTION_ERRORS as exc:
            log.warning(f"{self.worker}_read_failed", error=repr(exc))
            self._wake.set()  # again once connected (the CONNECTED event wakes us too)
            self.stopping.wait(0.5)
            return
        self._last_read = time.monotonic()

    def run(self) -> None:
        run_woken(
            self.health,
            self.stopping,
            self._wake,
            self.step,
            lambda: self.resync > 0 and time.monotonic() - self._last_read > self.resync,
        )

    def once(self) -> None:
        """``daemon --once``: one read, after the ZooKeeper source connected."""
        if self.client.connected:
            self.health.guarded(self.read)
