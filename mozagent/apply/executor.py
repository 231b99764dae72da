"""The executor: the one worker that changes the host, one job at a time.

Sources hand it work and nothing else: the ZooKeeper source offers snapshots
of the rendered data, the daemon forwards run requests (SIGHUP, ``mozagent
apply``). Runs of the configs are coalesced by the scheduler (``scheduler``)
and always apply one snapshot, copied to ``<state_dir>/run/`` so that nothing
changes under puppet while it reads. Because only this thread runs appliers,
two jobs never race, and each result goes to its sink (status here).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from mozagent.apply.lanes import Gate, Job, Lane, Phase, pick, waiting
from mozagent.apply.process import ChildRunner, Ledger
from mozagent.apply.puppet import ApplyItem, ApplyResult, PuppetPaths, run_puppet
from mozagent.apply.scheduler import ApplyScheduler
from mozagent.apply.warm import WarmPuppet
from mozagent.config import Config
from mozagent.desired.presence import HostFacts, LastApply, ReleaseStanding, last_apply_of
from mozagent.fileio import write_if_changed
from mozagent.render.hiera import FactsInput, facts_env
from mozagent.render.snapshot import RunLayout, Snapshot, run_files
from mozagent.report.status import StatusStore
from mozagent.runtime import Worker

log = structlog.get_logger("mozagent")

ConfigProvider = Callable[[], list[ApplyItem]]


class Executor:
    worker = "apply"

    def __init__(
        self,
        cfg: Config,
        status: StatusStore,
        health: Worker,
        stopping: threading.Event,
        providers: list[ConfigProvider],
        ledger: Ledger,
        puppet_ref: str | None,
        initial: Snapshot,
    ) -> None:
        self.cfg = cfg
        self.status = status
        self.health = health
        self.stopping = stopping
        self.providers = providers
        # Every child the agent runs, puppet's and every applier's, runs
        # through this: stopped when the agent stops, recorded in the ledger.
        self.runner = ChildRunner(stopping, ledger, health.beat)
        self._apply_cpu = 0.0  # the current apply's puppet CPU seconds
        # Puppet runs forked from a warm parent (puppet.runner: warm), else exec'd.
        self.warm: WarmPuppet | None = None
        if cfg.puppet.runner == "warm":
            self.warm = WarmPuppet(cfg.puppet, cfg.state_dir, self._warm_changed)
        self.puppet_ref = puppet_ref
        a = cfg.apply
        self.scheduler = ApplyScheduler(
            a.min_wait,
            a.max_wait,
            a.interval,
            a.retry_initial,
            a.retry_max,
            a.min_interval,
            a.cpu_per_minute,
        )
        self._cond = threading.Condition()
        self._snapshot = initial
        self._waiting_requests: list[str] = []
        self._next_apply: float | None = None
        # Every other kind of work (apply/lanes.py), in the order registered.
        self.lanes: list[Lane] = []
        # Called after a successful config run (puppet may have made the app's user).
        self.puppet_succeeded: list[Callable[[], None]] = []
        # The data of the last successful run: an offer with the same bytes is
        # applied already, whatever its version (a value set to what it was).
        self._applied: Snapshot | None = None
        self.applied_version: int | None = None
        # The last run as the fleet sees it; a restart starts from the one
        # status.json kept (a failed run must not look healthy until the next).
        self.last_apply: LastApply | None = last_apply_of(status.snapshot().get("last_apply"))
        # The release job's standing, once there is one (the app's code lane).
        self.release_standing: Callable[[], ReleaseStanding] | None = None
        # Set when a puppet run ends with after-puppet work waiting: that work
        # goes next, even if more changes came meanwhile (no starving under a
        # steady stream of data changes).
        self._app_turn = False
        # Called after every job: the fleet report publishes what changed.
        self.listeners: list[Callable[[], None]] = []

    # --- what sources call ------------------------------------------------------

    @property
    def data_version(self) -> int:
        with self._cond:
            return self._snapshot.version

    def offer(self, snapshot: Snapshot, first_read: bool = False) -> None:
        """A new render. Runs only when its data differs from the last one offered;
        the first complete read releases the hold on runs placed at start."""
        with self._cond:
            if not snapshot.same_data(self._snapshot):
                self.scheduler.changed(time.monotonic())
            self._snapshot = snapshot
            if snapshot.same_data(self._applied) and not self.scheduler.pending:
                self._mark_applied(snapshot.version)
            if first_read:
                self.scheduler.release()
            self._cond.notify_all()

    def register(self, lane: Lane) -> None:
        """A kind of work (apply/lanes.py); lanes of one phase go in this order."""
        self.lanes.append(lane)

    def hand(self, offer: Callable[[Any], None]) -> Callable[[Any], None]:
        """``offer`` (a lane's way of taking work from its source) as the source
        calls it: under the executor's lock, then the worker is woken."""

        def handed(item: Any) -> None:
            with self._cond:
                offer(item)
                self._cond.notify_all()

        return handed

    def _mark_applied(self, version: int) -> None:
        """Called with the lock held."""
        if self.applied_version is None or version > self.applied_version:
            self.applied_version = version
            self.status.update(applied_data_version=version)
            self._notify()

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    def _gate(self, once: bool | None) -> Gate:
        """Lock held. ``once``: None in the daemon's loop; for ``daemon --once``
        False before its config run (which is then as good as pending) and True
        after it."""
        sched, now = self.scheduler, time.monotonic()
        if once is not None:
            return Gate(puppet_waiting=not once, after_puppet=once)
        return Gate(
            held=sched.held(now),
            puppet_waiting=sched.pending,
            puppet_running=sched.in_flight,
            app_turn=self._app_turn,
        )

    def _take(self, once: bool | None = None) -> tuple[Job, int] | None:
        """The next lane job and the data version it starts on (lock held)."""
        lane = pick(self.lanes, self._gate(once))
        if lane is None:
            return None
        if lane.phase is Phase.AFTER_PUPPET:
            self._app_turn = False
        job = lane.take(self._snapshot)
        return None if job is None else (job, self._snapshot.version)

    def _run_job(self, job: Job, version: int) -> bool:
        """Status says what the host is doing while a lane's job runs."""
        self.status.update(
            applying={"started": time.time(), "configs": [job.label], "data_version": version}
        )
        try:
            return job.run()
        finally:
            self.status.update(applying=None)
            self._notify()

    def run_lanes(self, after_puppet: bool) -> int:
        """Every lane job there is to run now (``daemon --once``: before its
        config run, then after it), picked as the daemon's loop picks them."""
        count = 0
        while not self.stopping.is_set():
            with self._cond:
                taken = self._take(once=after_puppet)
            if taken is None:
                break
            self._run_job(*taken)
            count += 1
        return count

    def request_run(self, request_ids: list[str] | None = None) -> None:
        """SIGHUP, ``mozagent apply``, start: run the configs soon, data change or not."""
        with self._cond:
            self._waiting_requests.extend(request_ids or [])
            self.scheduler.changed(time.monotonic())
            self._cond.notify_all()

    def hold(self, seconds: float) -> None:
        """Keep runs back while the first read is under way, but not for ever: with
        ZooKeeper down the host still converges on the last good data."""
        with self._cond:
            self.scheduler.hold(time.monotonic() + seconds)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- the worker --------------------------------------------------------------

    def _warm_changed(self) -> None:
        if self.warm is not None:
            self.status.update(puppet_runner=self.warm.info())

    def run(self) -> None:
        """The scheduler runs on the monotonic clock: a clock step at boot must not
        delay runs or cut one short."""
        try:
            self._loop()
        finally:
            if self.warm is not None:
                self.warm.stop()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.health.beat()
            try:
                if self.step():
                    self.health.recovered()
            except Exception as exc:  # never let the executor die
                log.exception("apply_loop_failed", error=repr(exc))
                self.health.crashed(exc)
                self.stopping.wait(1.0)

    def step(self) -> bool:
        """Wait for the next job or run, or run it; True when one was completed."""
        with self._cond:
            taken = self._take()
        if taken is not None:
            self._run_job(*taken)
            return True
        with self._cond:
            now = time.monotonic()
            due = self.scheduler.due(now)
            if due != self._next_apply:
                self._next_apply = due
                wall = None if due is None else time.time() + max(due - now, 0.0)
                self.status.update(next_apply=wall, apply_budget=self.scheduler.budget(now))
            if due is None or due > now:
                self._cond.wait(timeout=1.0 if due is None else min(due - now, 1.0))
                return False
            self.scheduler.started(now)
        ok = False
        self._apply_cpu = 0.0
        try:
            ok = self.apply()
        except Exception as exc:
            log.exception("apply_crashed", error=repr(exc))
            self._record(time.time(), self.data_version, [], 0, f"crashed: {exc!r}")
            raise
        finally:
            with self._cond:
                self.scheduler.finished(time.monotonic(), ok, self._apply_cpu)
                self._app_turn = waiting(self.lanes, Phase.AFTER_PUPPET)
            self._notify()
        return True

    def _prepare_run(
        self, snapshot: Snapshot, item: ApplyItem
    ) -> tuple[PuppetPaths, dict[str, str]]:
        """Copy the snapshot (and a Heat item's inputs) where this item's run,
        and only it, reads them."""
        layout = RunLayout(os.path.join(self.cfg.state_dir, "run"))
        deployment = None
        if item.source == "heat":
            deployment = (item.hiera or {}, item.facts or {})
        for path, content in run_files(
            snapshot, layout, self.cfg.app, self.cfg.node, self.puppet_ref, deployment
        ).items():
            # Rewritten before every run: a power loss cannot make it stale.
            write_if_changed(path, content, 0o600, durable=False)
        paths = PuppetPaths(
            layout.hiera_config, layout.facts_dir, os.path.join(self.cfg.state_dir, "puppet")
        )
        facts = FactsInput(self.cfg.app, self.cfg.node, snapshot.version, self.puppet_ref)
        return paths, facts_env(facts)

    def run_item(self, item: ApplyItem, snapshot: Snapshot | None = None) -> ApplyResult:
        """One puppet run of one config on one snapshot (the current one by default)."""
        if snapshot is None:
            with self._cond:
                snapshot = self._snapshot
        log.info(
            "apply_started",
            config=item.name,
            manifest=item.manifest,
            data_version=snapshot.version,
        )
        paths, env = self._prepare_run(snapshot, item)
        return run_puppet(
            self.cfg.puppet,
            dataclasses.replace(item, env={**env, **item.env}),
            paths,
            self.runner,
            on_line=lambda line: log.debug("puppet", line=line),
            warm=self.warm,
        )

    def apply(self) -> bool:
        """Run every config once, in order, on one snapshot; record and return the result."""
        items = [item for provider in self.providers for item in provider()]
        started = time.time()
        with self._cond:
            snapshot = self._snapshot
            requests, self._waiting_requests = self._waiting_requests, []
        version = snapshot.version
        self.status.update(
            applying={
                "started": started,
                "configs": [i.name for i in items],
                "data_version": version,
            }
        )
        results: list[ApplyResult] = []
        for item in items:
            if self.stopping.is_set():
                break
            result = self.run_item(item, snapshot)
            self._apply_cpu += result.cpu_s  # what the run budget counts
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
        ok = self._record(started, version, results, len(items), message, requests)
        with self._cond:
            # Only data whose last run succeeded counts as applied when it comes
            # again with a new version (a value set to what it was).
            self._applied = snapshot if ok else None
            if ok:
                self._mark_applied(version)
                if self._snapshot.same_data(snapshot):  # same bytes came during the run
                    self._mark_applied(self._snapshot.version)
        if ok:
            for hook in self.puppet_succeeded:
                hook()
        return ok

    def _record(
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
        self.last_apply = LastApply(ok, version, record["ended"], message)
        self.status.update(applying=None, last_apply=record)
        return ok

    def facts(self) -> HostFacts:
        """What the fleet is told of this host's config runs (and, through
        ``release``, of its code): typed, not read back from status.json."""
        with self._cond:
            version = self.applied_version
        release = self.release_standing() if self.release_standing else ReleaseStanding()
        return HostFacts(version, self.last_apply, release)
