"""The app's own code as executor jobs: installing its release, running its orders.

Both sources only hand work over (a ``DesiredRelease``, an ``Order``); the
executor runs these jobs on its one thread, after puppet, so that puppet has
prepared the host (packages, vhost, the app's user) before code lands or runs.
Each job's result goes to its sinks: status (``mozagent status``) and the
fleet report (presence and order results in ZooKeeper).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from mozagent.apply.lanes import Job, Phase
from mozagent.apply.orders import OrderRunner
from mozagent.apply.release import ReleaseInstaller
from mozagent.apply.runas import NoSuchUser, RunAs, resolve_user
from mozagent.desired.fleet import DesiredRelease, PushedOrder
from mozagent.desired.presence import Installed, LastInstall, ReleaseStanding
from mozagent.desired.release import display_source
from mozagent.desired.schema import SCHEMA_KEY
from mozagent.render.snapshot import Snapshot
from mozagent.report.status import StatusStore

log = structlog.get_logger("mozagent")

PRUNE_EVERY = 3600.0  # seconds between prunings of the local order records

# Stands in for a user that does not exist, only to record the refusal.
NOBODY = RunAs("-", -1, -1, "/")


class ReleaseJob:
    """Installs what the releases source last offered, once per offer.

    A failed install is not retried on its own (the install script would fail
    the same way, every few seconds, for ever); a new offer (another deploy, a
    fixed znode) or a restart tries again. One exception: an install that
    failed because its user does not exist yet is tried again after the next
    successful puppet run, which is what creates users; so is one that failed
    on a full disk (ENOSPC): space coming back is host trouble ending, not the
    release changing, and without it the host would stay on the old release
    until the next deploy. Bookkeeping plus the installer.
    """

    def __init__(
        self,
        installer: Callable[[RunAs], ReleaseInstaller],
        user: str | None,
        app: str,
        status: StatusStore,
        installed: Callable[[], dict[str, Any] | None],
    ) -> None:
        self._installer = installer
        self._installed = installed
        self.user = user
        self.app = app
        self.status = status
        self.desired: DesiredRelease | None = None
        self._done: DesiredRelease | None = None
        self._retry_after_puppet = False
        self.last_install: LastInstall | None = None
        # The releases source and the executor both report: one at a time, so
        # that an older view never lands last.
        self._lock = threading.Lock()
        self._standing = ReleaseStanding()

    name = "release"
    phase = Phase.AFTER_PUPPET

    def offer(self, desired: DesiredRelease) -> None:
        self.desired = desired
        self.show()

    def puppet_succeeded(self) -> None:
        """Puppet may have created the app's user, and a puppet run that went
        through had disk space: try a blocked install again."""
        if self._retry_after_puppet:
            self._retry_after_puppet = False
            self._done = None

    def pending(self) -> bool:
        return self.desired is not None and self.desired != self._done

    def take(self, snapshot: Snapshot) -> Job | None:
        if not self.pending():
            return None
        return Job("release install", lambda: self.run(snapshot.merged))

    def show(self) -> None:
        """What status says of the release (called once the agent holds its lock)."""
        with self._lock:
            self._show()

    def _show(self) -> None:
        errors = []
        if self.desired is not None and self.desired.error:
            errors.append({"where": self.desired.path, "message": self.desired.error})
        elif self.last_install is not None and not self.last_install.ok:
            errors.append(
                {
                    "where": f"release {self.last_install.ref}",
                    "message": f"install failed: {self.last_install.message}",
                }
            )
        self._standing = self._stand()
        self.status.update(release=self._standing.to_doc())
        self.status.set_errors("release", errors)

    def _stand(self) -> ReleaseStanding:
        found = self._installed()
        installed = None
        if found:
            installed = Installed(
                str(found.get("ref") or ""),
                found.get("commit"),
                display_source(found["source"]) if found.get("source") else None,
                found.get("installed"),
                found.get("dir"),
            )
        desired = self.desired.followed() if self.desired else None
        return ReleaseStanding(desired, installed, self.last_install)

    def standing(self) -> ReleaseStanding:
        """The release as the fleet report tells it: as of the last ``show``."""
        with self._lock:
            return self._standing

    def _finished(self, desired: DesiredRelease, ok: bool, message: str, **run: Any) -> LastInstall:
        """How an install went; ``version`` is what `mozagent deploy --wait`
        compares with the znode it wrote."""
        now = time.time()
        rel = desired.release
        return LastInstall(
            ok=ok,
            ref=run.get("ref", rel.ref if rel else None),
            commit=run.get("commit"),
            version=desired.version,
            ended=run.get("ended", now),
            message=message,
            log=run.get("log_path"),
            source=run.get("source", display_source(rel.source) if rel else None),
            path=desired.path,
            started=run.get("started", now),
            returncode=run.get("returncode"),
        )

    def run(self, data: Mapping[str, Any]) -> bool:
        desired = self.desired
        assert desired is not None
        self._done = desired
        if desired.release is None and desired.error is None:
            self.show()  # nothing desired: whatever is installed stays
            return True
        retry = False  # set by a failure that the next good puppet run may cure
        if desired.error is not None:
            result = self._finished(desired, False, desired.error)
        else:
            assert desired.release is not None
            try:
                # Resolved at each install: puppet may have just created the user.
                installer = self._installer(resolve_user(self.user, self.app))
            except NoSuchUser as exc:
                retry = True
                result = self._finished(
                    desired,
                    False,
                    f"cannot run the install script: {exc} (tried again after the next "
                    "successful puppet run)",
                )
            else:
                log.info("release_install_started", **desired.as_dict())
                done = installer.install(desired.release, data)
                retry = done.disk_full and not done.ok
                run = done.as_dict()
                result = self._finished(desired, run.pop("ok"), run.pop("message"), **run)
        # Only this install's failure is retried: a flag left from an earlier
        # one would reinstall a release that went in since.
        self._retry_after_puppet = retry
        self.last_install = result
        (log.info if result.ok else log.error)("release_install_finished", **result.to_doc())
        self.show()
        return result.ok


class OrderQueue:
    """Orders in the order they were pushed; each decided, recorded and run once."""

    def __init__(
        self,
        runner: Callable[[RunAs | str], OrderRunner],
        user: str | None,
        app: str,
        max_age: float,
        retention: float,
        release_dir: Callable[[], str | None],
        status: StatusStore,
        prune: Callable[[float], int],
        allowed: Callable[[], bool] | None = None,
    ) -> None:
        self._runner = runner
        self._prune = prune
        # Orders wait while this agent does not hold its node name (another
        # agent with the same name does: report.fleet); they are judged once it does.
        self._allowed = allowed
        self.user = user
        self.app = app
        self.max_age = max_age
        self.release_dir = release_dir
        self.status = status
        self._queue: deque[PushedOrder] = deque()
        self._recent: deque[dict[str, Any]] = deque(maxlen=10)
        self.retention = retention
        self._pruned = 0.0

    name = "orders"
    phase = Phase.AFTER_PUPPET

    def offer(self, item: PushedOrder) -> None:
        self._queue.append(item)

    def pending(self) -> bool:
        return bool(self._queue) and (self._allowed is None or self._allowed())

    def take(self, snapshot: Snapshot) -> Job | None:
        return Job("order", self.run_next) if self.pending() else None

    def run_next(self) -> bool:
        item = self._queue.popleft()
        try:
            # Resolved at each order: puppet may have just created the user.
            run_as: RunAs | str = resolve_user(self.user, self.app)
        except NoSuchUser as exc:
            run_as = str(exc)  # the order is still judged; it fails only if it would run
        handled = self._runner(run_as).handle(
            item.name,
            item.raw,
            item.created,
            item.where,
            self.release_dir(),
            self.max_age,
            item.seen,
        )
        if handled is None:
            return True
        result = handled
        doc = {k: v for k, v in result.to_doc().items() if k not in ("output", SCHEMA_KEY)}
        (log.info if result.state == "done" else log.error)("order_finished", **doc)
        self._recent.appendleft(doc)
        self.status.update(orders=list(self._recent))
        # Records come only with orders, so they are pruned as orders come.
        if time.time() - self._pruned > PRUNE_EVERY:
            self._pruned = time.time()
            self._prune(self.retention)
        return result.state in ("done", "expired")
