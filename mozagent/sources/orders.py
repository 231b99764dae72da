"""The orders source: commands an operator pushed to the app's hosts.

``mozagent order`` creates a sequential znode under the app's ``orders``; the
source lists them on every change and hands each one this host has not seen
to the executor, oldest first. Whether it runs (its age, its target nodes, the
app's procfile) is decided there and recorded in the state dir before it runs,
so a restart never runs an order twice. Parsing an order is the executor's
too: a malformed one gets a recorded refusal, like an unknown command. The
source also removes orders older than the retention: any agent of the app may
do it, and racing deletes are harmless.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError, NotEmptyError

from mozagent.desired.fleet import PushedOrder, order_path, orders_path
from mozagent.desired.orders import InvalidOrder, order_seq
from mozagent.runtime import Worker
from mozagent.sources.znodes import ZnodeSource

log = structlog.get_logger("mozagent")


class OrderSource(ZnodeSource):
    worker = "orders"

    def __init__(
        self,
        client: KazooClient,
        root: str,
        app: str,
        seen: Callable[[str], bool],
        offer: Callable[[PushedOrder], None],
        retention: float,
        health: Worker,
        stopping: threading.Event,
        op_timeout: float,
        resync: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(client, health, stopping, op_timeout, resync)
        self.root = root
        self.app = app
        self.path = orders_path(root, app)
        self._seen = seen
        self._offer = offer
        self._offered: set[str] = set()
        self._created: dict[str, float] = {}
        self.retention = retention
        self.clock = clock

    def _names(self) -> list[str]:
        if self.exists(self.path) is None:
            return []  # watched: the first order creates it and wakes us
        try:
            names = self.children(self.path)
        except NoNodeError:
            self._wake.set()
            return []
        ordered = []
        for name in names:
            try:
                ordered.append((order_seq(name), name))
            except InvalidOrder:
                continue  # not an order (a stray znode): nothing to run, nothing to say
        return [name for _, name in sorted(ordered)]

    def read(self) -> None:
        now = self.clock()
        names = self._names()
        # Only what is still listed is remembered: an agent that runs for
        # months must not grow with every order ever pushed.
        self._offered &= set(names)
        self._created = {n: c for n, c in self._created.items() if n in self._offered or n in names}
        for name in names:
            if name in self._offered or self._seen(name):
                continue
            where = order_path(self.root, self.app, name)
            try:
                raw, stat = self.get(where)
            except NoNodeError:
                continue  # pruned meanwhile
            created = self._created[name] = stat.ctime / 1000.0
            if now - created > self.retention:
                self._delete(where)
                continue
            self._offered.add(name)
            self._offer(PushedOrder(name, raw, created, where, now))
        self._prune(names, now)

    def _prune(self, names: list[str], now: float) -> None:
        """Orders past the retention go, whoever created them and whether or not
        this host ran them: their results are history by then. Checked at each
        read (a new order, a resync), from creation times read once per order,
        so an idle fleet costs ZooKeeper nothing here."""
        for name in names:
            where = order_path(self.root, self.app, name)
            if name not in self._created:
                stat = self.client.exists_async(where).get(timeout=self.op_timeout)
                if stat is None:
                    continue
                self._created[name] = stat.ctime / 1000.0
            if now - self._created[name] > self.retention:
                self._delete(where)

    def _delete(self, where: str) -> None:
        """Depth first, each request bounded (kazoo's recursive delete is not)."""
        try:
            self._delete_tree(where)
            log.info("order_pruned", order=where)
        except (NoNodeError, NotEmptyError):
            pass  # another agent is deleting it too, or a result came meanwhile

    def _delete_tree(self, path: str) -> None:
        wait = self.op_timeout
        for child in self.client.get_children_async(path).get(timeout=wait):
            self._delete_tree(f"{path}/{child}")
        self.client.delete_async(path).get(timeout=wait)
