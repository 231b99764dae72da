"""Faults against a real ZooKeeper *ensemble* and real agents, counted: the
scenarios of ``tests/test_ensemble.py`` (CI's counts, asserted) and
``bench/chaos.py`` (full counts, printed), in one place so they cannot drift.

Two scenarios (issue 18):

* :func:`leader_kills`: the leader is SIGKILLed ``kills`` times while an
  operator streams ``mozagent data set`` writes and pushes ``mozagent order``
  and a deployer runs ``mozagent deploy --wait``, all through the real CLI as
  the ACL policy's identities. Counted: final data states not on every agent,
  orders created twice, orders run twice on a host, deploys lost, presences
  not back, ``--wait`` answers that were not the truth; and the time from
  each kill to the next confirmed write and to every agent connected again.
* :func:`quorum_loss`: two of three servers stopped for a while: the agents
  keep their last good hieradata, ``mozagent status`` says ZooKeeper is not
  reachable, and everyone converges once the servers are back.

The CLI is retried here only where it said "nothing written": anything else
that failed may have been written, is counted as such, and is what the
doubled-order count checks. Agents are the suite's ``Sandbox`` (the
:class:`~mozagent_dev.zkchaos.Agent` protocol); this module starts none.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from mozagent.desired.audit import audit_dir
from mozagent.desired.fleet import orders_path
from mozagent.zkauth import CREDENTIALS_ENV, TLS_ENV
from mozagent_dev.ensemble import ZooKeeperEnsemble
from mozagent_dev.pki import Pki
from mozagent_dev.testing import wait_until
from mozagent_dev.zkchaos import (
    APP,
    Agent,
    AppCode,
    data_path,
    installed_commit,
    presence,
    put,
    rendered,
    zk_state,
)

# The order command the chaos release carries: one line per run, naming the
# order, in a per-host log: a second run of an order on a host is a repeated line.
ORDER_LINE = 'chaos: echo "$MOZAGENT_ORDER" >> {marks}/orders-$MOZAGENT_NODE\n'
KEY = "counter"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Operator:
    """The real CLI (a subprocess, as a person runs it) as one of the policy's
    identities: ``run("operator", "data", "set", …)``."""

    def __init__(
        self, hosts: str, root: str, creds: dict[str, Path], cwd: Path,
        tls_env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.hosts, self.root, self.creds, self.cwd = hosts, root, creds, cwd
        self.tls_env = tls_env or {}  # MOZAGENT_ZOOKEEPER_TLS_*: the CLI over TLS

    def run(self, role: str, *argv: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "MOZAGENT_CONFIG"}
        env = {k: v for k, v in env.items() if k not in TLS_ENV.values()}
        env.update(self.tls_env, **{CREDENTIALS_ENV: str(self.creds[role])})
        return subprocess.run(
            [sys.executable, "-m", "mozagent", *argv, "--zookeeper", self.hosts,
             "--root", self.root],
            capture_output=True, text=True, env=env, timeout=timeout, cwd=self.cwd,
        )  # fmt: skip


def outcome(res: subprocess.CompletedProcess[str]) -> str:
    """``ok``; ``nothing`` (the CLI said nothing was written: safe to repeat);
    or ``maybe`` (failed otherwise: it may have been written)."""
    if res.returncode == 0:
        return "ok"
    return "nothing" if "nothing written" in (res.stdout + res.stderr) else "maybe"


@dataclass
class CliCounts:
    """How the CLI's writes ended, per command."""

    ok: int = 0
    nothing_retried: int = 0  # said "nothing written", repeated
    maybe: int = 0  # failed without saying nothing was written
    messages: list[str] = field(default_factory=list)  # the failures' last lines, first 10

    def note(self, res: subprocess.CompletedProcess[str]) -> str:
        kind = outcome(res)
        if kind == "ok":
            self.ok += 1
        elif kind == "nothing":
            self.nothing_retried += 1
        else:
            self.maybe += 1
        if kind != "ok" and len(self.messages) < 10:
            text = (res.stderr or res.stdout).strip().splitlines()
            self.messages.append(f"rc {res.returncode}: {text[-1] if text else ''}")
        return kind


class DataWriter(threading.Thread):
    """``mozagent data set shop counter N`` for N = 1, 2, …: a "nothing
    written" failure repeats N, a "may have been written" one goes on to N+1
    (which supersedes it either way). ``finish()`` ends on a confirmed write,
    whose value is then every agent's final state."""

    def __init__(self, cli: Operator) -> None:
        super().__init__(daemon=True)
        self.cli, self.counts = cli, CliCounts()
        self.stop_event = threading.Event()
        self.n = 0
        self.confirmed_at: list[float] = []  # monotonic times of confirmed writes
        self.final: int | None = None
        self.error: BaseException | None = None

    def write(self) -> bool:
        self.n += 1
        for _ in range(20):
            kind = self.counts.note(self.cli.run("operator", "data", "set", APP, KEY, str(self.n)))
            if kind == "ok":
                self.confirmed_at.append(time.monotonic())
                return True
            if kind == "maybe":
                return False
            time.sleep(0.2)
        return False

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.write()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> int:
        self.stop_event.set()
        self.join(timeout=300)
        for _ in range(30):
            if self.write():
                self.final = self.n
                return self.n
        raise RuntimeError("no confirmed final write in 30 attempts")


@dataclass
class KillReport:
    kills: int = 0
    leader_changed: int = 0  # kills after which another member led
    recover_write_s: list[float] = field(default_factory=list)  # kill -> next CLI write confirmed
    # kill -> a kazoo set confirmed (retried on ConnectionLoss): the ensemble's own
    # write gap, without the CLI's process start-up that recover_write_s includes
    recover_zk_write_s: list[float] = field(default_factory=list)
    recover_presence_s: list[float] = field(default_factory=list)  # kill -> all agents connected
    data: CliCounts = field(default_factory=CliCounts)
    orders: CliCounts = field(default_factory=CliCounts)
    deploys: CliCounts = field(default_factory=CliCounts)
    final_value: int = 0
    states_lost: int = 0  # agents whose rendered counter is not the final value
    order_znodes: int = 0
    orders_doubled: int = 0  # an order's token in more than one audit entry
    orders_audited: int = 0  # tokens found in the audit trail at all
    orders_run_twice: int = 0  # (host, order) lines repeated in the run logs
    orders_not_run: int = 0  # confirmed orders missing from a host's run log
    deploys_lost: int = 0  # the last confirmed deploy not installed everywhere
    wait_untruthful: int = 0  # `deploy --wait` said done while a host had not installed it
    presence_missing: int = 0

    json_extra = ("recover_write_p50_s", "recover_write_max_s", "recover_presence_p50_s",
                  "recover_presence_max_s", "recover_zk_write_p50_s",
                  "recover_zk_write_max_s")  # fmt: skip

    @property
    def recover_zk_write_p50_s(self) -> float:
        return percentile(self.recover_zk_write_s, 0.5)

    @property
    def recover_zk_write_max_s(self) -> float:
        return max(self.recover_zk_write_s, default=0.0)

    @property
    def recover_write_p50_s(self) -> float:
        return percentile(self.recover_write_s, 0.5)

    @property
    def recover_write_max_s(self) -> float:
        return max(self.recover_write_s, default=0.0)

    @property
    def recover_presence_p50_s(self) -> float:
        return percentile(self.recover_presence_s, 0.5)

    @property
    def recover_presence_max_s(self) -> float:
        return max(self.recover_presence_s, default=0.0)


def connected(agents: list[tuple[Agent, str]], zk: KazooClient, root: str) -> bool:
    return all(
        zk_state(a).get("state") == "connected" and presence(zk, root, node) is not None
        for a, node in agents
    )


def first_release(cli: Operator, repo: AppCode, agents: list[tuple[Agent, str]],
                  zk: KazooClient, root: str) -> str:  # fmt: skip
    """v0, carrying :data:`ORDER_LINE`, deployed and installed everywhere before any fault."""
    commit = repo.release("v0", commands=ORDER_LINE.format(marks=repo.marks))
    res = cli.run("deployer", "deploy", APP, "v0", "--source", repo.url, "--wait",
                  "--timeout", "120")  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"first deploy failed: {res.stdout}{res.stderr}")
    for _, node in agents:
        wait_until(lambda n=node: installed_commit(zk, root, n) == commit, 60, f"v0 on {node}")
    return commit


def leader_kills(
    ensemble: ZooKeeperEnsemble, agents: list[tuple[Agent, str]], repo: AppCode,
    cli: Operator, zk: KazooClient, root: str, kills: int,
    say: Callable[[str], None] = lambda _: None,
) -> KillReport:  # fmt: skip
    """Kill the leader ``kills`` times under a stream of data writes, with an
    order and a ``deploy --wait`` in flight across each kill; then count.
    ``zk`` is an admin client (reads the ACL-protected znodes)."""
    report = KillReport()
    first_release(cli, repo, agents, zk, root)
    tokens: list[str] = []  # orders the CLI confirmed or may have created
    confirmed_orders: list[str] = []
    last_deploy: str | None = None
    writer = DataWriter(cli)
    writer.start()
    try:
        wait_until(lambda: writer.confirmed_at, 60, "the first data write")
        for i in range(kills):
            tag = f"c{i + 1}"
            commit = repo.release(tag, commands=ORDER_LINE.format(marks=repo.marks))
            deploy_res: list[subprocess.CompletedProcess[str]] = []
            order_res: list[tuple[str, subprocess.CompletedProcess[str]]] = []

            def deploy(tag: str = tag, out: list[Any] = deploy_res) -> None:
                for _ in range(10):
                    res = cli.run("deployer", "deploy", APP, tag, "--source", repo.url,
                                  "--wait", "--timeout", "120")  # fmt: skip
                    out.append(res)
                    if outcome(res) != "nothing":
                        return
                    time.sleep(0.5)

            def order(i: int = i, out: list[Any] = order_res) -> None:
                token = f"chaos-order-{i:04d}"
                for _ in range(10):
                    res = cli.run("operator", "order", APP, "chaos", "--reason", token)
                    out.append((token, res))
                    if outcome(res) != "nothing":
                        return
                    time.sleep(0.5)

            threads = [threading.Thread(target=f, daemon=True) for f in (deploy, order)]
            for t in threads:
                t.start()
            time.sleep(0.3)  # the commands connected and at work when the leader dies
            leader = ensemble.leader()
            if leader is None:
                leader = ensemble.wait_for_quorum(30)
            killed = time.monotonic()
            writes_before = len(writer.confirmed_at)
            ensemble.kill(leader)
            report.kills += 1
            put(zk, data_path(root, "probe"), str(i).encode())
            report.recover_zk_write_s.append(time.monotonic() - killed)
            new_leader = ensemble.wait_for_quorum(30)
            report.leader_changed += new_leader != leader
            # Each recovery timed on its own (one polling loop, bounded), not one after the other.
            back: float | None = None

            def recovered(w: int = writes_before) -> bool:
                nonlocal back
                if back is None and connected(agents, zk, root):
                    back = time.monotonic()
                return back is not None and len(writer.confirmed_at) > w

            wait_until(recovered, 90, "a CLI write and every agent connected after the kill")
            write_s = writer.confirmed_at[writes_before] - killed
            presence_s = (back or killed) - killed
            report.recover_write_s.append(write_s)
            report.recover_presence_s.append(presence_s)
            ensemble.start_server(leader)
            for t in threads:
                t.join(timeout=200)
            ensemble.wait_for_quorum(60)
            for res in deploy_res:
                report.deploys.note(res)
            final = deploy_res[-1] if deploy_res else None
            if final is not None and final.returncode == 0:
                last_deploy = commit
                # --wait said every host is done: each must have it installed now.
                report.wait_untruthful += sum(
                    installed_commit(zk, root, node) != commit for _, node in agents
                )
            for token, res in order_res:
                kind = report.orders.note(res)
                if kind == "ok":
                    confirmed_orders.append(res.stdout.strip())
                if kind != "nothing":
                    tokens.append(token)
            say(f"kill {i + 1}/{kills}: leader {leader + 1} -> {new_leader + 1}; kazoo write "
                f"{report.recover_zk_write_s[-1]:.2f} s, next CLI write {write_s:.2f} s, "
                f"agents connected {presence_s:.2f} s; deploy rc "
                f"{final.returncode if final else '-'}")  # fmt: skip
            if writer.error is not None:
                raise writer.error
    finally:
        report.final_value = writer.finish()
    report.data = writer.counts

    value = report.final_value
    for agent, node in agents:
        try:
            wait_until(lambda a=agent: rendered(a).get(KEY) == value, 90, f"{node}'s final state")
        except TimeoutError:
            report.states_lost += 1
        try:
            wait_until(lambda n=node: presence(zk, root, n), 30, f"{node}'s presence")
        except TimeoutError:
            report.presence_missing += 1
        if last_deploy is not None:
            try:
                wait_until(lambda n=node: installed_commit(zk, root, n) == last_deploy, 90,
                           f"{node}'s last deploy")  # fmt: skip
            except TimeoutError:
                report.deploys_lost += 1
    count_orders(report, agents, repo, zk, root, tokens, confirmed_orders)
    return report


def count_orders(
    report: KillReport, agents: list[tuple[Agent, str]], repo: AppCode, zk: KazooClient,
    root: str, tokens: list[str], confirmed: list[str],
) -> None:  # fmt: skip
    """Doubles by token; runs per host from the command's own log (once each
    order has had the time to run). The token, the order's --reason, is in
    its audit entry, which goes in atomically with the order: two entries of
    one token are two orders."""
    base = orders_path(root, APP)
    report.order_znodes = len(zk.retry(zk.get_children, base))
    trail = audit_dir(root, APP)
    seen: Counter[str] = Counter()
    for name in zk.retry(zk.get_children, trail):
        try:
            doc = json.loads(zk.retry(zk.get, f"{trail}/{name}")[0])
        except NoNodeError:
            continue
        if doc.get("action") == "order" and doc.get("reason") in tokens:
            seen[doc["reason"]] += 1
    report.orders_audited = len(seen)
    report.orders_doubled = sum(n - 1 for n in seen.values() if n > 1)

    def runs(node: str) -> list[str]:
        try:
            return (repo.marks / f"orders-{node}").read_text().split()
        except FileNotFoundError:
            return []

    for _, node in agents:
        with contextlib.suppress(TimeoutError):
            wait_until(lambda n=node: set(confirmed) <= set(runs(n)), 60, f"{node}'s orders")
        lines = runs(node)
        report.orders_run_twice += sum(n - 1 for n in Counter(lines).values() if n > 1)
        report.orders_not_run += len(set(confirmed) - set(lines))


@dataclass
class QuorumReport:
    outage_s: float
    status_exit: int = 0  # `mozagent status` during the outage (3: current errors)
    status_state: str = ""
    status_says: str = ""
    kept_last_good: bool = False  # every agent's rendered layer unchanged throughout
    write_refused: bool = False  # a `data set` during the outage failed
    converge_s: float = 0.0  # servers back -> every agent rendered a new write
    converged: bool = False


def quorum_loss(
    ensemble: ZooKeeperEnsemble, agents: list[tuple[Agent, str]], cli: Operator,
    zk: KazooClient, root: str, outage: float, say: Callable[[str], None] = lambda _: None,
) -> QuorumReport:  # fmt: skip
    """Stop two of three members for ``outage`` s, then start them again."""
    report = QuorumReport(outage)
    before = [rendered(a) for a, _ in agents]
    leader = ensemble.wait_for_quorum(30)
    down = [leader, (leader + 1) % ensemble.size]
    for i in down:
        ensemble.stop(i)
    stopped = time.monotonic()
    kept = True
    try:
        agent = agents[0][0]

        def cut_off() -> bool:
            nonlocal kept
            kept = kept and [rendered(a) for a, _ in agents] == before
            return zk_state(agent).get("state") in ("suspended", "lost", "connecting")

        wait_until(cut_off, min(outage, 30), "status to show ZooKeeper unreachable")
        res = agent.cli("status", "--json")
        doc = json.loads(res.stdout)
        report.status_exit = res.returncode
        report.status_state = doc["zookeeper"]["state"]
        report.status_says = "; ".join(e["message"] for e in doc["errors"].get("zookeeper", []))
        refused = cli.run("operator", "data", "set", APP, "outage", "1", "--timeout", "5")
        report.write_refused = refused.returncode != 0
        while time.monotonic() - stopped < outage:
            kept = kept and [rendered(a) for a, _ in agents] == before
            time.sleep(0.5)
        kept = kept and [rendered(a) for a, _ in agents] == before
        report.kept_last_good = kept and all(
            (a.state / "hieradata" / "app.yaml").exists() for a, _ in agents
        )
    finally:
        for i in down:
            ensemble.start_server(i)
    back = time.monotonic()
    ensemble.wait_for_quorum(60)
    value = int(before[0].get(KEY) or 0) + 1000
    put(zk, data_path(root, KEY), str(value).encode())
    for a, node in agents:
        wait_until(lambda a=a: rendered(a).get(KEY) == value, 120, f"{node} after the outage")
    wait_until(lambda: connected(agents, zk, root), 60, "every agent connected after the outage")
    report.converge_s = time.monotonic() - back
    report.converged = True
    say(f"quorum lost {outage:g} s: status rc {report.status_exit} state "
        f"{report.status_state!r}: {report.status_says}; converged {report.converge_s:.2f} s "
        "after the restart")  # fmt: skip
    return report


# --- the stage both the test and the bench set up ------------------------------------------

ROLES = ("admin", "deployer", "operator", "agent")


class Stage:
    """A started ensemble, the role policy applied on ``root``, and one agent
    daemon per node (made by ``make_agent(dir, node, zookeeper_section)``: the
    suite's Sandbox), each connected and rendering; ``close()`` stops the
    agents and the ensemble. ``policy`` is tests/roles.py's document.

    With ``tls`` (the default, as production runs) the agents and the CLI
    reach the ensemble only over its secureClientPorts, verified against a
    throwaway CA, each agent with a certificate of its own (CN=node) and the
    CLI with one for CN=operator; the ACLs are the policy's digests. The
    observing admin client uses the plain ports: it is the test's eyes, not
    a party to the promise."""

    def __init__(
        self, home: Path, policy: dict[str, Any], nodes: tuple[str, ...],
        make_agent: Callable[[Path, str, dict[str, Any]], Agent], root: str = "/chaos",
        tls: bool = True,
    ) -> None:  # fmt: skip
        self.home, self.root = home, root
        self.pki = Pki(home / "pki") if tls else None
        server = self.pki.issue("zk", "/CN=zk", "IP:127.0.0.1,DNS:localhost") if self.pki else None
        self.ensemble = ZooKeeperEnsemble(3, tls=(server.both, self.pki.ca) if server else None)
        self.agents: list[tuple[Agent, str]] = []
        self.zk: KazooClient | None = None
        self.creds: dict[str, Path] = {}
        for role in ROLES:
            path = home / f"{role}.cred"
            path.write_text(f"{role}:{role}-pw\n")
            path.chmod(0o600)
            self.creds[role] = path
        try:
            self.ensemble.start()
            self.cli = Operator(self.hosts, root, self.creds, home, self._tls_env())
            policy_file = home / "policy.json"
            policy_file.write_text(json.dumps(policy))
            res = self.cli.run("admin", "acl", "apply", str(policy_file))
            if res.returncode != 0:
                raise RuntimeError(f"acl apply failed: {res.stdout}{res.stderr}")
            self.zk = KazooClient(
                hosts=self.ensemble.hosts, timeout=10, auth_data=[("digest", "admin:admin-pw")],
                connection_retry={"max_delay": 1, "max_tries": -1},
            )  # fmt: skip
            self.zk.start(timeout=30)
            # The counter, and the probe leader_kills sets with kazoo after each kill.
            for key in (KEY, "probe"):
                res = self.cli.run("operator", "data", "set", APP, key, "0")
                if res.returncode != 0:
                    raise RuntimeError(f"first data set failed: {res.stdout}{res.stderr}")
            section = {"hosts": self.hosts, "root": root,
                       "credentials_file": str(self.creds["agent"])}  # fmt: skip
            for node in nodes:
                (home / node).mkdir()
                agent = make_agent(home / node, node, {**section, **self._agent_tls(node)})
                self.agents.append((agent, node))
                agent.start_daemon()
            for agent, node in self.agents:
                wait_until(lambda a=agent: rendered(a).get(KEY) == 0, 90, f"{node}'s first render")
            wait_until(lambda: connected(self.agents, self.zk, root), 60, "every presence")
        except BaseException:
            self.close()
            raise

    @property
    def hosts(self) -> str:
        """What the agents and the CLI connect to."""
        return self.ensemble.tls_hosts if self.pki else self.ensemble.hosts

    def _tls_env(self) -> dict[str, str]:
        if self.pki is None:
            return {}
        pair = self.pki.issue("operator", "/CN=operator")
        paths = {"ca": self.pki.ca, "cert": pair.cert, "key": pair.key}
        return {TLS_ENV[k]: str(v) for k, v in paths.items()}

    def _agent_tls(self, node: str) -> dict[str, str]:
        if self.pki is None:
            return {}
        pair = self.pki.issue(node, f"/CN={node}")
        return {"tls_ca": str(self.pki.ca), "tls_cert": str(pair.cert), "tls_key": str(pair.key)}

    def close(self) -> None:
        for agent, _ in self.agents:
            stop = getattr(agent, "stop_daemons", None)
            if stop is not None:
                stop()
        if self.zk is not None:
            self.zk.stop()
            self.zk.close()
        self.ensemble.cleanup()
