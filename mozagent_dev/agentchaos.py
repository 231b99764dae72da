"""``kill -9`` of the agent at random moments, counted: the scenario of
``tests/test_agent_chaos.py`` (small counts, asserted) and
``bench/chaos_agent.py`` (full counts, printed), in one place so the two
cannot drift apart.

One agent watches ZooKeeper (data, its release, its orders) and polls a
:class:`~mozagent_dev.heatstub.HeatStub` for SoftwareDeployments. A stream of
data changes, deployments, releases and orders is sent while the daemon is
SIGKILLed and restarted on a schedule drawn from a seeded ``random.Random``,
so a run can be repeated. What is asserted never depends on where a kill
lands: at the end every promise is checked by counting what the servers and
the disk saw (signals per deployment, run markers per order, the ``current``
symlink, temp files, files that do not parse).

As in :mod:`mozagent_dev.zkchaos`, the agent is the suite's (``Sandbox``):
this module never configures one, so how an agent is set up stays the suite's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from mozagent.desired.fleet import orders_path, release_path, result_path
from mozagent.fileio import TEMP_NAME
from mozagent_dev.heatstub import HeatStub, inputs
from mozagent_dev.testing import wait_until
from mozagent_dev.zkchaos import APP, Agent, AppCode, data_path, put, rendered

# Appends the order's own name, so a second run of one order shows as two lines.
ORDER_COMMAND = 'chaos: echo "$MOZAGENT_ORDER" >> {marks}/chaos-runs; sleep 0.5\n'
KEY = "greeting"


@dataclass(frozen=True)
class Counts:
    """How much to send; ``kills`` SIGKILLs are spread over the stream."""

    data: int = 20
    deployments: int = 10
    releases: int = 4
    orders: int = 6
    kills: int = 8


@dataclass
class Report:
    """What was sent, what was killed, and what was found at the end."""

    seed: int
    counts: Counts
    kills: list[tuple[str, float]] = field(default_factory=list)  # (after which event, delay)
    restart_s: list[float] = field(default_factory=list)
    signals: dict[str, int] = field(default_factory=dict)  # deployment id -> signals received
    differing_repeats: list[str] = field(default_factory=list)  # repeats with another body
    order_runs: dict[str, int] = field(default_factory=dict)  # order -> run markers
    order_states: dict[str, str] = field(default_factory=dict)
    final_value: str = ""
    rendered_value: Any = None
    puppet_output: str = ""
    current: str | None = None
    last_release: str = ""
    current_complete: bool = False
    temp_files: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    converge_s: float = 0.0

    @property
    def lost_signals(self) -> list[str]:
        return sorted(d for d, n in self.signals.items() if n == 0)

    @property
    def repeated_signals(self) -> list[str]:
        return sorted(d for d, n in self.signals.items() if n > 1)

    @property
    def doubled_orders(self) -> list[str]:
        return sorted(o for o, n in self.order_runs.items() if n > 1)

    def lines(self) -> list[str]:
        c = self.counts
        restarts = sorted(self.restart_s)
        worst = f"{restarts[-1]:.1f}" if restarts else "-"
        return [
            f"seed {self.seed}: {c.data} data changes, {c.deployments} Heat deployments, "
            f"{c.releases} releases, {c.orders} orders, {len(self.kills)} kill -9",
            f"kills (after event, delay s): {self.kills}",
            f"restart to status: worst {worst} s; converged {self.converge_s:.1f} s after the last",
            f"signals: {sum(self.signals.values())} for {len(self.signals)} deployments; "
            f"lost {len(self.lost_signals)}, repeated {self.repeated_signals} "
            f"(with another body: {self.differing_repeats})",
            f"orders: results {sorted(set(self.order_states.values()))}, "
            f"runs {sum(self.order_runs.values())}, doubled {self.doubled_orders}",
            f"data: final {self.final_value!r}, rendered {self.rendered_value!r}, "
            f"puppet wrote {self.puppet_output.strip()!r}",
            f"release: current {str(self.current)[:12]}, last {self.last_release[:12]}, "
            f"complete {self.current_complete}",
            f"temp files left {self.temp_files}, files that do not parse {self.unparsed}",
        ]


def deployment(stub: HeatStub, dep_id: str) -> dict[str, Any]:
    """A script deployment as Heat serves it, signalled by TempURL to ``stub``."""
    return {
        "id": dep_id,
        "name": f"cfg-{dep_id}",
        "group": "script",
        "config": f"#!/bin/sh\necho {dep_id}\n",
        "creation_time": "2026-11-25T00:00:00Z",
        "inputs": inputs("TEMP_URL_SIGNAL", stub.url, dep_id),
        "outputs": [],
        "options": {},
    }


def push_order(zk: KazooClient, root: str, command: str) -> str:
    """As ``mozagent order`` writes it (the CLI's own retry is tested elsewhere)."""
    doc = {"command": command, "by": "chaos@here", "at": time.time(), "nodes": None}
    path = zk.create(
        orders_path(root, APP) + "/order-", json.dumps(doc).encode(), sequence=True, makepath=True
    )
    return path.rsplit("/", 1)[1]


def order_result(zk: KazooClient, root: str, order: str, node: str) -> str | None:
    """The order's final state on ``node`` (None while none, or still running)."""
    try:
        data, _ = zk.get(result_path(root, APP, order, node))
    except NoNodeError:
        return None
    state = json.loads(data).get("state")
    return None if state == "running" else str(state)


def kill9(agent: Agent) -> None:
    """SIGKILL and reap. The wait is long (60 s, still bounded): on a loaded
    shared host a killed daemon inside an fsync took over 10 s to be gone."""
    proc = agent.daemons[-1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def schedule(rng: random.Random, counts: Counts) -> tuple[list[str], dict[int, float]]:
    """The events in a seeded order, and after which of them (and how long
    after) a kill lands. A release comes first: orders need a current one."""
    rest = (
        ["data"] * counts.data
        + ["deploy"] * counts.deployments
        + ["release"] * (counts.releases - 1)
        + ["order"] * counts.orders
    )
    rng.shuffle(rest)
    events = ["release", *rest]
    spots = rng.sample(range(len(events)), min(counts.kills, len(events)))
    return events, {i: round(rng.uniform(0.0, 1.5), 2) for i in spots}


def current_release(apps_dir: Path) -> tuple[str | None, bool]:
    """The commit ``current`` points at, and whether that release is complete
    (its install script wrote installed.txt naming that commit)."""
    link = apps_dir / APP / "current"
    if not link.is_symlink():
        return None, False
    target = link.resolve()
    commit = target.name
    try:
        installed = (target / "installed.txt").read_text()
    except OSError:
        return commit, False
    return commit, f"commit={commit}" in installed


def leftovers(agent: Agent, apps_dir: Path) -> tuple[list[str], list[str]]:
    """Temp files left in the state dir or the app's dir (outside the release
    trees, which are the app's), and state files that do not parse."""
    temp: list[str] = []
    unparsed: list[str] = []
    for top in (agent.state, apps_dir / APP):
        for dirpath, dirnames, filenames in os.walk(top):
            if Path(dirpath) == apps_dir / APP:
                dirnames[:] = [d for d in dirnames if d != "releases"]
            temp += [os.path.join(dirpath, n) for n in filenames if TEMP_NAME.match(n)]
            if Path(dirpath) == apps_dir / APP / "tmp":
                temp += [os.path.join(dirpath, n) for n in filenames + dirnames]
                dirnames[:] = []
    for path in agent.state.rglob("*"):
        # Puppet's own vardir holds Ruby-tagged YAML: puppet's, not the agent's.
        if not path.is_file() or TEMP_NAME.match(path.name) or "vardir" in path.parts:
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".yaml":
                yaml.safe_load(path.read_text())
        except (ValueError, yaml.YAMLError, UnicodeDecodeError):
            unparsed.append(str(path))
    releases = apps_dir / APP / "releases"
    for path in releases.glob("*.json") if releases.exists() else ():
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            unparsed.append(str(path))
    return sorted(temp), sorted(unparsed)


def kill_storm(
    agent: Agent,
    zk: KazooClient,
    root: str,
    node: str,
    stub: HeatStub,
    repo: AppCode,
    apps_dir: Path,
    output: Callable[[], str],
    counts: Counts,
    seed: int,
    timeout: float = 240.0,
    say: Callable[[str], None] = lambda _: None,
) -> Report:
    """Send the stream, kill -9 and restart the daemon on the seeded schedule,
    then wait (bounded) for convergence and count. ``output`` reads the file
    the agent's puppet manifest writes; ``repo`` must be the app's code."""
    rng = random.Random(seed)
    events, kills = schedule(rng, counts)
    report = Report(seed, counts)
    commands = ORDER_COMMAND.format(marks=repo.marks)
    deployments: list[dict[str, Any]] = []
    orders: list[str] = []
    n = {"data": 0, "release": 0}
    last_value = ""
    for i, kind in enumerate(events):
        if kind == "data":
            n["data"] += 1
            last_value = f"v{n['data']}"
            put(zk, data_path(root, KEY), last_value.encode())
        elif kind == "deploy":
            deployments.append(deployment(stub, f"d-{len(deployments) + 1}"))
            stub.set_metadata({"deployments": list(deployments)})
        elif kind == "release":
            n["release"] += 1
            report.last_release = repo.release(f"r{n['release']}", commands=commands)
            put(zk, release_path(root, APP), f"ref: r{n['release']}\nsource: {repo.url}\n".encode())
        else:
            orders.append(push_order(zk, root, "chaos"))
        time.sleep(rng.uniform(0.0, 0.3))
        if i in kills:
            time.sleep(kills[i])
            kill9(agent)
            report.kills.append((f"{i}:{kind}", kills[i]))
            began = time.monotonic()
            agent.start_daemon()
            report.restart_s.append(time.monotonic() - began)
            say(f"kill {len(report.kills)} after event {i} ({kind}), restarted")
    report.final_value = last_value
    began = time.monotonic()
    ids = [d["id"] for d in deployments]

    def converged() -> bool:
        return (
            rendered(agent).get(KEY) == last_value
            and f"greeting={last_value} " in output()
            and all(stub.signals_for(d) for d in ids)
            and current_release(apps_dir)[0] == report.last_release
            and all(order_result(zk, root, o, node) for o in orders)
        )

    try:
        wait_until(converged, timeout, "the agent to converge after the last kill", 0.2)
    finally:
        report.converge_s = time.monotonic() - began
        time.sleep(1.0)  # a repeat in flight, a second run of an order, would show by now
        for dep_id in ids:
            bodies = stub.signals_for(dep_id)
            report.signals[dep_id] = len(bodies)
            if any(b != bodies[0] for b in bodies):
                report.differing_repeats.append(dep_id)
        runs = (
            (repo.marks / "chaos-runs").read_text().split()
            if (repo.marks / "chaos-runs").exists()
            else []
        )
        for order in orders:
            report.order_runs[order] = runs.count(order)
            report.order_states[order] = order_result(zk, root, order, node) or "none"
        report.rendered_value = rendered(agent).get(KEY)
        report.puppet_output = output()
        report.current, report.current_complete = current_release(apps_dir)
        report.temp_files, report.unparsed = leftovers(agent, apps_dir)
    return report
