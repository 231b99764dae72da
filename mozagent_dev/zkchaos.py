"""Faults against a real ZooKeeper and real agents, counted: the scenarios of
``tests/test_partitions.py`` (small counts, asserted) and ``bench/chaos_zk.py``
(full counts, printed), in one place so the two cannot drift apart.

Each scenario takes the agent as an :class:`Agent` (the test suite's
``Sandbox`` is one): this module never starts an agent of its own, so how an
agent is configured stays the suite's. Faults are forced, never hoped for:
a session is expired by closing it from a second client with its id and
password, or by SIGSTOP until ZooKeeper has dropped the agent's presence; a
partition is a :class:`~mozagent_dev.faultproxy.FaultProxy` held or reset;
a restart is a real stop and start of the server. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss, NoNodeError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError

from mozagent.desired.fleet import host_path, orders_path, release_path, result_path
from mozagent_dev.faultproxy import FaultProxy, Mode
from mozagent_dev.testing import ZooKeeperServer, wait_until

APP = "shop"
RETRYABLE = (ConnectionLoss, SessionExpiredError, KazooTimeoutError)


class Agent(Protocol):
    """What a scenario needs of an agent (``tests.conftest.Sandbox``)."""

    root: Path
    state: Path
    daemons: list[subprocess.Popen[bytes]]

    def start_daemon(self) -> subprocess.Popen[bytes]: ...
    def status_doc(self) -> dict[str, Any] | None: ...
    def cli(self, *args: str, timeout: float = ...) -> subprocess.CompletedProcess[str]: ...


class AppCode(Protocol):
    """The app's git repository (``tests.apprepo.AppRepo``)."""

    marks: Path

    @property
    def url(self) -> str: ...
    def release(
        self, tag: str, fail_nodes: str = ..., slow: str = ..., commands: str = ...
    ) -> str: ...


class ZooKeeperProxy(FaultProxy):
    """A FaultProxy that also records each session ZooKeeper hands out through
    it (id and password, from the ConnectResponse, the first answer on each
    connection): what a second client needs to expire that session, which
    the agent rightly never tells anyone."""

    def __init__(self, server: ZooKeeperServer) -> None:
        self.sessions: dict[int, bytes] = {}
        super().__init__(server.port)

    def before_send(self, chunk: bytes, from_server: bool, first: bool) -> None:
        # length, protocolVersion, timeOut, sessionId, passwd (int32 length + bytes)
        if from_server and first and len(chunk) >= 24:
            _, _, _, session_id, size = struct.unpack(">iiiqi", chunk[:24])
            if 0 < size <= 64 and len(chunk) >= 24 + size:
                self.sessions[session_id] = chunk[24 : 24 + size]


def client(hosts: str, timeout: float = 10.0) -> KazooClient:
    """A started kazoo client that reconnects within a second of a server coming back
    (kazoo's default backoff grows to an hour: reference/zookeeper.md)."""
    zk = KazooClient(
        hosts=hosts, timeout=timeout, connection_retry={"max_delay": 1, "max_tries": -1}
    )
    zk.start(timeout=30)
    return zk


def put(zk: KazooClient, path: str, value: bytes, deadline: float = 60.0) -> int:
    """Set (or create) until ZooKeeper confirms; returns the write's mzxid. A
    ConnectionLoss leaves a write undecided, and repeating a set of the same
    value is harmless, so the writer knows every final state for certain."""
    end = time.monotonic() + deadline
    while True:
        try:
            try:
                return zk.set_async(path, value).get(timeout=5).mzxid
            except NoNodeError:
                zk.create_async(path, value, makepath=True).get(timeout=5)
                return zk.exists(path).mzxid
        except RETRYABLE:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def data_path(root: str, key: str) -> str:
    return f"{root}/apps/{APP}/data/{key}"


def rendered(agent: Agent, layer: str = "app") -> dict[str, Any]:
    """The agent's rendered Hiera layer, {} while it is missing or mid-write."""
    try:
        return yaml.safe_load((agent.state / "hieradata" / f"{layer}.yaml").read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return {}


def zk_state(agent: Agent) -> dict[str, Any]:
    return (agent.status_doc() or {}).get("zookeeper") or {}


def presence(zk: KazooClient, root: str, node: str) -> tuple[dict[str, Any], int] | None:
    """The agent's presence document and the session that owns it."""
    try:
        data, stat = zk.get(host_path(root, APP, node))
    except NoNodeError:
        return None
    return json.loads(data), stat.ephemeralOwner


def lines_of(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


# --- (a) session expiry during an install and during an order -----------------------------


@dataclass
class ExpiryReport:
    """One forced expiry: while what, how, and what was seen after it."""

    during: str  # "install" or "order"
    method: str  # "client_id" or "sigstop"
    new_session: bool = False
    presence_back: bool = False
    reread: bool = False  # the write made while the session was gone was rendered
    rearmed: bool = False  # a write after the new session was rendered
    runs: int = 0  # how many times the install script or the order's command ran (1)
    outcome: str = ""  # the install's commit or the order's result state
    recovery_s: float = 0.0  # thaw (or expiry) to the re-read write rendered

    @property
    def ok(self) -> bool:
        return (
            self.new_session and self.presence_back and self.reread and self.rearmed
            and self.runs == 1
        )  # fmt: skip


def expire(
    method: str, agent: Agent, proxy: ZooKeeperProxy, server: ZooKeeperServer, zk: KazooClient,
    root: str, node: str, during_gap: Callable[[], None],
) -> float:  # fmt: skip
    """End the agent's session by ``method``; ``during_gap`` runs while it is
    gone (a write the agent must re-read). Returns when the agent may act again."""
    owner = (presence(zk, root, node) or ({}, 0))[1]
    if method == "client_id":
        password = proxy.sessions[owner]
        other = KazooClient(hosts=server.hosts, client_id=(owner, password), timeout=10)
        other.start(timeout=30)
        other.stop()  # closes the session: ZooKeeper ends it for the agent too
        other.close()
        during_gap()
        return time.monotonic()
    proc = agent.daemons[-1]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        during_gap()
        wait_until(
            lambda: (presence(zk, root, node) or ({}, 0))[1] != owner,  # gone or replaced
            60, "ZooKeeper to expire the frozen agent's session",
        )  # fmt: skip
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    return time.monotonic()


def check_after_expiry(
    report: ExpiryReport, agent: Agent, zk: KazooClient, root: str, node: str,
    old_session: str | None, gap_value: int, thawed: float,
) -> None:  # fmt: skip
    wait_until(lambda: rendered(agent).get("chaos") == gap_value, 60, "the re-read after expiry")
    report.recovery_s = time.monotonic() - thawed
    report.reread = True
    wait_until(
        lambda: zk_state(agent).get("session_id") not in (None, old_session)
        and zk_state(agent).get("state") == "connected",
        60, "a new session",
    )  # fmt: skip
    report.new_session = True
    wait_until(lambda: presence(zk, root, node), 60, "the presence to be recreated")
    report.presence_back = True
    put(zk, data_path(root, "chaos"), str(gap_value + 1).encode())
    wait_until(lambda: rendered(agent).get("chaos") == gap_value + 1, 60, "a change after expiry")
    report.rearmed = True


def expiry_during_install(
    method: str, agent: Agent, repo: AppCode, proxy: ZooKeeperProxy, server: ZooKeeperServer,
    zk: KazooClient, root: str, node: str, tag: str, value: int,
) -> ExpiryReport:  # fmt: skip
    """The agent (its hosts: ``proxy``, started) installs ``tag``, whose script
    marks its start and sleeps 5 s; the session is expired mid-install."""
    report = ExpiryReport("install", method)
    marks = repo.marks / f"install-{tag}"
    commit = repo.release(tag, slow=f"echo ran >> {marks}; sleep 5")
    old = zk_state(agent).get("session_id")
    put(zk, release_path(root, APP), f"ref: {tag}\nsource: {repo.url}\n".encode())
    wait_until(lambda: marks.exists(), 90, "the install to start")
    thawed = expire(
        method, agent, proxy, server, zk, root, node,
        lambda: put(zk, data_path(root, "chaos"), str(value).encode()),
    )  # fmt: skip
    check_after_expiry(report, agent, zk, root, node, old, value, thawed)

    report.outcome = wait_until(
        lambda: installed_commit(zk, root, node) == commit and commit, 90, "the install"
    )
    time.sleep(6)  # longer than the script: a second install would have run by now
    report.runs = lines_of(marks)
    return report


def expiry_during_order(
    method: str, agent: Agent, repo: AppCode, proxy: ZooKeeperProxy, server: ZooKeeperServer,
    zk: KazooClient, root: str, node: str, value: int,
) -> ExpiryReport:  # fmt: skip
    """An order whose command marks its start and end around a 5 s sleep (the
    release installed must carry the ``chaos`` procfile line of
    :data:`ORDER_COMMAND`); the session is expired while it runs."""
    report = ExpiryReport("order", method)
    started, ended = repo.marks / f"order-start-{value}", repo.marks / f"order-end-{value}"
    old = zk_state(agent).get("session_id")
    doc = {"command": "chaos", "by": "chaos@here", "at": time.time(), "nodes": [node]}
    (repo.marks / "order-value").write_text(str(value))
    path = zk.create(
        orders_path(root, APP) + "/order-", json.dumps(doc).encode(), sequence=True, makepath=True
    )
    name = path.rsplit("/", 1)[1]
    wait_until(lambda: started.exists(), 60, "the order to start")
    thawed = expire(
        method, agent, proxy, server, zk, root, node,
        lambda: put(zk, data_path(root, "chaos"), str(value).encode()),
    )  # fmt: skip
    check_after_expiry(report, agent, zk, root, node, old, value, thawed)

    def final() -> str | None:
        try:
            state = json.loads(zk.get(result_path(root, APP, name, node))[0]).get("state")
        except NoNodeError:
            return None
        return state if state != "running" else None

    report.outcome = wait_until(final, 60, "the order's result")
    time.sleep(6)  # longer than the command: a second run would have ended by now
    report.runs = max(lines_of(started), lines_of(ended))
    return report


# The procfile line expiry_during_order runs: its start and end marks carry the
# value the scenario wrote to marks/order-value, so each order has its own.
ORDER_COMMAND = (
    "chaos: v=$(cat {marks}/order-value); echo ran >> {marks}/order-start-$v; sleep 5; "
    "echo ran >> {marks}/order-end-$v\n"
)


def expiry_scenario(
    method: str, agent: Agent, repo: AppCode, proxy: ZooKeeperProxy, server: ZooKeeperServer,
    zk: KazooClient, root: str, node: str,
) -> list[ExpiryReport]:  # fmt: skip
    """Both expiries of issue 18 by ``method``: during the install of v1, then
    (v2 installed, its procfile carrying :data:`ORDER_COMMAND`) during an order."""
    install = expiry_during_install(method, agent, repo, proxy, server, zk, root, node, "v1", 1)
    v2 = repo.release("v2", commands=ORDER_COMMAND.format(marks=repo.marks))
    put(zk, release_path(root, APP), f"ref: v2\nsource: {repo.url}\n".encode())
    wait_until(lambda: installed_commit(zk, root, node) == v2, 90, "v2 installed")
    order = expiry_during_order(method, agent, repo, proxy, server, zk, root, node, 3)
    return [install, order]


def installed_commit(zk: KazooClient, root: str, node: str) -> str | None:
    """The release commit the agent's presence says is installed."""
    doc = (presence(zk, root, node) or ({}, 0))[0]
    return ((doc.get("release") or {}).get("installed") or {}).get("commit")


def agent_settings(home: Path, node: str) -> dict[str, Any]:
    """The agent's config beyond the suite's sandbox defaults: its node name,
    and releases and orders under ``home`` (traversable by the app's user)."""
    return {
        "node": node,
        "releases": {"apps_dir": str(home / "apps"), "keep": 2, "timeout": 60},
        "orders": {"timeout": 30, "max_age": 600},
    }


# --- (b) partitions between one agent and ZooKeeper ----------------------------------------


@dataclass
class PartitionReport:
    mode: str
    seen_in_status: str = ""  # the zookeeper state status showed during the partition
    status_exit: int = 0  # `mozagent status`'s exit code during it (3: errors)
    status_says: str = ""  # its zookeeper error, as a person reads it
    kept_last_good: bool = False  # the rendered file held the pre-partition value throughout
    session_lost: bool = False  # the partition outlasted the session
    converged: bool = False
    heal_to_converged_s: float = 0.0


def agent_partition(
    mode: Mode, agent: Agent, proxy: FaultProxy, zk: KazooClient, root: str, node: str,
    value: int,
) -> PartitionReport:  # fmt: skip
    """The agent (hosts: ``proxy``) is cut off by ``mode`` until ZooKeeper has
    expired its session (its presence gone), while ``value`` is written; then
    healed. The last good file must stay and the value follow the heal."""
    report = PartitionReport(mode)
    before = rendered(agent).get("chaos")
    owner = (presence(zk, root, node) or ({}, 0))[1]
    proxy.set_mode(mode)
    kept = True
    try:
        put(zk, data_path(root, "chaos"), str(value).encode())

        def cut_off() -> bool:
            nonlocal kept
            kept = kept and rendered(agent).get("chaos") == before
            return zk_state(agent).get("state") in ("suspended", "lost", "connecting")

        wait_until(cut_off, 60, f"status to show the {mode} partition")
        res = agent.cli("status", "--json")
        doc = json.loads(res.stdout)
        report.status_exit = res.returncode
        report.seen_in_status = doc["zookeeper"]["state"]
        report.status_says = "; ".join(e["message"] for e in doc["errors"].get("zookeeper", []))
        wait_until(lambda: (presence(zk, root, node) or ({}, 0))[1] != owner, 60, "expiry")
        report.session_lost = True
        kept = kept and rendered(agent).get("chaos") == before
        report.kept_last_good = kept and (agent.state / "hieradata" / "app.yaml").exists()
    finally:
        proxy.set_mode("pass")
    healed = time.monotonic()
    wait_until(lambda: rendered(agent).get("chaos") == value, 90, "convergence after the heal")
    report.heal_to_converged_s = time.monotonic() - healed
    wait_until(lambda: presence(zk, root, node), 60, "the presence after the heal")
    report.converged = True
    return report


# --- (b) a partition between the CLI and ZooKeeper during deploy --wait -------------------


@dataclass
class CliPartitionReport:
    case: str
    exit_code: int
    output: str
    written: bool  # the release znode holds the deploy's ref
    installed: bool  # the agent installed it

    @property
    def truthful(self) -> bool:
        """Success claimed only when it happened; a failure that says what may
        have been written whenever it cannot know."""
        if self.exit_code == 0:
            return self.written and self.installed
        if re.search(r"^all \d+ hosts done", self.output, re.M):
            return False  # success claimed by a command that failed
        # A write that landed is named (the CLI prints it once confirmed), or
        # the failure says the change may or may not have been made.
        return not self.written or "is now" in self.output or "may or may not" in self.output


def cli_partition_deploy(
    case: str, agent: Agent, repo: AppCode, server: ZooKeeperServer, zk: KazooClient, root: str,
    node: str, tag: str,
) -> CliPartitionReport:  # fmt: skip
    """``deploy --wait`` through a proxy (the agent talks to ZooKeeper
    directly). Cases: ``hold-healed`` (held once the release is written, healed
    4 s later: under the CLI's session timeout), ``reset-healed`` (the same
    with resets), ``hold-to-timeout`` (held once the release is written, never
    healed before the CLI's --timeout: it wrote and cannot see the outcome)."""
    commit = repo.release(tag)
    path = release_path(root, APP)
    proxy = FaultProxy(server.port)
    written = threading.Event()

    def watch(data: bytes | None, stat: Any) -> None:
        if data is not None:  # the znode did not exist before the deploy
            written.set()

    zk.DataWatch(path, watch)
    timeout = "20" if case == "hold-to-timeout" else "90"
    try:
        env = dict(os.environ)
        cmd = [
            "deploy", APP, tag, "--source", repo.url, "--wait", "--timeout", timeout,
            "--zookeeper", proxy.hosts,
        ]  # fmt: skip
        proc = _cli_process(agent, cmd, env)
        wait_until(written.is_set, 60, "the deploy's write")
        proxy.set_mode("hold" if case.startswith("hold") else "reset")
        if case != "hold-to-timeout":
            time.sleep(4)
            proxy.set_mode("pass")
        out, err = proc.communicate(timeout=120)
    finally:
        proxy.close()

    def installed() -> bool:
        return installed_commit(zk, root, node) == commit

    if written.is_set():
        with contextlib.suppress(TimeoutError):
            wait_until(installed, 60, "the install")
    return CliPartitionReport(case, proc.returncode, out + err, written.is_set(), installed())


def _cli_process(agent: Agent, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    import sys

    config = agent.root / "mozagent.yaml"
    return subprocess.Popen(
        [sys.executable, "-m", "mozagent", *argv],
        env={**env, "MOZAGENT_CONFIG": str(config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=agent.root,
    )


# --- (c) a standalone server restarted under a stream of writes ---------------------------


@dataclass
class RestartReport:
    restarts: int
    keys: int
    writes: int = 0  # confirmed writes
    retries: int = 0  # attempts that ended in ConnectionLoss or a timeout and were repeated
    lost_in_zookeeper: int = 0  # keys whose znode does not hold the last confirmed value
    lost_in_agent: int = 0  # keys whose rendered value is not the last confirmed one
    recovery_s: list[float] = field(default_factory=list)  # server up -> agent caught up
    final_converge_s: float = 0.0

    json_extra = ("recovery_max_s", "recovery_median_s")

    @property
    def recovery_max_s(self) -> float:
        return max(self.recovery_s, default=0.0)

    @property
    def recovery_median_s(self) -> float:
        ordered = sorted(self.recovery_s)
        return ordered[len(ordered) // 2] if ordered else 0.0


class Writer(threading.Thread):
    """Writes increasing counters to ``keys`` keys in turn, each until
    confirmed; ``confirmed`` is the last value ZooKeeper acknowledged per key."""

    def __init__(self, zk: KazooClient, root: str, keys: int, pause: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.zk, self.root, self.pause = zk, root, pause
        self.names = [f"k{i}" for i in range(keys)]
        self.confirmed: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.writes = self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop_event.is_set():
                n += 1
                name = self.names[n % len(self.names)]
                self._write(name, n)
                time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc

    def _write(self, name: str, n: int) -> None:
        path, value = data_path(self.root, name), str(n).encode()
        end = time.monotonic() + 120
        while True:
            try:
                try:
                    self.zk.set_async(path, value).get(timeout=5)
                except NoNodeError:
                    self.zk.create_async(path, value, makepath=True).get(timeout=5)
                break
            except RETRYABLE:
                self.retries += 1
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
            except Exception as exc:  # NodeExists: a create that was applied, then lost
                if type(exc).__name__ != "NodeExistsError":
                    raise
        with self.lock:
            self.confirmed[name] = n
            self.writes += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.confirmed)


def caught_up(agent: Agent, target: dict[str, int]) -> bool:
    """Counters only grow: caught up when each rendered value is at least its target."""
    seen = rendered(agent)
    return all(isinstance(seen.get(k), int) and seen[k] >= v for k, v in target.items())


def restarts_under_writes(
    server: ZooKeeperServer, agent: Agent, zk: KazooClient, root: str, restarts: int,
    keys: int = 10, say: Callable[[str], None] = lambda _: None,
) -> RestartReport:  # fmt: skip
    """``restarts`` stop/start cycles of ``server`` while a writer streams
    counters into ``keys`` app keys; after each start, the time until the agent
    has rendered what was confirmed once writes flowed again; at the end, how many keys'
    final state is missing from ZooKeeper and from the agent's files."""
    report = RestartReport(restarts, keys)
    writer = Writer(zk, root, keys)
    writer.start()
    try:
        wait_until(lambda: len(writer.snapshot()) == keys, 60, "every key written once")
        for i in range(restarts):
            server.restart()
            up = time.monotonic()
            # Writes confirmed after the start (the writer reconnected), then
            # what the agent must render: a restart straight after another
            # would otherwise test a writer that never got a word in.
            written = writer.writes
            wait_until(lambda w=written: writer.writes >= w + keys, 120, "writes after the start")
            target = writer.snapshot()
            wait_until(lambda t=target: caught_up(agent, t), 120, f"catch-up after restart {i + 1}")
            report.recovery_s.append(time.monotonic() - up)
            took = report.recovery_s[-1]
            say(f"restart {i + 1}/{restarts}: agent caught up {took:.2f} s after the start")
            if writer.error is not None:
                raise writer.error
    finally:
        writer.stop_event.set()
        writer.join(timeout=150)
    if writer.error is not None:
        raise writer.error
    final = writer.snapshot()
    report.writes, report.retries = writer.writes, writer.retries
    for name, n in final.items():
        if zk.retry(zk.get, data_path(root, name))[0] != str(n).encode():
            report.lost_in_zookeeper += 1
    start = time.monotonic()
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: rendered(agent) and caught_up(agent, final), 60, "the final states")
    report.final_converge_s = time.monotonic() - start
    seen = rendered(agent)
    report.lost_in_agent = sum(seen.get(name) != n for name, n in final.items())
    return report
