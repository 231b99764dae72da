"""The executor's lanes (apply/lanes.py): which job goes next, with fake lanes.

The pure ``pick`` is tested on its own, and the real executor (no puppet: it
has no configs, so a config run is recorded at once) under a steady stream of
data changes, which must not starve after-puppet work (the README's promise).
"""

from __future__ import annotations

import threading
from pathlib import Path

from mozagent.apply.executor import Executor
from mozagent.apply.lanes import Gate, Job, Phase, pick, waiting
from mozagent.apply.process import Ledger
from mozagent.config import parse_config
from mozagent.render.snapshot import Snapshot
from mozagent.report.status import StatusStore
from mozagent.runtime import Progress, Worker


class FakeLane:
    """A lane of our own with ``jobs`` jobs; each records its name in ``ran``."""

    def __init__(self, name: str, phase: Phase, jobs: int, ran: list[str]) -> None:
        self.name = name
        self.phase = phase
        self.jobs = jobs
        self.ran = ran
        self.seen: list[int] = []

    def pending(self) -> bool:
        return self.jobs > 0

    def take(self, snapshot: Snapshot) -> Job | None:
        if not self.jobs:
            return None
        self.jobs -= 1
        self.seen.append(snapshot.version)
        return Job(self.name, lambda: self.ran.append(self.name) is None)


def lanes(ran: list[str]) -> list[FakeLane]:
    return [
        FakeLane("deploy", Phase.BEFORE_PUPPET, 1, ran),
        FakeLane("install", Phase.AFTER_PUPPET, 1, ran),
        FakeLane("order", Phase.AFTER_PUPPET, 2, ran),
    ]


def test_before_puppet_work_goes_ahead_of_a_pending_run_but_not_while_held() -> None:
    ran: list[str] = []
    deploy, install, _ = lanes(ran)
    assert pick([deploy, install], Gate(puppet_waiting=True)) is deploy
    assert pick([deploy, install], Gate(held=True)) is None
    assert pick([deploy, install], Gate(puppet_running=True)) is deploy


def test_after_puppet_work_waits_for_puppet_unless_it_is_its_turn() -> None:
    ran: list[str] = []
    _, install, order = lanes(ran)
    both = [install, order]
    assert pick(both, Gate(puppet_waiting=True)) is None
    assert pick(both, Gate(held=True)) is None
    assert pick(both, Gate(puppet_running=True, app_turn=True)) is None
    assert pick(both, Gate(puppet_waiting=True, app_turn=True)) is install
    assert pick(both, Gate(puppet_waiting=True, after_puppet=True)) is install
    assert pick(both, Gate()) is install  # registration order within a phase
    install.jobs = 0
    assert pick(both, Gate()) is order
    assert waiting(both, Phase.AFTER_PUPPET) and not waiting(both, Phase.BEFORE_PUPPET)


def executor(tmp_path: Path, config_runs: list[int]) -> Executor:
    cfg = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "puppet": {"manifests": [str(tmp_path / "site.pp")]},
            "apply": {"min_wait": 0, "max_wait": 0},
        }
    )
    status = StatusStore(str(tmp_path / "status.json"), {})
    ex = Executor(
        cfg,
        status,
        Worker("apply", Progress(), status),
        threading.Event(),
        [lambda: config_runs.append(ex.data_version) or []],
        Ledger(str(tmp_path / "running.json")),
        None,
        Snapshot(0, ()),
    )
    return ex


def test_a_steady_stream_of_data_changes_does_not_starve_installs_and_orders(
    tmp_path: Path,
) -> None:
    ran: list[str] = []
    config_runs: list[int] = []
    ex = executor(tmp_path, config_runs)
    for lane in lanes(ran):
        ex.register(lane)
    for version in range(1, 40):
        # A data change before every step: a config run is always pending.
        ex.offer(Snapshot(version, (("app", str(version).encode()),)))
        ex.step()
        if len(ran) == 4:
            break
    assert ran == ["deploy", "install", "order", "order"], ran
    assert len(config_runs) <= 4, config_runs  # one config run before each app job
    assert ex.step() is True  # and the configs keep being run on the new data


def test_daemon_once_runs_before_puppet_lanes_then_after_puppet_ones(tmp_path: Path) -> None:
    ran: list[str] = []
    ex = executor(tmp_path, [])
    for lane in lanes(ran):
        ex.register(lane)
    assert ex.run_lanes(after_puppet=False) == 1 and ran == ["deploy"]
    assert ex.apply()
    assert ex.run_lanes(after_puppet=True) == 3
    assert ran == ["deploy", "install", "order", "order"]
