"""Keeps ``LayerView``s in step with ZooKeeper using one-shot watches.

Watch callbacks run on kazoo's threads and only record a hint; every read
happens on the agent's one worker thread in ``process()``. A watch is a hint,
not data: the worker re-reads the znode it names (re-arming the watch with the
read), and after every (re)connection it re-reads everything, because watches
can be missed around reconnects and are gone after a session expiry.

Reads are incremental (one znode per data event), so an agent watching 1,000
keys pays for the key that changed, not for the layer.
"""

from __future__ import annotations

import posixpath
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

from mozagent.keys import Entry, InvalidValue, check_key
from mozagent.layers import LayerView


@dataclass
class Connection:
    """What status shows about the ZooKeeper session."""

    state: str = "connecting"
    since: float = 0.0
    session_id: str | None = None
    sessions: int = 0  # how many sessions this agent has had (a new one after each expiry)

    def as_dict(self, hosts: str) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": self.since,
            "session_id": self.session_id,
            "hosts": hosts,
            "sessions": self.sessions,
        }


class ZooKeeperSource:
    def __init__(
        self, client: KazooClient, paths: dict[str, str], wake: Callable[[], None]
    ) -> None:
        self.client = client
        self.views: dict[str, LayerView] = {
            name: LayerView(name=name, path=path) for name, path in paths.items()
        }
        self._by_path = {path: name for name, path in paths.items()}
        self._wake = wake
        self._hints: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self.connection = Connection(since=time.time())
        self.need_full = True
        self.synced = False  # at least one complete read since start
        self._dirty_layers: set[str] = set()
        self._dirty_keys: set[str] = set()
        client.add_listener(self._on_state)

    # --- kazoo threads: record and wake, nothing else -----------------------

    def _on_state(self, state: str) -> None:
        self._hints.append(("state", state))
        self._wake()

    def _on_watch(self, event: WatchedEvent) -> None:
        self._hints.append(("watch", event))
        self._wake()

    # --- worker thread ------------------------------------------------------

    def process(self) -> bool:
        """Apply pending hints; return True when views may have changed.

        Raises kazoo's connection errors; the caller retries, and the next call
        re-reads everything.
        """
        self._drain()
        if not self.client.connected:
            return False
        if self.need_full:
            self.need_full = True  # stays set until the read below completes
            self._read_all()
            self.need_full = False
            self.synced = True
            self._dirty_layers.clear()
            self._dirty_keys.clear()
            return True
        if not (self._dirty_layers or self._dirty_keys):
            return False
        try:
            for path in sorted(self._dirty_layers):
                self._read_layer(self._by_path[path])
            for path in sorted(self._dirty_keys):
                self._read_key(path)
        except BaseException:
            self.need_full = True
            raise
        self._dirty_layers.clear()
        self._dirty_keys.clear()
        return True

    def _drain(self) -> None:
        while self._hints:
            kind, value = self._hints.popleft()
            if kind == "state":
                self._state_changed(value)
                continue
            event: WatchedEvent = value
            if not event.path:
                # A session event delivered to a watcher (no node): re-read everything.
                self.need_full = True
            elif event.path in self._by_path:
                self._dirty_layers.add(event.path)
            elif posixpath.dirname(event.path) in self._by_path:
                if event.type == EventType.DELETED:
                    self._dirty_layers.add(posixpath.dirname(event.path))
                self._dirty_keys.add(event.path)

    def _state_changed(self, state: str) -> None:
        now = time.time()
        if state == KazooState.CONNECTED:
            self.need_full = True
            session = self.client.client_id
            session_id = f"0x{session[0]:x}" if session else None
            if session_id != self.connection.session_id:
                self.connection.sessions += 1
            self.connection = Connection("connected", now, session_id, self.connection.sessions)
        elif state == KazooState.SUSPENDED:
            self.connection = Connection(
                "suspended", now, self.connection.session_id, self.connection.sessions
            )
        elif state == KazooState.LOST:
            self.need_full = True
            self.connection = Connection("lost", now, None, self.connection.sessions)

    def _read_all(self) -> None:
        """Re-read every layer, pipelining requests: one round trip per level."""
        listings = {
            name: self.client.get_children_async(view.path, watch=self._on_watch, include_data=True)
            for name, view in self.views.items()
        }
        fetches: dict[str, dict[str, Any]] = {}
        for name, pending in listings.items():
            view = self.views[name]
            try:
                children, stat = pending.get()
            except NoNodeError:
                self._layer_missing(view)
                continue
            good = self._set_children(view, children, stat.pzxid)
            view.entries = {}
            fetches[name] = {
                key: self.client.get_async(f"{view.path}/{key}", watch=self._on_watch)
                for key in good
            }
        for name, pending_keys in fetches.items():
            view = self.views[name]
            for key, pending in pending_keys.items():
                try:
                    data, stat = pending.get()
                except NoNodeError:
                    continue  # deleted between the listing and the read
                view.entries[key] = Entry(data or b"", stat.mzxid)

    def _layer_missing(self, view: LayerView) -> None:
        view.exists = False
        view.entries = {}
        view.bad_names = set()
        view.version = 0
        # Arm an exists watch: we learn when the layer is created. If it appeared
        # in the meantime, the watch fires at once and we read it next time.
        if self.client.exists(view.path, watch=self._on_watch) is not None:
            self._dirty_layers.add(view.path)

    def _set_children(self, view: LayerView, children: list[str], pzxid: int) -> list[str]:
        good, bad = [], set()
        for child in children:
            try:
                good.append(check_key(child))
            except InvalidValue:
                bad.add(child)
        view.exists = True
        view.version = pzxid
        view.bad_names = bad
        return good

    def _read_layer(self, name: str) -> None:
        view = self.views[name]
        try:
            children, stat = self.client.get_children(
                view.path, watch=self._on_watch, include_data=True
            )
        except NoNodeError:
            self._layer_missing(view)
            return
        good = self._set_children(view, children, stat.pzxid)
        for key in set(view.entries) - set(good):
            del view.entries[key]
        new = [k for k in good if k not in view.entries]
        pending = {k: self.client.get_async(f"{view.path}/{k}", watch=self._on_watch) for k in new}
        for key, result in pending.items():
            try:
                data, kstat = result.get()
            except NoNodeError:
                continue
            view.entries[key] = Entry(data or b"", kstat.mzxid)

    def _read_key(self, path: str) -> None:
        view = self.views[self._by_path[posixpath.dirname(path)]]
        key = posixpath.basename(path)
        if not view.exists:
            return
        try:
            data, stat = self.client.get(path, watch=self._on_watch)
        except NoNodeError:
            view.entries.pop(key, None)
            return
        try:
            check_key(key)
        except InvalidValue:
            return
        view.entries[key] = Entry(data or b"", stat.mzxid)
