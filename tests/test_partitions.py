"""Chaos against a real standalone ZooKeeper (issue 18's faults): forced session
expiry during an install and an order, partitions through a TCP relay between
an agent and ZooKeeper and between the CLI and ZooKeeper, and a server
restarted under a stream of writes. The scenarios live in
``mozagent_dev.zkchaos`` (``bench/chaos_zk.py`` runs them with full counts);
here they run with CI's counts, print what they counted, and assert the
promise: nothing lost, nothing doubled, the truth told.

Each test has a ZooKeeper server of its own: a restart, a SIGSTOPped agent's
expiry or a blackhole must not disturb other tests sharing the suite's server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from mozagent_dev import zkchaos
from mozagent_dev.faultproxy import FaultProxy
from mozagent_dev.testing import ZooKeeperServer, wait_until
from tests.apprepo import AppRepo
from tests.conftest import Sandbox

pytestmark = pytest.mark.chaos

ROOT = "/chaos"
NODE = "web1"
CI_RESTARTS = 15


@pytest.fixture
def server() -> Iterator[ZooKeeperServer]:
    zk = ZooKeeperServer()
    zk.start()
    yield zk
    zk.cleanup()


@pytest.fixture
def zk(server: ZooKeeperServer) -> Iterator[KazooClient]:
    client = zkchaos.client(server.hosts)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def home(puppet_bin: str) -> Iterator[Path]:
    """Not pytest's tmp_path: under root the app's code runs as nobody, which
    must reach its release dir (pytest keeps its base dir 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mozagent-chaos-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def agent_on(home: Path, hosts: str) -> Sandbox:
    """An agent of app shop, node web1, with releases and orders, talking to ``hosts``."""
    (home / "agent").mkdir()
    box = Sandbox(home / "agent", hosts, ROOT)
    box.write_config(**zkchaos.agent_settings(home / "agent", NODE))
    return box


@pytest.fixture
def agents() -> Iterator[list[Sandbox]]:
    started: list[Sandbox] = []
    yield started
    for box in started:
        box.stop_daemons()


def start(box: Sandbox, agents: list[Sandbox], zk: KazooClient) -> None:
    agents.append(box)
    zkchaos.put(zk, zkchaos.data_path(ROOT, "chaos"), b"0")
    box.start_daemon()
    wait_until(lambda: zkchaos.rendered(box).get("chaos") == 0, 60, "the first render")
    wait_until(lambda: zkchaos.presence(zk, ROOT, NODE), 60, "the presence")


# --- the relay itself -----------------------------------------------------------------------


def echo_server() -> tuple[socket.socket, int]:
    """A one-connection-at-a-time echo server, enough to see the relay's modes."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the relay's resets
                while data := conn.recv(4096):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_the_relay_passes_holds_delivering_on_heal_and_resets() -> None:
    listener, port = echo_server()
    proxy = FaultProxy(port)
    try:
        conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        conn.sendall(b"one")
        assert conn.recv(10) == b"one"
        proxy.set_mode("hold")
        conn.sendall(b"two")
        conn.settimeout(1.0)
        with pytest.raises(TimeoutError):
            conn.recv(10)  # held: nothing comes back, and no error either
        proxy.set_mode("pass")
        conn.settimeout(5)
        assert conn.recv(10) == b"two"  # delivered on heal, nothing lost
        proxy.set_mode("reset")
        with pytest.raises(OSError):
            conn.recv(10) or conn.sendall(b"x") or conn.recv(10)
        # An RST, on connect or on the first read; never an EOF.
        with (
            pytest.raises(OSError),
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as fresh,
        ):
            fresh.recv(10)
        assert proxy.aborted >= 2
    finally:
        proxy.close()
        listener.close()


# --- (a) forced session expiry --------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_id", "sigstop"])
def test_session_expiry_during_an_install_and_an_order_loses_and_doubles_nothing(
    method: str, server: ZooKeeperServer, zk: KazooClient, home: Path, agents: list[Sandbox]
) -> None:
    repo = AppRepo(home)
    proxy = zkchaos.ZooKeeperProxy(server)  # passes; it learns the session to expire
    try:
        box = agent_on(home, proxy.hosts)
        start(box, agents, zk)
        reports = zkchaos.expiry_scenario(method, box, repo, proxy, server, zk, ROOT, NODE)
    finally:
        proxy.close()
    for report in reports:
        print(report)
        assert report.ok and report.runs == 1, report
    install, order = reports
    assert install.outcome and order.outcome == "done", reports


# --- (b) partitions -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hold", "reset"])
def test_a_partitioned_agent_says_so_keeps_its_files_and_converges_after_the_heal(
    mode: zkchaos.Mode, server: ZooKeeperServer, zk: KazooClient, home: Path,
    agents: list[Sandbox],
) -> None:  # fmt: skip
    proxy = FaultProxy(server.port)
    try:
        box = agent_on(home, proxy.hosts)
        start(box, agents, zk)
        report = zkchaos.agent_partition(mode, box, proxy, zk, ROOT, NODE, 7)
    finally:
        proxy.close()
    print(report)
    assert report.status_exit == 3 and proxy.hosts in report.status_says, report
    assert report.kept_last_good and report.session_lost and report.converged, report


@pytest.mark.parametrize("case", ["hold-healed", "reset-healed", "hold-to-timeout"])
def test_deploy_wait_across_a_cli_partition_tells_the_truth(
    case: str, server: ZooKeeperServer, zk: KazooClient, home: Path, agents: list[Sandbox]
) -> None:
    repo = AppRepo(home)
    box = agent_on(home, server.hosts)
    start(box, agents, zk)
    report = zkchaos.cli_partition_deploy(case, box, repo, server, zk, ROOT, NODE, "v1")
    print(report.case, report.exit_code, report.written, report.installed)
    print(report.output)
    assert report.truthful, report
    if case != "hold-to-timeout":
        assert report.exit_code == 0 and report.installed, report
    else:  # it wrote, then saw nothing: a failure, never a success
        assert report.exit_code != 0 and report.written, report


# --- (c) restarts under writes --------------------------------------------------------------


def test_restarts_under_writes_lose_no_final_state(
    server: ZooKeeperServer, zk: KazooClient, home: Path, agents: list[Sandbox]
) -> None:
    box = agent_on(home, server.hosts)
    start(box, agents, zk)
    report = zkchaos.restarts_under_writes(server, box, zk, ROOT, CI_RESTARTS, say=print)
    print(
        f"{report.restarts} restarts, {report.writes} writes ({report.retries} retried): "
        f"lost in ZooKeeper {report.lost_in_zookeeper}, lost in the agent {report.lost_in_agent}; "
        f"recovery median {report.recovery_median_s:.2f} s, max {report.recovery_max_s:.2f} s"
    )
    assert report.lost_in_zookeeper == 0 and report.lost_in_agent == 0, report
