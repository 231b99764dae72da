"""The daemon: sources → desired state → render → apply → report.

Three threads of our own: the *sync* worker (the only one that reads ZooKeeper,
resolves layers and writes rendered files), the *apply* worker (runs puppet when
the scheduler says so, at most one run at a time), and the main thread (signals,
systemd notify and watchdog). Rendering never waits for puppet, so a write in
ZooKeeper reaches the Hiera files in milliseconds even while puppet runs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from mozagent import __version__
from mozagent.config import Config, PuppetConfig
from mozagent.fileio import (
    lock_holder,
    read_bytes,
    read_json,
    try_lock,
    write_if_changed,
    write_json,
)
from mozagent.health import HEARTBEAT_INTERVAL, Progress, touch_heartbeat
from mozagent.layers import LAYERS, LastGood, ResolvedLayer, ValueCache, layer_paths, resolve_layer
from mozagent.process import Ledger, become_subreaper
from mozagent.puppet import ApplyItem, ApplyResult, PuppetPaths, run_puppet
from mozagent.render import (
    FactsInput,
    LayerRenderer,
    facts_env,
    layer_filename,
    render_facts,
    render_hiera_config,
)
from mozagent.requests import RunRequests
from mozagent.scheduler import ApplyScheduler
from mozagent.sdnotify import notify, watchdog_interval
from mozagent.snapshot import RunLayout, Snapshot, make_snapshot, run_files
from mozagent.status import StatusStore, exit_code, load_status, when
from mozagent.zkclient import CONNECTION_ERRORS, make_client
from mozagent.zkwatch import ZooKeeperSource

log = structlog.get_logger("mozagent")


class ConfigProvider(Protocol):
    """A source of configs to apply. Heat deployments will be another one."""

    def items(self) -> list[ApplyItem]: ...


@dataclass(frozen=True)
class ManifestProvider:
    """The manifests listed in the config file, applied in order."""

    puppet: PuppetConfig

    def items(self) -> list[ApplyItem]:
        return [
            ApplyItem(name=os.path.basename(m), manifest=m, source="config")
            for m in self.puppet.manifests
        ]


class _StopWhenSet(stop_base):
    """Tenacity stop condition: give up retrying once the agent is shutting down."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event.is_set()


def read_puppet_ref(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


class Agent:
    def __init__(self, cfg: Config, mode: str = "daemon") -> None:
        self.cfg = cfg
        self.mode = mode
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self.puppet_ref = read_puppet_ref(cfg.puppet.tree_ref_file)
        previous = load_status(cfg.status_file) or {}
        last_apply = previous.get("last_apply")
        self.status = StatusStore(
            cfg.status_file,
            {
                "app": cfg.app,
                "node": cfg.node,
                "puppet_ref": self.puppet_ref,
                "config_file": cfg.source,
                # A restart must not make a failed run look healthy until the next one.
                "last_apply": last_apply if isinstance(last_apply, dict) else None,
            },
        )
        a = cfg.apply
        self.scheduler = ApplyScheduler(
            a.min_wait, a.max_wait, a.interval, a.retry_initial, a.retry_max
        )
        self.providers: list[ConfigProvider] = [ManifestProvider(cfg.puppet)]
        self._renderer = LayerRenderer()
        self._values = ValueCache()
        self.lastgood = self._load_lastgood()
        # What the next run applies; replaced (never changed) by each render.
        self._snapshot: Snapshot | None = None
        self._written: dict[str, bytes] = {}
        self.zk: ZooKeeperSource | None = None
        if cfg.zookeeper is not None and cfg.app is not None:
            z = cfg.zookeeper
            client = make_client(z.hosts, z.session_timeout, z.retry_max)
            self.zk = ZooKeeperSource(
                client, layer_paths(z.root, cfg.app, cfg.node), self._wake.set, z.session_timeout
            )
        self._threads: list[threading.Thread] = []
        self._started = time.time()
        self._reported: list[dict[str, str]] = []
        self._render_pending = True
        self._lock_fd: int | None = None
        self._apply_requested = threading.Event()
        self._next_apply: float | None = None
        self.progress = Progress()
        self.ledger = Ledger(os.path.join(cfg.state_dir, "running.json"))
        self.requests = RunRequests(cfg.state_dir)
        self._waiting_requests: list[str] = []
        self._crashes: dict[str, int] = {}

    @property
    def data_version(self) -> int:
        return self._snapshot.version if self._snapshot else 0

    # --- state on disk ---------------------------------------------------------

    def _load_lastgood(self) -> dict[str, LastGood]:
        try:
            doc = read_json(self.cfg.lastgood_file) or {}
            if not isinstance(doc, dict):
                raise ValueError("not a mapping")
        except ValueError:
            log.warning("lastgood_unreadable", path=self.cfg.lastgood_file)
            return {}
        out = {}
        for layer, item in doc.items():
            try:
                out[layer] = LastGood(item["path"], int(item["version"]), dict(item["values"]))
            except (KeyError, TypeError, ValueError):
                log.warning("lastgood_entry_ignored", layer=layer, path=self.cfg.lastgood_file)
        return out

    def _save_lastgood(self) -> None:
        """Durable: after a crash with ZooKeeper down, this is the data the host gets."""
        doc = {
            k: {"path": v.path, "version": v.version, "values": v.values}
            for k, v in self.lastgood.items()
        }
        write_json(self.cfg.lastgood_file, doc, 0o600, durable=True)

    # --- render ----------------------------------------------------------------

    def _layer_file(self, layer: str) -> str:
        return os.path.join(self.cfg.hieradata_dir, layer_filename(layer))

    def _initial_snapshot(self) -> Snapshot:
        """Before the first read: the last good data; failing that, the files as
        rendered before (lastgood.json lost), failing that, empty layers."""
        rendered = {}
        for layer in LAYERS:
            lg = self.lastgood.get(layer)
            existing = None if lg else read_bytes(self._layer_file(layer))
            rendered[layer] = existing or self._renderer.render(layer, lg.values if lg else {})
        version = max((lg.version for lg in self.lastgood.values()), default=0)
        return make_snapshot(version, rendered)

    def _publish_files(self, snapshot: Snapshot) -> None:
        """The published copy (``hiera.datadir``, ``hiera.config``, ``facts.path``):
        what people and other puppet runs read. Each file is written only when
        its bytes change."""
        facts = FactsInput(self.cfg.app, self.cfg.node, snapshot.version, self.puppet_ref)
        files: list[tuple[str, bytes, int, bool]] = [
            (self._layer_file(name), content, 0o600, True) for name, content in snapshot.layers
        ]
        files.append(
            (
                self.cfg.hiera_config,
                render_hiera_config(
                    os.path.abspath(self.cfg.hieradata_dir), self.cfg.app, self.cfg.node
                ),
                0o644,
                True,
            )
        )
        # Facts are re-rendered at every start: no fsync needed.
        files.append((self.cfg.facts_file, render_facts(facts), 0o644, False))
        for path, content, mode, durable in files:
            if self._written.get(path) == content and os.path.exists(path):
                continue
            write_if_changed(path, content, mode, durable)
            self._written[path] = content

    def _publish(self, snapshot: Snapshot) -> bool:
        """Hand a new snapshot to the apply side; True when its data differs.

        Compared with the last *published* snapshot, not with the files on disk:
        a render whose files were written but whose bookkeeping then failed
        (disk full) is retried, and the retry still schedules the run.
        """
        self._publish_files(snapshot)
        with self._cond:
            changed = not snapshot.same_data(self._snapshot)
            self._snapshot = snapshot
            if changed:
                self.scheduler.changed(time.monotonic())
            self._cond.notify_all()
        return changed

    def _render_layers(self) -> tuple[bool, list[ResolvedLayer]]:
        assert self.zk is not None
        resolved = [
            resolve_layer(self.zk.views[layer], self.lastgood.get(layer), self._values)
            for layer in LAYERS
        ]
        rendered = {r.name: self._renderer.render(r.name, r.values) for r in resolved}
        # Monotonic: a deleted layer has no version of its own to report.
        version = max([self.data_version, *(r.version for r in resolved)])
        snapshot = make_snapshot(version, rendered)
        self._update_lastgood(resolved)
        return self._publish(snapshot), resolved

    def _update_lastgood(self, resolved: list[ResolvedLayer]) -> None:
        changed = False
        for res in resolved:
            if res.stale:
                continue  # the layer could not be read: what we have is already last good
            if not res.exists:
                changed |= self.lastgood.pop(res.name, None) is not None
                continue
            prev = self.lastgood.get(res.name)
            if prev is None or prev.values != res.values or prev.path != res.path:
                self.lastgood[res.name] = LastGood(res.path, res.version, res.values)
                changed = True
        if changed:
            self._save_lastgood()

    def _report_layers(self, resolved: list[ResolvedLayer]) -> None:
        layers = {
            r.name: {"path": r.path, "version": r.version, "keys": len(r.values), "stale": r.stale}
            for r in resolved
        }
        self.status.update(layers=layers, data_version=self.data_version)
        problems = [p.as_dict() for r in resolved for p in r.problems]
        for p in problems:
            if p not in self._reported:
                log.error("bad_data", where=p["where"], error=p["message"])
        self._reported = problems
        self.status.set_errors("data", problems)

    def _report_zookeeper(self) -> None:
        assert self.zk is not None and self.cfg.zookeeper is not None
        z = self.cfg.zookeeper
        conn = self.zk.connection
        self.status.update(zookeeper=conn.as_dict(z.hosts))
        errors = []
        now = time.time()
        if conn.state in ("suspended", "lost") or (
            conn.state == "connecting" and now - conn.since > z.connect_timeout
        ):
            # No seconds in the text: it would change, and status.json with it, every tick.
            errors.append(
                {
                    "where": "zookeeper",
                    "message": f"{conn.state}: no connection to {z.hosts} since "
                    f"{when(conn.since)}; retrying, and the rendered files keep the last "
                    "good data",
                }
            )
        elif conn.state == "connected" and self.zk.silent_since(now, self._zk_stale_after()):
            errors.append(
                {
                    "where": "zookeeper",
                    "message": f"connected to {z.hosts}, but no read has succeeded since "
                    f"{when(self.zk.last_ok or conn.since)}; the rendered files keep the last "
                    "good data",
                }
            )
        self.status.set_errors("zookeeper", errors)

    def _zk_stale_after(self) -> float:
        """How long a connected session may go without a successful read."""
        assert self.cfg.zookeeper is not None
        z = self.cfg.zookeeper
        return 2 * z.session_timeout + z.connect_timeout

    # --- the sync worker ---------------------------------------------------------

    def sync(self) -> bool:
        """Read what changed in ZooKeeper and render it. Returns True once ZooKeeper was read."""
        assert self.zk is not None
        z = self.cfg.zookeeper
        assert z is not None
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
        was_synced = self.zk.synced
        try:
            for attempt in retrying:
                with attempt:
                    was_synced = self.zk.synced
                    read = self.zk.process()
                    self.zk.probe_if_idle(max(z.session_timeout, 5.0))
        except CONNECTION_ERRORS as exc:
            # The connection is gone; kazoo reconnects and the CONNECTED event wakes us.
            log.warning("zookeeper_unavailable", error=repr(exc))
            self._report_zookeeper()
            return False
        self._report_zookeeper()
        if read:
            self._render_pending = True
        if not self._render_pending or not self.zk.synced:
            return self.zk.synced
        # Cleared only after a render completes: a failed write (disk full) is
        # retried on the next tick instead of waiting for another change.
        changed, resolved = self._render_layers()
        self._render_pending = False
        self._report_layers(resolved)
        if changed:
            log.info(
                "rendered",
                data_version=self.data_version,
                versions={r.name: r.version for r in resolved},
            )
        if not was_synced:
            with self._cond:
                self.scheduler.release()
                self._cond.notify_all()
        return True

    def _sync_loop(self) -> None:
        assert self.zk is not None and self.cfg.zookeeper is not None
        resync = self.cfg.zookeeper.resync_interval
        while not self.stopping.is_set():
            self.progress.beat("sync")
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self.stopping.is_set():
                break
            if resync and self.zk.synced and time.monotonic() - self.zk.last_full > resync:
                self.zk.request_full()
            try:
                self.sync()
                self._clear_crash("sync")
            except Exception as exc:  # a bug or a full disk must not kill the worker
                log.exception("sync_failed", error=repr(exc))
                self._report_crash("sync", exc)
                self.stopping.wait(1.0)

    # --- the apply worker ------------------------------------------------------

    def _prepare_run(self, snapshot: Snapshot) -> tuple[PuppetPaths, dict[str, str]]:
        """Copy the snapshot where this run, and only this run, reads it."""
        layout = RunLayout(os.path.join(self.cfg.state_dir, "run"))
        for path, content in run_files(
            snapshot, layout, self.cfg.app, self.cfg.node, self.puppet_ref
        ).items():
            # Rewritten before every run: a power loss cannot make it stale.
            write_if_changed(path, content, 0o600, durable=False)
        paths = PuppetPaths(
            layout.hiera_config, layout.facts_dir, os.path.join(self.cfg.state_dir, "puppet")
        )
        facts = FactsInput(self.cfg.app, self.cfg.node, snapshot.version, self.puppet_ref)
        return paths, facts_env(facts)

    def apply(self) -> bool:
        """Run every config once, in order, on one snapshot; record and return the result."""
        items = [item for provider in self.providers for item in provider.items()]
        started = time.time()
        with self._cond:
            snapshot = self._snapshot or self._initial_snapshot()
            requests, self._waiting_requests = self._waiting_requests, []
        version = snapshot.version
        self.status.update(
            applying={
                "started": started,
                "configs": [i.name for i in items],
                "data_version": version,
            }
        )
        paths, env = self._prepare_run(snapshot)
        results: list[ApplyResult] = []
        for item in items:
            if self.stopping.is_set():
                break
            log.info(
                "apply_started", config=item.name, manifest=item.manifest, data_version=version
            )
            result = run_puppet(
                self.cfg.puppet,
                dataclasses.replace(item, env={**env, **item.env}),
                paths,
                self.stopping,
                on_line=lambda line: log.debug("puppet", line=line),
                ledger=self.ledger,
                progress=lambda: self.progress.beat("apply"),
            )
            level = log.info if result.ok else log.error
            level(
                "apply_finished",
                config=item.name,
                ok=result.ok,
                exit_code=result.exit_code,
                message=result.message,
                changed=result.changed,
                failed=result.failed,
                seconds=round(result.ended - result.started, 2),
                **({} if result.ok else {"output": result.output_tail[-10:]}),
            )
            results.append(result)
        aborted = len(results) < len(items) or any(r.message.startswith("aborted") for r in results)
        message = "aborted: the agent stopped" if aborted else None
        return self._record_apply(started, version, results, len(items), message, requests)

    def _record_apply(
        self,
        started: float,
        version: int,
        results: list[ApplyResult],
        planned: int,
        message: str | None = None,
        requests: list[str] | None = None,
    ) -> bool:
        ok = message is None and all(r.ok for r in results) and len(results) == planned
        if message is None:
            message = "nothing to apply" if not planned else ("ok" if ok else "failed")
        record: dict[str, Any] = {
            "started": started,
            "ended": time.time(),
            "ok": ok,
            # A run cut short by a clean stop is not a failure of the host's config.
            "aborted": message.startswith("aborted"),
            "data_version": version,
            "results": [r.as_dict() for r in results],
            "message": message,
        }
        if requests:
            record["requests"] = requests  # `mozagent apply` waits for its id here
        self.status.update(applying=None, last_apply=record)
        return ok

    def _report_crash(self, where: str, exc: BaseException) -> None:
        """Best effort: the status file may be what is failing (disk full).

        Each worker has its own error group, cleared only by its own next
        success, so one worker's recovery never hides the other's crash.
        """
        self._crashes[where] = self._crashes.get(where, 0) + 1
        try:
            self.status.set_errors(
                f"agent.{where}",
                [
                    {
                        "where": f"agent ({where} worker)",
                        "message": f"crashed at {when(time.time())}: {exc!r} "
                        f"({self._crashes[where]} crash(es) since start; see the log)",
                    }
                ],
            )
        except Exception as again:
            log.error("status_write_failed", error=repr(again))

    def _clear_crash(self, where: str) -> None:
        self.status.set_errors(f"agent.{where}", [])

    def _apply_loop(self) -> None:
        """The scheduler runs on the monotonic clock: a clock step at boot must not
        delay runs or cut one short."""
        while not self.stopping.is_set():
            self.progress.beat("apply")
            try:
                if self._apply_step():
                    self._clear_crash("apply")
            except Exception as exc:  # never let the apply worker die
                log.exception("apply_loop_failed", error=repr(exc))
                self._report_crash("apply", exc)
                self.stopping.wait(1.0)

    def _apply_step(self) -> bool:
        """Wait for the next run, or run it; True when a run was completed."""
        with self._cond:
            now = time.monotonic()
            due = self.scheduler.due(now)
            if due != self._next_apply:
                self._next_apply = due
                wall = None if due is None else time.time() + max(due - now, 0.0)
                self.status.update(next_apply=wall)
            if due is None or due > now:
                self._cond.wait(timeout=1.0 if due is None else min(due - now, 1.0))
                return False
            self.scheduler.started(now)
        ok = False
        try:
            ok = self.apply()
        except Exception as exc:
            log.exception("apply_crashed", error=repr(exc))
            self._record_apply(time.time(), self.data_version, [], 0, f"crashed: {exc!r}")
            raise
        finally:
            with self._cond:
                self.scheduler.finished(time.monotonic(), ok)
        return True

    def request_apply(self, request_ids: list[str] | None = None) -> None:
        """SIGHUP or `mozagent apply`: run puppet soon even though no data changed."""
        with self._cond:
            self._waiting_requests.extend(request_ids or [])
            self.scheduler.changed(time.monotonic())
            self._cond.notify_all()

    # --- lifecycle ---------------------------------------------------------------

    @property
    def lock_file(self) -> str:
        return os.path.join(self.cfg.state_dir, "lock")

    def acquire_lock(self, wait: bool) -> bool:
        """One agent per state dir: two would run puppet concurrently and
        overwrite each other's status. The daemon waits; ``--once`` gives up."""
        announced = False
        while True:
            fd = try_lock(self.lock_file)
            if fd is not None:
                self._lock_fd = fd
                return True
            if not wait:
                return False
            if not announced:
                log.warning(
                    "waiting_for_lock", lock=self.lock_file, holder=lock_holder(self.lock_file)
                )
                announced = True
            if self.stopping.wait(1.0):
                return False

    def _announce(self) -> None:
        """Record who runs, so status can tell a live daemon from a dead one."""
        self.status.update(
            agent={
                "version": __version__,
                "pid": os.getpid(),
                "started": self._started,
                "mode": self.mode,
                "stopped": None,
            }
        )

    def _mark_stopped(self) -> None:
        agent = self.status.snapshot()["agent"]
        agent["stopped"] = time.time()
        self.status.update(agent=agent, next_apply=None, applying=None)

    def _recover_previous_run(self) -> None:
        """A previous agent killed mid-run may have left puppet running: stop it
        before this one starts a run of its own."""
        become_subreaper()
        what, killed = self.ledger.recover()
        if what is not None:
            log.warning("previous_run_interrupted", command=what, processes_killed=killed)

    def start(self) -> None:
        self._recover_previous_run()
        self._announce()
        touch_heartbeat(self.cfg.state_dir)
        snapshot = self._initial_snapshot()
        self._publish_files(snapshot)
        now = time.monotonic()
        with self._cond:
            self._snapshot = snapshot
            self.scheduler.changed(now)  # converge the host once at start
            self._waiting_requests.extend(self.requests.take())
            if self.zk is not None:
                assert self.cfg.zookeeper is not None
                # Wait for the first read, but not forever: with ZooKeeper down the
                # host still converges on the last good data.
                self.scheduler.hold(now + self.cfg.zookeeper.connect_timeout)
                self._report_zookeeper()
                self.zk.client.start_async()
        for name, target in (("sync", self._sync_loop), ("apply", self._apply_loop)):
            if name == "sync" and self.zk is None:
                continue
            self.progress.beat(name)
            thread = threading.Thread(target=target, name=f"mozagent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "started",
            version=__version__,
            app=self.cfg.app,
            node=self.cfg.node,
            zookeeper=self.cfg.zookeeper.hosts if self.cfg.zookeeper else None,
            puppet_ref=self.puppet_ref,
        )

    def stop(self) -> None:
        log.info("stopping")
        self.stopping.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.zk is not None:
            try:
                self.zk.client.stop()
                self.zk.client.close()
            except Exception as exc:  # closing a dead connection must not block shutdown
                log.warning("zookeeper_close_failed", error=repr(exc))
            self.status.update(
                zookeeper={
                    "state": "closed",
                    "since": time.time(),
                    "hosts": self.cfg.zookeeper.hosts if self.cfg.zookeeper else None,
                }
            )
            self.status.set_errors("zookeeper", [])
        self._mark_stopped()
        log.info("stopped")

    def healthy(self) -> bool:
        """Every worker made progress recently: the condition for the watchdog
        and the heartbeat alike. Stuck workers are reported in status."""
        stalled = {w: age for w, age in self.progress.stalled().items() if w in self._worker_names}
        errors = [
            {
                "where": f"agent ({worker} worker)",
                "message": f"no progress since {when(time.time() - age)}: the worker is stuck; "
                "systemd's watchdog will restart the agent",
            }
            for worker, age in sorted(stalled.items())
        ]
        self.status.set_errors("agent.health", errors)
        return not stalled

    @property
    def _worker_names(self) -> set[str]:
        return {t.name.removeprefix("mozagent-") for t in self._threads}

    def run_daemon(self) -> int:
        """Run until SIGTERM or SIGINT; SIGHUP asks for an apply."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        # Handlers only set events: taking a lock in a handler can deadlock.
        signal.signal(signal.SIGHUP, lambda *_: self._apply_requested.set())
        if not self.acquire_lock(wait=True):
            return 0  # asked to stop while waiting for the lock
        self.start()
        notify(f"READY=1\nSTATUS=mozagent {__version__} running\nMAINPID={os.getpid()}")
        ping = watchdog_interval()
        tick = min(ping or 1.0, 1.0)
        last_ping = last_beat = 0.0
        while not self.stopping.wait(tick):
            if self._apply_requested.is_set():
                self._apply_requested.clear()
                self.request_apply(self.requests.take())
            if self.zk is not None:
                self._report_zookeeper()
            now = time.monotonic()
            due_ping = bool(ping) and now - last_ping >= (ping or 0)
            due_beat = now - last_beat >= HEARTBEAT_INTERVAL
            if not (due_ping or due_beat):
                continue
            # Pet the watchdog and the heartbeat only while every worker makes
            # progress: a stuck agent must be restarted, and shown as stuck.
            if self.healthy():
                if due_ping:
                    notify("WATCHDOG=1")
                touch_heartbeat(self.cfg.state_dir)
            last_beat = now
            if due_ping:
                last_ping = now
        notify("STOPPING=1")
        self.stop()
        return 0

    def run_once(self) -> int:
        """One full cycle: read ZooKeeper, render, apply. Exit code as ``mozagent status``."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        self._recover_previous_run()
        self._announce()
        ok = False
        try:
            self._snapshot = self._initial_snapshot()
            self._publish_files(self._snapshot)
            if self.zk is not None:
                self._read_once()
            ok = self.apply()
        finally:
            if self.zk is not None:
                self.zk.client.stop()
                self.zk.client.close()
                zk = self.status.snapshot()["zookeeper"]
                if zk.get("state") == "connected":
                    self.status.update(zookeeper={**zk, "state": "closed", "since": time.time()})
            self._mark_stopped()
        code = exit_code(self.status.snapshot())
        log.info("once_finished", ok=ok, exit_code=code)
        return code

    def _read_once(self) -> None:
        """Read ZooKeeper once, within connect_timeout; on failure say so and go on
        with the last good data, as the daemon would."""
        assert self.zk is not None and self.cfg.zookeeper is not None
        z = self.cfg.zookeeper
        why = f"could not read {z.hosts} within {z.connect_timeout:g} s"
        try:
            self.zk.client.start(timeout=z.connect_timeout)
            synced = self.sync()
        except CONNECTION_ERRORS as exc:
            log.error("zookeeper_unavailable", error=repr(exc), hosts=z.hosts)
            synced = False
        except Exception as exc:
            log.exception("zookeeper_read_failed", error=repr(exc), hosts=z.hosts)
            synced, why = False, f"reading {z.hosts} failed: {exc!r}"
        if not synced:
            self.zk.connection.state = "unreachable"
            self.status.update(zookeeper=self.zk.connection.as_dict(z.hosts))
            message = f"{why}; applied the last good data"
            self.status.set_errors("zookeeper", [{"where": "zookeeper", "message": message}])
