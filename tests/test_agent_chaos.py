"""The agent killed, its disk filled, its Heat failing: counted, against a real
ZooKeeper, real puppet, real git and the Heat stub. ``bench/chaos_agent.py``
runs the kill storm with the full counts (``mozagent_dev.agentchaos``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from mozagent_dev import agentchaos
from mozagent_dev.heatstub import HeatStub
from mozagent_dev.testing import ZooKeeperServer
from mozagent_dev.zkchaos import client
from tests.apprepo import AppRepo
from tests.conftest import Sandbox
from tests.test_heat import HeatBox

NODE = "web1"


@dataclass
class ChaosAgent:
    """One agent on ZooKeeper and Heat at once, with releases and orders."""

    box: Sandbox
    heat: HeatBox
    stub: HeatStub
    repo: AppRepo
    zk: KazooClient
    apps: Path


@contextmanager
def chaos_agent(
    server: ZooKeeperServer, zk_root: str, home: Path | None = None, apps: Path | None = None
) -> Iterator[ChaosAgent]:
    """Everything stopped and removed at the end. Not under pytest's tmp_path:
    it is 0700, and under root the app's code runs as nobody. ``home`` and
    ``apps`` put the state dir and the apps dir elsewhere (a small disk)."""
    root = Path(tempfile.mkdtemp(prefix="mozagent-chaos-"))
    os.chmod(root, 0o755)
    stub = HeatStub().start()
    zk = client(server.hosts)
    box = Sandbox(root, server.hosts, zk_root)
    try:
        heat = HeatBox(box, stub)
        apps = apps or root / "apps"
        if home is not None:
            box.state = home / "state"
        box.write_config(
            node=NODE,
            state_dir=str(box.state),
            releases={"apps_dir": str(apps), "keep": 2, "timeout": 60},
            orders={"timeout": 20, "max_age": 3600},
            heat=heat.heat_settings,
        )
        yield ChaosAgent(box, heat, stub, AppRepo(root), zk, apps)
    finally:
        box.stop_daemons()
        stub.stop()
        zk.stop()
        zk.close()
        shutil.rmtree(root, ignore_errors=True)


def storm(
    server: ZooKeeperServer, zk_root: str, counts: agentchaos.Counts, seed: int, timeout: float
) -> agentchaos.Report:
    """The kill storm on a fresh agent; the bench calls it with its counts."""
    with chaos_agent(server, zk_root) as env:
        env.box.start_daemon()
        return agentchaos.kill_storm(
            env.box, env.zk, zk_root, NODE, env.stub, env.repo, env.apps,
            env.box.output, counts, seed, timeout, say=print,
        )  # fmt: skip


def check(report: agentchaos.Report) -> None:
    """Every promise of the kill storm, whatever the kills hit."""
    assert not report.lost_signals, report.lines()
    # A kill after Heat took a signal but before the agent recorded it is sent
    # again (at least once; Heat ignores a repeat): never with another body,
    # and never more than once per kill.
    assert not report.differing_repeats, report.lines()
    assert sum(report.signals.values()) - len(report.signals) <= len(report.kills), report.lines()
    assert not report.doubled_orders, report.lines()
    assert set(report.order_states.values()) <= {"done", "failed"}, report.lines()
    assert report.rendered_value == report.final_value, report.lines()
    assert f"greeting={report.final_value} " in report.puppet_output, report.lines()
    assert report.current == report.last_release and report.current_complete, report.lines()
    assert not report.temp_files and not report.unparsed, report.lines()


@pytest.mark.chaos
def test_kill_9_at_random_moments_loses_nothing_and_doubles_nothing(
    zk_server: ZooKeeperServer, zk_root: str, puppet_bin: str
) -> None:
    report = storm(zk_server, zk_root, agentchaos.Counts(), seed=18, timeout=240)
    print("\n".join(report.lines()))
    check(report)
