"""The agent killed, its disk filled, its Heat failing: counted, against a real
ZooKeeper, real puppet, real git and the Heat stub. ``bench/chaos_agent.py``
runs the kill storm with the full counts (``mozagent_dev.agentchaos``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from mozagent.desired.fleet import release_path
from mozagent.fileio import TEMP_SUFFIX
from mozagent_dev import agentchaos
from mozagent_dev.faultproxy import FaultProxy
from mozagent_dev.heatstub import HeatStub, inputs
from mozagent_dev.testing import ZooKeeperServer
from mozagent_dev.zkchaos import APP, client, data_path, put
from tests.apprepo import AppRepo
from tests.conftest import Sandbox, wait_for
from tests.test_heat import HeatBox
from tests.test_isolation import fill

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


# --- a full disk under the state dir and the apps dir ----------------------------


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 16 MiB tmpfs (root can mount one here); unmounted at the end."""
    mount = Path(tempfile.mkdtemp(prefix="mozagent-small-"))
    os.chmod(mount, 0o755)
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        shutil.rmtree(mount, ignore_errors=True)
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def disk_errors(box: Sandbox) -> list[str]:
    return [e["message"] for e in box.status()[1].get("all_errors", []) if e["where"] == "disk"]


@pytest.mark.chaos
def test_a_full_disk_is_named_keeps_the_last_good_files_and_converges_when_space_returns(
    zk_server: ZooKeeperServer, zk_root: str, puppet_bin: str, small_disk: Path
) -> None:
    with chaos_agent(zk_server, zk_root, home=small_disk, apps=small_disk / "apps") as env:
        box, zk = env.box, env.zk
        commands = agentchaos.ORDER_COMMAND.format(marks=env.repo.marks)
        r1 = env.repo.release("r1", commands=commands)
        put(zk, data_path(zk_root, agentchaos.KEY), b"before")
        put(zk, release_path(zk_root, APP), f"ref: r1\nsource: {env.repo.url}\n".encode())
        box.start_daemon()
        wait_for(
            lambda: (
                agentchaos.current_release(env.apps) == (r1, True)
                and "greeting=before " in box.output()
            ),
            timeout=90,
            what="r1 installed and the data applied",
        )
        hieradata = {p.name: p.read_bytes() for p in (box.state / "hieradata").iterdir()}
        fill(small_disk / "filler")
        r2 = env.repo.release("r2", commands=commands)
        put(zk, data_path(zk_root, agentchaos.KEY), b"after")
        put(zk, release_path(zk_root, APP), f"ref: r2\nsource: {env.repo.url}\n".encode())
        messages = wait_for(lambda: disk_errors(box), timeout=60, what="status to say disk full")
        print("status while full:", messages)
        assert any("is full" in m and str(box.state) in m for m in messages), messages
        time.sleep(5)  # the render, the install: each tried against the full disk
        assert box.daemons[-1].poll() is None, "the daemon died on the full disk"
        # The last good state, whole: the rendered files, the output, current.
        assert {p.name: p.read_bytes() for p in (box.state / "hieradata").iterdir()} == hieradata
        assert "greeting=before " in box.output()
        assert agentchaos.current_release(env.apps) == (r1, True)
        temp, unparsed = agentchaos.leftovers(box, env.apps)
        assert not unparsed, unparsed
        os.unlink(small_disk / "filler")
        try:
            wait_for(
                lambda: (
                    agentchaos.current_release(env.apps) == (r2, True)
                    and "greeting=after " in box.output()
                ),
                timeout=120,
                what="r2 and the new data once space returns",
            )
        except TimeoutError:
            print(agentchaos.current_release(env.apps), box.output(), box.status()[1])
            print(box.daemon_log()[-6000:])
            raise
        wait_for(lambda: not disk_errors(box), timeout=30, what="the disk error to clear")
        temp, unparsed = agentchaos.leftovers(box, env.apps)
        assert not temp and not unparsed, (temp, unparsed)
        print("status after:", box.status()[1].get("all_errors"))


# --- Heat failing: 5xx, connections reset, metadata down -------------------------


@pytest.mark.chaos
def test_heat_down_keeps_every_signal_and_status_names_it_until_it_is_back(
    zk_server: ZooKeeperServer, zk_root: str, puppet_bin: str
) -> None:
    """What test_heat covers (5xx on signals only) plus the endpoints
    resetting every connection, metadata included, while a new deployment is
    published: the run's signal waits, the poll recovers, each is sent once."""
    heat_outage(zk_server, zk_root, outage=5.0)


def heat_outage(server: ZooKeeperServer, zk_root: str, outage: float) -> dict[str, int]:
    """Heat's endpoints down for ``outage`` seconds (the bench: minutes);
    returns the signals each deployment got. Asserts, so the bench fails loudly."""
    with chaos_agent(server, zk_root) as env:
        box, stub = env.box, env.stub
        proxy = FaultProxy(stub.port)
        try:
            env.heat.local.write_text(
                json.dumps(
                    {
                        "os-collect-config": {
                            "collectors": ["request", "local"],
                            "request": {"metadata_url": f"http://{proxy.hosts}/metadata"},
                        }
                    }
                )
            )
            via = f"http://{proxy.hosts}"
            first = {**agentchaos.deployment(stub, "h-1")}
            first["inputs"] = inputs("TEMP_URL_SIGNAL", via, "h-1")
            stub.fail_signals = 10_000
            stub.set_metadata({"deployments": [first]})
            box.start_daemon()
            wait_for(lambda: stub.failed >= 2, timeout=60, what="signals answered 503")
            proxy.set_mode("reset")  # every connection, the metadata poll's too
            second = {**agentchaos.deployment(stub, "h-2")}
            second["inputs"] = inputs("TEMP_URL_SIGNAL", via, "h-2")
            stub.set_metadata({"deployments": [first, second]})
            began = time.monotonic()
            pending = wait_for(
                lambda: [
                    d for d in (box.status_doc() or {}).get("deployments", [])
                    if (d.get("signal") or {}).get("state") == "pending"
                    and "reset" in str((d.get("signal") or {}).get("last_error")).lower()
                ],
                timeout=60,
                what="status to name the reset signal",
            )  # fmt: skip
            print("signal while down:", pending[0]["signal"])
            wait_for(
                lambda: any(e["where"].startswith("heat") for e in box.status()[1]["all_errors"]),
                timeout=60,
                what="status to name the failing metadata poll",
            )
            print("errors while down:", box.status()[1]["all_errors"])
            assert not stub.signals
            time.sleep(max(0.0, outage - (time.monotonic() - began)))
            stub.fail_signals = 0
            proxy.set_mode("pass")
            wait_for(
                lambda: stub.signals_for("h-1") and stub.signals_for("h-2"),
                timeout=90,
                what="both signalled after the outage",
            )
            time.sleep(2)
            assert [len(stub.signals_for(d)) for d in ("h-1", "h-2")] == [1, 1], stub.signals
            wait_for(
                lambda: not [e for e in box.status()[1]["all_errors"] if "heat" in e["where"]],
                timeout=60,
                what="the heat errors to clear",
            )
            return {d: len(stub.signals_for(d)) for d in ("h-1", "h-2")}
        finally:
            proxy.close()


def test_temp_files_of_writes_cut_short_by_a_kill_are_removed_at_start(sandbox: Sandbox) -> None:
    """What the full kill storm found (bench/chaos_agent.py): a kill -9 between
    write_atomic's mkstemp and its rename left ``.d-89.json.0s02evtz`` for ever.
    Only the agent's own temp names go: a script deployment's working dir
    (heat/configs) holds the user's files, dotfiles of that shape included."""
    stale = [
        sandbox.state / "heat" / "signals" / f".d-89.json.0s02evtz{TEMP_SUFFIX}",
        sandbox.state / f".status.json.k2j_9x0a{TEMP_SUFFIX}",
    ]
    puppets = sandbox.state / "puppet-warm" / "vardir" / f".state.yaml.abcdefgh{TEMP_SUFFIX}"
    users = [
        sandbox.state / "heat" / "configs" / "d-1" / ".env.template",
        sandbox.state / "heat" / "configs" / "d-1" / ".htaccess.disabled",
    ]
    for path in [*stale, puppets, *users]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    sandbox.start_daemon()
    assert not [p for p in stale if p.exists()]
    assert puppets.exists()  # puppet's vardir is not the agent's
    assert all(p.exists() for p in users)
