"""The ZooKeeper source: the app's data, read, rendered, handed over as snapshots.

One thread (the *sync* worker) is the only one that reads ZooKeeper and writes
the published Hiera files, so rendering never waits for puppet: a write in
ZooKeeper reaches the files in milliseconds even while puppet runs. Each render
ends by offering an immutable snapshot to the executor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from mozagent.config import Config, ZooKeeperConfig
from mozagent.desired.layers import ResolvedLayer, layer_paths
from mozagent.render.hieradata import HieraData
from mozagent.render.snapshot import Snapshot
from mozagent.report.status import StatusStore, when
from mozagent.runtime import Worker
from mozagent.sources.zkreader import ZooKeeperReader
from mozagent.zkauth import Tls, read_credentials, tls_problem
from mozagent.zkclient import CONNECTION_ERRORS, make_client

log = structlog.get_logger("mozagent")


class _StopWhenSet(stop_base):
    """Tenacity stop condition: give up retrying once the agent is shutting down."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event.is_set()


class ZooKeeperSource:
    worker = "sync"

    def __init__(
        self,
        cfg: Config,
        hiera: HieraData,
        offer: Callable[[Snapshot, bool], None],
        current_version: Callable[[], int],
        status: StatusStore,
        health: Worker,
        stopping: threading.Event,
    ) -> None:
        assert cfg.zookeeper is not None and cfg.app is not None
        self.cfg = cfg
        self.z: ZooKeeperConfig = cfg.zookeeper
        self.hiera = hiera
        self._offer = offer
        self._current_version = current_version
        self.status = status
        self.health = health
        self.stopping = stopping
        self._wake = threading.Event()
        identity = read_credentials(self.z.credentials_file) if self.z.credentials_file else None
        self.tls = (
            Tls(self.z.tls_ca, self.z.tls_cert, self.z.tls_key).check() if self.z.tls_ca else None
        )
        self._tls_seen: tuple[float, str | None] = (0.0, None)
        client = make_client(
            self.z.hosts,
            self.z.session_timeout,
            self.z.retry_max,
            identity=identity,
            tls=self.tls,
            root=self.z.root,
        )
        self.reader = ZooKeeperReader(
            client,
            layer_paths(self.z.root, cfg.app, cfg.node),
            self._wake.set,
            self.z.session_timeout,
        )
        self._render_pending = True
        self._reported: list[dict[str, str]] = []

    @property
    def client(self):
        return self.reader.client

    # --- reporting -------------------------------------------------------------

    def _report_layers(self, resolved: list[ResolvedLayer], version: int) -> None:
        layers = {
            r.name: {"path": r.path, "version": r.version, "keys": len(r.values), "stale": r.stale}
            for r in resolved
        }
        self.status.update(layers=layers, data_version=version)
        problems = [p.as_dict() for r in resolved for p in r.problems]
        for p in problems:
            if p not in self._reported:
                log.error("bad_data", where=p["where"], error=p["message"])
        self._reported = problems
        self.status.set_errors("data", problems)

    def report(self) -> None:
        conn = self.reader.connection
        hosts = self.z.hosts
        self.status.update(zookeeper=conn.as_dict(hosts))
        errors = []
        now = time.time()
        if conn.state in ("suspended", "lost") or (
            conn.state == "connecting" and now - conn.since > self.z.connect_timeout
        ):
            # No seconds in the text: it would change, and status.json with it, every tick.
            errors.append(
                {
                    "where": "zookeeper",
                    "message": f"{conn.state}: no connection to {hosts} since "
                    f"{when(conn.since)}; retrying, and the rendered files keep the last "
                    "good data" + self._tls_why(now),
                }
            )
        elif conn.state == "connected" and self.reader.silent_since(now, self._stale_after()):
            errors.append(
                {
                    "where": "zookeeper",
                    "message": f"connected to {hosts}, but no read has succeeded since "
                    f"{when(self.reader.last_ok or conn.since)}; the rendered files keep the "
                    "last good data",
                }
            )
        self.status.set_errors("zookeeper", errors)

    def _tls_why(self, now: float) -> str:
        """Why TLS fails, if it is TLS that fails: one handshake of our own
        every 30 s at most while there is no connection (kazoo says nothing)."""
        if self.tls is None:
            return ""
        checked, why = self._tls_seen
        if now - checked > 30:
            why = tls_problem(self.z.hosts, self.tls, timeout=2.0)
            self._tls_seen = (now, why)
        return f" ({why})" if why else ""

    def _stale_after(self) -> float:
        """How long a connected session may go without a successful read."""
        return 2 * self.z.session_timeout + self.z.connect_timeout

    # --- the sync worker ---------------------------------------------------------

    def sync(self) -> tuple[bool, bool]:
        """Read what changed and render it: (read at least once, data changed)."""
        z = self.z
        retrying = Retrying(
            wait=wait_exponential_jitter(multiplier=z.retry_initial, max=z.retry_max),
            retry=retry_if_exception_type(CONNECTION_ERRORS),
            stop=_StopWhenSet(self.stopping) | stop_after_delay(z.connect_timeout),
            sleep=self.stopping.wait,
            before_sleep=lambda rs: log.warning(
                "zookeeper_read_failed",
                error=repr(rs.outcome.exception()) if rs.outcome else None,
                retry_in=round(rs.upcoming_sleep, 2),
            ),
            reraise=True,
        )
        reader = self.reader
        was_synced = reader.synced
        try:
            for attempt in retrying:
                with attempt:
                    was_synced = reader.synced
                    read = reader.process()
                    reader.probe_if_idle(max(z.session_timeout, 5.0))
        except CONNECTION_ERRORS as exc:
            # The connection is gone; kazoo reconnects and the CONNECTED event wakes us.
            log.warning("zookeeper_unavailable", error=repr(exc))
            self.report()
            return False, False
        self.report()
        if read:
            self._render_pending = True
        if not self._render_pending or not reader.synced:
            return reader.synced, False
        # Cleared only after a render completes: a failed write (disk full) is
        # retried on the next tick instead of waiting for another change.
        snapshot, resolved = self.hiera.render(reader.views, self._current_version())
        self._render_pending = False
        self._report_layers(resolved, snapshot.version)
        # The executor compares with the last snapshot it was offered, not with
        # the files: a render whose bookkeeping failed after the files were
        # written still leads to its run when retried.
        self._offer(snapshot, not was_synced)
        return True, True

    def start(self) -> None:
        self.report()
        self.reader.client.start_async()

    def run(self) -> None:
        resync = self.z.resync_interval
        while not self.stopping.is_set():
            self.health.beat()
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self.stopping.is_set():
                break
            if resync and self.reader.synced and time.monotonic() - self.reader.last_full > resync:
                self.reader.request_full()
            ok, _ = self.health.guarded(self.sync)
            if not ok:
                self.stopping.wait(1.0)

    def wake(self) -> None:
        self._wake.set()

    def once(self) -> None:
        """``daemon --once``: read within connect_timeout; on failure say so and go
        on with the last good data, as the daemon would."""
        z = self.z
        why = f"could not read {z.hosts} within {z.connect_timeout:g} s"
        try:
            self.reader.client.start(timeout=z.connect_timeout)
            synced, _ = self.sync()
        except CONNECTION_ERRORS as exc:
            log.error("zookeeper_unavailable", error=repr(exc), hosts=z.hosts)
            synced = False
        except Exception as exc:
            log.exception("zookeeper_read_failed", error=repr(exc), hosts=z.hosts)
            synced, why = False, f"reading {z.hosts} failed: {exc!r}"
        if not synced:
            self.reader.connection.state = "unreachable"
            self.status.update(zookeeper=self.reader.connection.as_dict(z.hosts))
            message = f"{why}; applied the last good data" + self._tls_why(time.time())
            self.status.set_errors("zookeeper", [{"where": "zookeeper", "message": message}])

    def close(self) -> None:
        try:
            self.reader.client.stop()
            self.reader.client.close()
        except Exception as exc:  # closing a dead connection must not block shutdown
            log.warning("zookeeper_close_failed", error=repr(exc))
        state = self.reader.connection.state
        if state != "unreachable":  # `--once` keeps saying it could not read
            self.status.update(
                zookeeper={"state": "closed", "since": time.time(), "hosts": self.z.hosts}
            )
            self.status.set_errors("zookeeper", [])
