"""The daemon: a thin supervisor that wires sources → render → executor → report.

It owns the lifecycle and the threads, nothing else: the lock on the state dir,
recovery from a predecessor killed mid-run, one thread per source and one for
the executor, and the main thread, which handles signals, pets systemd's
watchdog and the heartbeat while every worker makes progress, and refreshes
what status shows of each source. No component reaches into another's state;
they talk through the executor's ``offer``/``request_run`` and the status store.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from mozagent import __version__
from mozagent.apply import contain
from mozagent.apply.deployments import (
    Applier,
    DeploymentLane,
    DeploymentLog,
    DeploymentQueue,
    DeploymentRunner,
    Reapply,
)
from mozagent.apply.executor import Executor
from mozagent.apply.hook import HookApplier
from mozagent.apply.process import Ledger
from mozagent.apply.puppet import (
    PuppetDeploymentApplier,
    manifest_items,
)
from mozagent.apply.script import ScriptApplier
from mozagent.config import Config, HeatConfig
from mozagent.fileio import lock_holder, private_dir, remove_stale_temps, try_lock
from mozagent.render.hieradata import HieraData
from mozagent.report.health import HEARTBEAT_INTERVAL, touch_heartbeat
from mozagent.report.heat import HeatReport
from mozagent.report.sdnotify import notify, watchdog_interval
from mozagent.report.signals import Outbox, Sender
from mozagent.report.status import StatusStore, exit_code, load_status, when
from mozagent.runtime import Progress, Worker
from mozagent.sources.runrequests import RunRequests

if TYPE_CHECKING:
    from mozagent.apply.appcode import ReleaseJob
    from mozagent.apply.orders import OrderBook
    from mozagent.report.fleet import FleetReport
    from mozagent.sources import Source
    from mozagent.sources.heat import HeatSource
    from mozagent.sources.zookeeper import ZooKeeperSource

log = structlog.get_logger("mozagent")


def read_puppet_ref(path: str | None) -> str | None:
    """The puppet tree's ref baked into the image, shown in status and facts."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


class Daemon:
    def __init__(
        self, cfg: Config, mode: str = "daemon", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg = cfg
        self.mode = mode
        self.stopping = threading.Event()
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
        self.progress = Progress(clock)
        self.workers: set[str] = set()  # the threads whose progress health requires
        self.ledger = Ledger(os.path.join(cfg.state_dir, "running.json"))
        self.requests = RunRequests(cfg.state_dir)
        self.hiera = HieraData(cfg, self.puppet_ref)
        self._initial = self.hiera.initial_snapshot()
        self.executor = Executor(
            cfg,
            self.status,
            Worker("apply", self.progress, self.status),
            self.stopping,
            [lambda: manifest_items(cfg.puppet)],
            self.ledger,
            self.puppet_ref,
            self._initial,
        )
        self.heat: HeatSource | None = None
        self.sender: Sender | None = None
        self.heat_report: HeatReport | None = None
        if cfg.heat is not None:
            self._wire_heat(cfg, cfg.heat)
        self.zookeeper: ZooKeeperSource | None = None
        if cfg.zookeeper is not None and cfg.app is not None:
            # Imported here: a host without ZooKeeper never loads kazoo.
            from mozagent.sources.zookeeper import ZooKeeperSource

            self.zookeeper = ZooKeeperSource(
                cfg,
                self.hiera,
                self.executor.offer,
                lambda: self.executor.data_version,
                self.status,
                Worker("sync", self.progress, self.status),
                self.stopping,
            )
        self.fleet: FleetReport | None = None
        self.release: ReleaseJob | None = None
        self.order_book: OrderBook | None = None
        app_sources: list[Source] = []
        if self.zookeeper is not None:
            app_sources = self._wire_app(cfg, self.zookeeper)
        # Every source has the same shape (sources.Source): started, run on a
        # thread of its own, reported, woken and closed alike. The ZooKeeper
        # source owns the shared session, so it starts first and closes last.
        self.sources: list[Source] = [
            s for s in (self.zookeeper, *app_sources, self.heat) if s is not None
        ]
        self._threads: list[threading.Thread] = []
        self._started = time.time()
        self._lock_fd: int | None = None
        self._run_requested = threading.Event()
        self._containment = "not chosen yet"

    def _wire_heat(self, cfg: Config, h: HeatConfig) -> None:
        """Heat deployments: metadata source → executor jobs → appliers → outbox → sender."""
        from mozagent.apply.zkdata import ZooKeeperDataApplier
        from mozagent.desired.heatdata import GROUP
        from mozagent.sources.heat import HeatSource

        work = os.path.join(cfg.state_dir, "heat")
        log_ = DeploymentLog(cfg.state_dir)
        queue = DeploymentQueue(log_, Reapply(cfg.state_dir))
        outbox = Outbox(cfg.state_dir)
        report = self.heat_report = HeatReport(self.status, log_, outbox)
        children = self.executor.runner
        puppet = PuppetDeploymentApplier(work, self.executor.run_item)
        appliers: dict[str, Applier] = {
            "puppet": puppet,
            "script": ScriptApplier(work, children, h.timeout),
        }
        if cfg.zookeeper is not None:
            # On the data source's session, made after this: looked up at each run.
            appliers[GROUP] = ZooKeeperDataApplier(
                cfg.state_dir,
                lambda: self.zookeeper.client if self.zookeeper is not None else None,
                cfg.zookeeper.root,
            )
        hooks = HookApplier(h.hook_dirs, children, h.timeout)
        sender = self.sender = Sender(
            outbox,
            Worker("signals", self.progress, self.status),
            self.stopping,
            h.signal_retry_max,
            h.request_timeout,
            report.refresh,
        )

        def after() -> None:
            report.refresh()
            sender.wake()

        runner = DeploymentRunner(cfg.state_dir, queue, appliers, hooks, outbox, after)
        self.executor.register(DeploymentLane(queue, runner))

        self.executor.providers.append(lambda: puppet.reapplied(queue))
        self.heat = HeatSource(
            cfg,
            self.executor.hand(queue.offer),
            self.status,
            Worker("heat", self.progress, self.status),
            self.stopping,
        )

    def _wire_app(self, cfg: Config, zk: ZooKeeperSource) -> list[Source]:
        """The app's code: releases and orders sources (on the data source's
        session) → executor jobs → installer and order runner → status and the
        fleet report (presence, order results)."""
        from mozagent.apply.appcode import NOBODY, OrderQueue, ReleaseJob
        from mozagent.apply.orders import OrderBook, OrderRunner
        from mozagent.apply.release import ReleaseInstaller
        from mozagent.apply.runas import RunAs
        from mozagent.report.fleet import FleetReport
        from mozagent.sources.orders import OrderSource
        from mozagent.sources.releases import ReleaseSource

        assert cfg.zookeeper is not None and cfg.app is not None
        app, node, z, r, o = cfg.app, cfg.node, cfg.zookeeper, cfg.releases, cfg.orders
        children = self.executor.runner

        def installer(run_as: RunAs) -> ReleaseInstaller:
            return ReleaseInstaller(
                r.apps_dir,
                app,
                node,
                r.keep,
                run_as,
                children,
                r.timeout,
                r.fetch_timeout,
                git_credentials=r.git_credentials,
            )

        book = self.order_book = OrderBook(cfg.state_dir)

        def runner(run_as: RunAs | str) -> OrderRunner:
            return OrderRunner(book, app, node, run_as, children, o.timeout)

        reader = installer(NOBODY)  # reads what is installed; never runs anything
        release = ReleaseJob(installer, r.user, app, self.status, reader.installed)
        orders = OrderQueue(
            runner, r.user, app, o.max_age, o.retention, reader.current_dir, self.status,
            book.prune, lambda: self.fleet is not None and self.fleet.holds_name,
        )  # fmt: skip
        self.release = release
        self.executor.register(release)
        self.executor.register(orders)
        self.executor.release_standing = release.standing
        self.executor.puppet_succeeded.append(release.puppet_succeeded)
        self.fleet = FleetReport(
            zk.client, z.root, app, node, self.status, self.executor.facts, book.unpublished,
            book.mark_published,
            Worker("presence", self.progress, self.status), self.stopping, z.session_timeout,
            os.path.join(cfg.state_dir, "presence.json"), book.forget_before,
        )  # fmt: skip
        self.fleet.listeners.append(self.executor.wake)  # orders wait for the node name
        self.executor.listeners.append(self.fleet.wake)
        book.listeners.append(self.fleet.wake)
        common = (z.session_timeout, z.resync_interval)
        return [
            ReleaseSource(
                zk.client, z.root, app, node, self.executor.hand(release.offer),
                Worker("releases", self.progress, self.status), self.stopping, *common,
            ),
            OrderSource(
                zk.client, z.root, app, book.seen, self.executor.hand(orders.offer), o.retention,
                Worker("orders", self.progress, self.status), self.stopping, *common,
            ),
        ]  # fmt: skip

    # --- lock and lifecycle records ---------------------------------------------

    @property
    def lock_file(self) -> str:
        return os.path.join(self.cfg.state_dir, "lock")

    def acquire_lock(self, wait: bool) -> bool:
        """One agent per state dir: two would run puppet concurrently and
        overwrite each other's status. The daemon waits; ``--once`` gives up."""
        private_dir(self.cfg.state_dir)
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
        """Record who runs, so status can tell a live daemon from a dead one.
        Called with the lock held: an agent refused the lock writes nothing."""
        if self.release is not None:
            self.release.show()  # what is installed, before anything is desired
        self.status.update(
            agent={
                "version": __version__,
                "pid": os.getpid(),
                "started": self._started,
                "mode": self.mode,
                "stopped": None,
                "containment": self._containment,
            }
        )

    def _mark_stopped(self) -> None:
        agent = self.status.snapshot()["agent"]
        agent["stopped"] = time.time()
        self.status.update(agent=agent, next_apply=None, applying=None)

    def _choose_containment(self) -> bool:
        """How runs are held (apply/contain.py): False when the configured way
        is not to be had, which no restart can fix (exit 2)."""
        try:
            chosen, self._containment = contain.choose(self.cfg.apply.containment)
        except RuntimeError as exc:
            log.error("containment_unavailable", error=str(exc))
            print(f"mozagent: {self.cfg.source}: apply.containment: {exc}", file=sys.stderr)
            return False
        contain.set_default(chosen)
        log.info("containment", runs_held_by=self._containment)
        return True

    def _recover_previous_run(self) -> None:
        """A previous agent killed mid-run may have left puppet running: stop it
        before this one starts a run of its own."""
        contain.become_subreaper()
        what, killed = self.ledger.recover()
        if what is not None:
            log.warning("previous_run_interrupted", command=what, processes_killed=killed)
        if self.order_book is not None:
            # An order it was running is failed, never run again; its result is published.
            for result in self.order_book.recover():
                log.warning("order_interrupted", order=result.order, command=result.command)
            self.order_book.prune(self.cfg.orders.retention)

    # --- threads -----------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        self.workers.add(name)
        self.progress.beat(name)
        thread = threading.Thread(target=target, name=f"mozagent-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self) -> None:
        self._recover_previous_run()
        self._announce()
        touch_heartbeat(self.cfg.state_dir)
        self.hiera.publish(self._initial)
        self.executor.request_run(self.requests.take())  # converge the host once at start
        if self.cfg.zookeeper is not None:
            self.executor.hold(self.cfg.zookeeper.connect_timeout)
        for source in self.sources:
            source.start()
            self._spawn(source.worker, source.run)
        if self.sender is not None and self.heat_report is not None:
            self.heat_report.refresh()
            self._spawn(self.sender.worker, self.sender.run)
        if self.fleet is not None:
            self._spawn(self.fleet.worker, self.fleet.run)
        self._spawn(self.executor.worker, self.executor.run)
        log.info(
            "started",
            version=__version__,
            app=self.cfg.app,
            node=self.cfg.node,
            zookeeper=self.cfg.zookeeper.hosts if self.cfg.zookeeper else None,
            heat=self.heat is not None,
            puppet_ref=self.puppet_ref,
        )

    def stop(self) -> None:
        log.info("stopping")
        self.stopping.set()
        for source in self.sources:
            source.wake()
        if self.sender is not None:
            self.sender.wake()
        self.executor.wake()
        if self.fleet is not None:
            self.fleet.wake()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.fleet is not None:
            self.fleet.close()
        for source in reversed(self.sources):
            source.close()
        self._mark_stopped()
        log.info("stopped")

    def healthy(self) -> bool:
        """Every worker made progress recently: the condition for the watchdog
        and the heartbeat alike. Stuck workers are named in status."""
        stalled = {w: age for w, age in self.progress.stalled().items() if w in self.workers}
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

    # --- modes -------------------------------------------------------------------

    def run_daemon(self) -> int:
        """Run until SIGTERM or SIGINT; SIGHUP asks for a run."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        # Handlers only set events: taking a lock in a handler can deadlock.
        signal.signal(signal.SIGHUP, lambda *_: self._run_requested.set())
        if not self.acquire_lock(wait=True):
            return 0  # asked to stop while waiting for the lock
        for path in remove_stale_temps(self.cfg.state_dir):
            log.info("stale_temp_file_removed", path=path)  # a write a kill -9 cut short
        if not self._choose_containment():
            return 2
        self.start()
        notify(f"READY=1\nSTATUS=mozagent {__version__} running\nMAINPID={os.getpid()}")
        ping = watchdog_interval()
        tick = min(ping or 1.0, 1.0)
        last_ping = last_beat = 0.0
        while not self.stopping.wait(tick):
            if self._run_requested.is_set():
                self._run_requested.clear()
                self.executor.request_run(self.requests.take())
            for source in self.sources:
                source.report()
            now = time.monotonic()
            due_ping = bool(ping) and now - last_ping >= (ping or 0)
            if not (due_ping or now - last_beat >= HEARTBEAT_INTERVAL):
                continue
            # Pet the watchdog and the heartbeat only while every worker makes
            # progress: a stuck agent must be restarted, and shown as stuck.
            if self.healthy():
                if due_ping:
                    notify("WATCHDOG=1")
                touch_heartbeat(self.cfg.state_dir)
            self.status.flush()  # a status.json a full disk kept behind
            last_beat = now
            if due_ping:
                last_ping = now
        notify("STOPPING=1")
        self.stop()
        return 0

    def run_once(self) -> int:
        """One full cycle: read ZooKeeper, render, apply. Exit code as ``mozagent status``."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        if not self._choose_containment():
            return 2
        self._recover_previous_run()
        # One cycle: a warm parent's warm-up would cost what it saves.
        self.executor.warm = None
        self._announce()
        ok = False
        try:
            self.hiera.publish(self._initial)
            for source in self.sources:
                source.once()
            self.executor.run_lanes(after_puppet=False)
            ok = self.executor.apply()
            if self.fleet is not None:
                self.fleet.once()  # claims the node name: orders run only under it
            self.executor.run_lanes(after_puppet=True)
            if self.sender is not None:
                self.sender.run_once()
            if self.fleet is not None:
                self.fleet.once()  # order results; the presence goes with the session
        finally:
            for source in reversed(self.sources):
                source.close()
            self._mark_stopped()
        code = exit_code(self.status.snapshot())
        log.info("once_finished", ok=ok, exit_code=code)
        return code
