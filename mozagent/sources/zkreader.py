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
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

from mozagent.desired.keys import Entry, InvalidValue, check_key
from mozagent.desired.layers import LayerView
from mozagent.zkacl import Refused
from mozagent.zkclient import CONNECTION_ERRORS


def why_not(exc: BaseException) -> str:
    """A refusal says which permission (``zkacl.Refused``); others their kind."""
    return str(exc) if isinstance(exc, Refused) else type(exc).__name__


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


class ZooKeeperReader:
    def __init__(
        self,
        client: KazooClient,
        paths: dict[str, str],
        wake: Callable[[], None],
        op_timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.views: dict[str, LayerView] = {
            name: LayerView(name=name, path=path) for name, path in paths.items()
        }
        self._by_path = {path: name for name, path in paths.items()}
        self._wake = wake
        self._op_timeout = op_timeout
        self._hints: deque[WatchedEvent] = deque()
        self._lock = threading.Lock()
        self.connection = Connection(since=time.time())
        # Full re-reads are counted, not flagged: a reconnect that lands while a
        # full read is under way must cause another one after it.
        self._full_requested = 1
        self._full_done = 0
        self.synced = False  # at least one complete read since start
        self.last_full = 0.0
        # Wall-clock time of the last answer from ZooKeeper to any request of
        # ours: a session that is "connected" but never answers is not healthy.
        self.last_ok: float | None = None
        self._dirty_layers: set[str] = set()
        self._dirty_keys: set[str] = set()
        client.add_listener(self._on_state)

    # --- kazoo threads: record and wake, nothing else -----------------------

    def _on_state(self, state: str) -> None:
        """Connection state is recorded here, not on the worker, so status tells
        the truth even while the worker waits on a request."""
        with self._lock:
            now = time.time()
            old = self.connection
            if state == KazooState.CONNECTED:
                self._full_requested += 1
                session = self.client.client_id
                session_id = f"0x{session[0]:x}" if session else None
                sessions = old.sessions + (session_id != old.session_id)
                self.connection = Connection("connected", now, session_id, sessions)
            elif state == KazooState.SUSPENDED:
                self.connection = Connection("suspended", now, old.session_id, old.sessions)
            elif state == KazooState.LOST:
                self._full_requested += 1
                self.connection = Connection("lost", now, None, old.sessions)
        self._wake()

    def _on_watch(self, event: WatchedEvent) -> None:
        self._hints.append(event)
        self._wake()

    # --- worker thread ------------------------------------------------------

    def request_full(self) -> None:
        """Ask for a full re-read: the periodic safety net for watches that never
        fire (ZooKeeper drops events for znodes the agent may no longer read)."""
        with self._lock:
            self._full_requested += 1
        self._wake()

    @property
    def need_full(self) -> bool:
        return self._full_done < self._full_requested

    def process(self) -> bool:
        """Apply pending hints; return True when views may have changed.

        Raises kazoo's connection errors; the caller retries, and the next call
        re-reads everything.
        """
        self._drain()
        if not self.client.connected:
            return False
        if self.need_full:
            with self._lock:
                target = self._full_requested
            # Cleared before reading: what the read itself finds dirty (a layer
            # created while we looked) must survive it.
            self._dirty_layers.clear()
            self._dirty_keys.clear()
            try:
                self._read_all()
            except BaseException:
                self._dirty_layers.update(self._by_path)
                raise
            self._full_done = max(self._full_done, target)
            self.last_full = time.monotonic()
            self.synced = True
            return True
        if not (self._dirty_layers or self._dirty_keys):
            return False
        layers, self._dirty_layers = self._dirty_layers, set()
        keys, self._dirty_keys = self._dirty_keys, set()
        try:
            for path in sorted(layers):
                self._read_layer(self._by_path[path])
            for path in sorted(keys):
                self._read_key(path)
        except BaseException:
            self._dirty_layers |= layers
            self._dirty_keys |= keys
            with self._lock:
                self._full_requested += 1
            raise
        return True

    def _drain(self) -> None:
        while self._hints:
            event = self._hints.popleft()
            if not event.path:
                # A session event delivered to a watcher (no node): re-read everything.
                with self._lock:
                    self._full_requested += 1
            elif event.path in self._by_path:
                self._dirty_layers.add(event.path)
            elif posixpath.dirname(event.path) in self._by_path:
                if event.type == EventType.DELETED:
                    self._dirty_layers.add(posixpath.dirname(event.path))
                self._dirty_keys.add(event.path)

    def _wait(self, pending: Any) -> Any:
        """Bounded wait: kazoo queues requests while it reconnects, without a deadline."""
        try:
            result = pending.get(timeout=self._op_timeout)
        except CONNECTION_ERRORS:
            raise
        except KazooException:
            self.last_ok = time.time()  # an error reply is an answer too
            raise
        self.last_ok = time.time()
        return result

    def probe_if_idle(self, interval: float) -> None:
        """One cheap read when nothing else was read for ``interval`` seconds.

        kazoo's own pings do not prove that the server answers requests (a
        server that accepts the session and then stops answering looked
        "connected" for minutes); this read does, and costs one request per
        interval on an idle agent.
        """
        if not self.client.connected:
            return
        if self.last_ok is not None and time.time() - self.last_ok < interval:
            return
        first = next(iter(self.views.values()))
        self._wait(self.client.exists_async(first.path))

    def silent_since(self, now: float, limit: float) -> bool:
        """Connected for over ``limit`` seconds without one answer in the last ``limit``."""
        c = self.connection
        if c.state != "connected" or now - c.since <= limit:
            return False
        return self.last_ok is None or now - self.last_ok > limit

    def _read_all(self) -> None:
        """Re-read every layer, pipelining requests: one round trip per level."""
        listings = {
            name: self.client.get_children_async(view.path, watch=self._on_watch, include_data=True)
            for name, view in self.views.items()
        }
        fetches: dict[str, list[str]] = {}
        for name, pending in listings.items():
            good = self._listed(self.views[name], pending)
            if good is not None:
                self.views[name].entries = {}
                fetches[name] = good
        self._fetch(fetches)

    def _listed(self, view: LayerView, pending: Any) -> list[str] | None:
        """Apply a children listing to the view; the valid key names, or None."""
        try:
            children, stat = self._wait(pending)
        except NoNodeError:
            self._layer_missing(view)
            return None
        except CONNECTION_ERRORS:
            raise
        except KazooException as exc:
            # e.g. NoAuthError: the layer keeps its last good data and says why.
            view.error = f"cannot read the layer: {why_not(exc)}"
            return None
        view.error = None
        good, bad = [], set()
        for child in children:
            try:
                good.append(check_key(child))
            except InvalidValue:
                bad.add(child)
        view.exists = True
        view.version = stat.pzxid
        view.bad_names = bad
        return good

    def _fetch(self, wanted: dict[str, list[str]]) -> None:
        pending = {
            (name, key): self.client.get_async(
                f"{self.views[name].path}/{key}", watch=self._on_watch
            )
            for name, keys in wanted.items()
            for key in keys
        }
        for (name, key), result in pending.items():
            self._store(self.views[name], key, result)

    def _store(self, view: LayerView, key: str, pending: Any) -> None:
        try:
            data, stat = self._wait(pending)
        except NoNodeError:
            view.entries.pop(key, None)  # deleted between the listing and the read
            return
        except CONNECTION_ERRORS:
            raise
        except KazooException as exc:
            old = view.entries.get(key)
            view.entries[key] = Entry(
                b"", old.mzxid if old else 0, f"cannot read the znode: {why_not(exc)}"
            )
            return
        view.entries[key] = Entry(data or b"", stat.mzxid, children=stat.numChildren)

    def _layer_missing(self, view: LayerView) -> None:
        view.exists = False
        view.error = None
        view.entries = {}
        view.bad_names = set()
        view.version = 0
        # Arm an exists watch so we learn when the layer is created. If it was
        # created meanwhile, read it again on the next round.
        if self._wait(self.client.exists_async(view.path, watch=self._on_watch)) is not None:
            self._dirty_layers.add(view.path)
            self._wake()

    def _read_layer(self, name: str) -> None:
        view = self.views[name]
        pending = self.client.get_children_async(view.path, watch=self._on_watch, include_data=True)
        good = self._listed(view, pending)
        if good is None:
            return
        for key in set(view.entries) - set(good):
            del view.entries[key]
        self._fetch({name: [k for k in good if k not in view.entries]})

    def _read_key(self, path: str) -> None:
        view = self.views[self._by_path[posixpath.dirname(path)]]
        key = posixpath.basename(path)
        if not view.exists:
            return
        try:
            check_key(key)
        except InvalidValue:
            return
        self._store(view, key, self.client.get_async(path, watch=self._on_watch))
