"""When a failed release install is tried again without a new deploy: after
the next good puppet run, and only for a failure that run may have cured (a
full disk, a user puppet creates). A flag left from an earlier failure must
not reinstall a release that has gone in since. The installer is a stand-in
(a fault path of our own code); the real disk-full install is test_agent_chaos's."""

from __future__ import annotations

import time
from pathlib import Path

from mozagent.apply.appcode import ReleaseJob
from mozagent.apply.release import InstallResult
from mozagent.apply.runas import RunAs
from mozagent.desired.fleet import DesiredRelease
from mozagent.desired.release import Release
from mozagent.report.status import StatusStore


class Installer:
    """Answers each install with the next planned outcome: "ok", "full", "fails"."""

    def __init__(self) -> None:
        self.plan: list[str] = []
        self.installs: list[str] = []

    def __call__(self, user: RunAs) -> Installer:
        return self

    def install(self, release: Release, data: object) -> InstallResult:
        outcome = self.plan.pop(0)
        self.installs.append(release.ref)
        now = time.time()
        message = {"ok": "ok", "full": "cannot install: disk full", "fails": "script exited 1"}
        return InstallResult(
            ok=outcome == "ok", message=message[outcome], ref=release.ref,
            source="file:///srv/git/shop", commit="c" * 40, release_dir=None, log_path=None,
            returncode=0 if outcome == "ok" else 1, started=now, ended=now,
            disk_full=outcome == "full",
        )  # fmt: skip


def job(tmp_path: Path) -> tuple[ReleaseJob, Installer]:
    installer = Installer()
    status = StatusStore(str(tmp_path / "status.json"), {})
    return ReleaseJob(installer, None, "shop", status, lambda: None), installer  # type: ignore[arg-type]


def offer(job: ReleaseJob, ref: str, version: int) -> None:
    job.offer(DesiredRelease("/m/apps/shop/release", version, Release(ref, "file:///srv/git/shop")))


def test_a_disk_full_install_is_tried_again_after_a_good_puppet_run_once(tmp_path: Path) -> None:
    release, installer = job(tmp_path)
    installer.plan = ["full", "ok"]
    offer(release, "v1", 10)
    assert release.run({}) is False
    assert not release.pending()  # not every few seconds on its own
    release.puppet_succeeded()
    assert release.pending() and release.run({}) is True
    release.puppet_succeeded()
    assert not release.pending()  # installed: nothing to try again
    assert installer.installs == ["v1", "v1"]


def test_an_ordinary_failure_waits_for_a_new_deploy(tmp_path: Path) -> None:
    release, installer = job(tmp_path)
    installer.plan = ["fails"]
    offer(release, "v1", 10)
    assert release.run({}) is False
    release.puppet_succeeded()
    assert not release.pending()
    assert installer.installs == ["v1"]


def test_a_release_installed_since_the_disk_full_failure_is_not_installed_again(
    tmp_path: Path,
) -> None:
    release, installer = job(tmp_path)
    installer.plan = ["full", "ok"]
    offer(release, "v1", 10)
    assert release.run({}) is False
    offer(release, "v2", 11)  # a new deploy lands before any puppet run
    assert release.run({}) is True
    release.puppet_succeeded()
    assert not release.pending(), "v2 would be installed a second time"
    assert installer.installs == ["v1", "v2"]
