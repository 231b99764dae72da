"""Fleet convergence: how long a change takes to reach every agent of an app,
and what an idle fleet costs ZooKeeper.

Not a test: it prints figures (and optionally JSON) and exits 0 whatever they
are. Everything is real and local: one ZooKeeper on a free ``127.0.0.1`` port
(``mozagent_dev.testing.ZooKeeperServer``), N ``mozagent daemon`` processes of one
app (each its own node name, state dir and apps dir under one temp dir), the
release a real git repository (``file://``) with a trivial ``bin/install``,
and the operator's commands run as a user runs them, as subprocesses:

* ``mozagent deploy APP TAG --source URL`` → every agent's presence shows
  ``last_install.version`` ≥ the release znode's mzxid, ``ok``, and
  ``installed.commit`` = the tag's commit;
* ``mozagent data set APP KEY VALUE`` → every agent's presence shows
  ``data_version`` ≥ the key's mzxid;

each timed from just before the command's process starts (so its Python
start-up counts, as it does for an operator) to the moment the last agent's
presence satisfies the check. Presences are followed with ZooKeeper watches,
not polling, so the bench adds one read per presence change and nothing else.

The agents have no puppet manifests by default, so that puppet's ~3 s per run
does not hide everything else; ``--puppet`` adds fleets of 1 and 10 agents
with a one-resource manifest to show puppet's share. Idle: after the rounds
and a settle, the ZooKeeper server's own request counter (``stat``) is
sampled over a window, the bench's own connection subtracted, and every
agent's RSS and CPU read. Run from the repository root:

    .venv/bin/python bench/fleet.py [--quick] [--json PATH] [--keep] [--puppet]

Every wait is bounded; every agent and the ZooKeeper server are stopped on
any exit (Ctrl-C included).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from benchlib import (
    REPO,
    BenchError,
    LoggedProcess,
    bench_parser,
    code_version,
    read_cpu_seconds,
    read_rss_mib,
    to_json,
    write_report,
)
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import WatchedEvent
from run import say, zk_client, zookeeper

from mozagent import __version__
from mozagent.desired.fleet import host_path, release_path
from tests.apprepo import AppRepo

APP = "bench"
KEY = "bench_key"
TAGS = ("v1", "v2")  # deploys alternate between them, as a release and its rollback do

# A one-resource manifest that uses the data, for the --puppet fleets.
MANIFEST = """\
file {{ '{out}':
  content => "${{lookup('{key}', undef, undef, 'none')}}\\n",
}}
"""

Doc = dict[str, Any]
Check = Callable[[Doc], bool]


def snapshot_code(workdir: Path) -> Path:
    """A copy of the working tree's ``mozagent/`` for every agent and command
    of the run: the daemons import lazily, so with the code changing under a
    run (other work in the same checkout) one process could mix two versions,
    and agents started minutes apart would run different code."""
    code = workdir / "code"
    shutil.copytree(
        REPO / "mozagent", code / "mozagent", ignore=shutil.ignore_patterns("__pycache__")
    )
    return code


def child_env(code: Path) -> dict[str, str]:
    """The snapshot first on the path (before the editable install's finder),
    and no MOZAGENT_* from the caller's shell: the config and the command line say it all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOZAGENT_")}
    env["PYTHONPATH"] = str(code)
    return env


def median(values: Iterable[float]) -> float:
    ordered = list(values)
    return statistics.median(ordered) if ordered else math.nan


# --- presences, followed by watches ---------------------------------------------------------


class PresenceWatch:
    """Each agent's ``hosts/<node>`` znode, read again at every change.

    Its own one-shot watches with async reads, rather than kazoo's DataWatch:
    DataWatch re-reads synchronously in kazoo's one event thread, so 100
    agents changing at once would be read one after another and the last one
    timestamped late. Here the reads are pipelined and each result is stamped
    as it arrives. A round keeps every (time, document) seen since it began,
    because the release check needs the release znode's mzxid, which is known
    only once ``mozagent deploy`` has exited, possibly after some agents
    already acted on it.
    """

    def __init__(self, client: KazooClient, root: str, app: str) -> None:
        self.client = client
        self.root = root
        self.app = app
        self._cond = threading.Condition()
        self.latest: dict[str, Doc | None] = {}
        self.history: dict[str, list[tuple[float, Doc]]] = {}
        self.changes = 0  # presence documents read, all nodes together

    def watch(self, node: str) -> None:
        with self._cond:
            self.latest.setdefault(node, None)
            self.history.setdefault(node, [])
        self._read(node)

    def _read(self, node: str) -> None:
        path = host_path(self.root, self.app, node)

        def on_event(_event: WatchedEvent) -> None:
            self._read(node)

        def on_result(result: Any) -> None:
            try:
                data, _stat = result.get(block=False)
            except NoNodeError:
                # Gone (or not there yet): watch for its creation instead.
                self.client.exists_async(path, watch=on_event).rawlink(on_exists)
                self._record(node, None)
                return
            except Exception:
                # Connection trouble: no watch was set, so read again shortly.
                retry = threading.Timer(0.5, self._read, (node,))
                retry.daemon = True
                retry.start()
                return
            try:
                self._record(node, json.loads(data))
            except ValueError:
                self._record(node, None)

        def on_exists(result: Any) -> None:
            try:
                if result.get(block=False) is not None:
                    self._read(node)  # created between the failed get and this exists
            except Exception:
                pass

        self.client.get_async(path, watch=on_event).rawlink(on_result)

    def _record(self, node: str, doc: Doc | None) -> None:
        now = time.perf_counter()
        with self._cond:
            self.latest[node] = doc
            if doc is not None:
                self.history[node].append((now, doc))
                self.changes += 1
            self._cond.notify_all()

    def begin(self) -> float:
        """Start a round now: forget earlier history, keep each node's current document."""
        now = time.perf_counter()
        with self._cond:
            for node, doc in self.latest.items():
                self.history[node] = [] if doc is None else [(now, doc)]
        return now

    def first_times(self, nodes: Iterable[str], check: Check) -> dict[str, float]:
        """When each node's presence first passed ``check`` in this round (nodes that did)."""
        with self._cond:
            found = {}
            for node in nodes:
                for t, doc in self.history.get(node, ()):
                    if check(doc):
                        found[node] = t
                        break
            return found

    def wait_all(
        self,
        nodes: list[str],
        check: Check,
        timeout: float,
        what: str,
        alive: Callable[[], None],
        failed: Callable[[Doc], str | None] | None = None,
    ) -> dict[str, float]:
        """Until every node's presence has passed ``check``; bounded, and it
        stops at once on a node that ``failed`` or an agent that died."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.first_times(nodes, check)
            if len(done) == len(nodes):
                return done
            alive()
            if failed is not None:
                for node in nodes:
                    doc = self.latest.get(node)
                    if node not in done and doc is not None and (why := failed(doc)):
                        raise BenchError(f"{what}: {node} failed: {why}")
            if time.monotonic() > deadline:
                missing = sorted(set(nodes) - set(done))
                raise BenchError(
                    f"{what}: {len(missing)} of {len(nodes)} agents not there after "
                    f"{timeout:g} s ({', '.join(missing[:5])}{'…' if len(missing) > 5 else ''}); "
                    f"first one's presence: {self.latest.get(missing[0])}"
                )
            with self._cond:
                self._cond.wait(timeout=0.2)


def release_check(version: int, commit: str) -> Check:
    def check(doc: Doc) -> bool:
        release = doc.get("release") or {}
        last = release.get("last_install") or {}
        installed = release.get("installed") or {}
        return (
            int(last.get("version") or 0) >= version
            and last.get("ok") is True
            and installed.get("commit") == commit
        )

    return check


def release_failure(version: int) -> Callable[[Doc], str | None]:
    def failed(doc: Doc) -> str | None:
        last = (doc.get("release") or {}).get("last_install") or {}
        if int(last.get("version") or 0) >= version and last.get("ok") is False:
            return f"install failed: {last.get('message')} (log {last.get('log')})"
        return None

    return failed


def data_check(version: int) -> Check:
    return lambda doc: int(doc.get("data_version") or 0) >= version


def all_of(*checks: Check) -> Check:
    return lambda doc: all(c(doc) for c in checks)


# --- ZooKeeper's own counters ---------------------------------------------------------------


@dataclass
class ServerSample:
    at: float
    received: int  # packets received by the server since it started, every connection
    per_port: dict[int, int]  # packets received on each current client connection, by its port


def server_stat(port: int) -> ServerSample:
    """The ``stat`` four-letter word (whitelisted by ZooKeeperServer): the
    server's packet counter and each connection's, so the bench's own
    connection can be told apart from the agents'."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"stat")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace")
    received = re.search(r"^Received: (\d+)$", text, re.M)
    if received is None:
        raise BenchError(f"no 'Received:' in ZooKeeper's stat answer: {text[:200]!r}")
    per_port = {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"/127\.0\.0\.1:(\d+)\[\d+\]\(queued=\d+,recved=(\d+)", text)
    }
    return ServerSample(time.monotonic(), int(received.group(1)), per_port)


def local_port(client: KazooClient) -> int | None:
    """The bench client's side of its connection (kazoo keeps the socket private)."""
    try:
        return int(client._connection._socket.getsockname()[1])  # type: ignore[union-attr]
    except (AttributeError, OSError, TypeError):
        return None


# --- the agents ------------------------------------------------------------------------------


class Agent(LoggedProcess):
    """One ``mozagent daemon`` with its own node name, config, state and apps dir."""

    def __init__(
        self,
        home: Path,
        node: str,
        hosts: str,
        zk_root: str,
        puppet: bool,
        env: dict[str, str],
        zk_extra: Doc | None = None,
    ) -> None:
        self.home = home
        self.env = env
        self.node = node
        self.label = f"agent {node}"
        home.mkdir(parents=True)
        self.config_path = home / "mozagent.yaml"
        self.log_path = home / "daemon.log"
        config: Doc = {
            "app": APP,
            "node": node,
            "state_dir": str(home / "state"),
            # The ZooKeeper defaults (session_timeout 10 s, …): idle traffic as deployed.
            "zookeeper": {"hosts": hosts, "root": zk_root, **(zk_extra or {})},
            "releases": {"apps_dir": str(home / "apps"), "keep": 2, "timeout": 60},
            "log": {"level": "info", "format": "json"},
        }
        if puppet:
            manifest = home / "site.pp"
            manifest.write_text(MANIFEST.format(out=home / "out.txt", key=KEY))
            config["puppet"] = {
                "manifests": [str(manifest)],
                "extra_args": ["--vardir", str(home / "puppetvar")],
                "timeout": 300,
            }
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mozagent", "daemon", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                env=self.env,
            )

    def puppet_seconds(self) -> float | None:
        """The last puppet run's length, from status.json (the --puppet fleets)."""
        try:
            last = json.loads((self.home / "state" / "status.json").read_text()).get("last_apply")
        except (OSError, ValueError):
            return None
        if last and last.get("started") and last.get("ended"):
            return float(last["ended"]) - float(last["started"])
        return None


def stop_agents(agents: list[Agent], timeout: float = 30.0) -> None:
    """SIGTERM to all at once (each closes its session and removes its presence),
    SIGKILL to whatever is left after ``timeout``."""
    running = [a.proc for a in agents if a.proc is not None and a.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- results --------------------------------------------------------------------------------


@dataclass
class Round:
    kind: str  # "deploy" or "data"
    what: str  # the tag deployed, or the value set
    version: int  # the release znode's or the key's mzxid
    cli_s: float  # the command's process, start to exit
    first_s: float  # to the first agent's presence showing it
    all_s: float  # to the last agent's


@dataclass
class Idle:
    settle_s: float
    window_s: float
    fleet_requests: int
    fleet_rps: float
    per_agent_rps: float
    per_connection_rps_median: float
    per_connection_rps_max: float
    connections_seen: int
    bench_subtracted: bool
    presence_writes: int
    rss_mib_median: float
    rss_mib_max: float
    cpu_ms_per_s_median: float
    cpu_ms_per_s_max: float


@dataclass
class FleetResult:
    label: str
    agents: int
    puppet: bool
    start_s: float  # the agents added for this size, start to all present and converged
    rounds: list[Round]
    idle: Idle | None
    puppet_run_s_median: float | None = None
    json_extra = ("deploy_median_s", "deploy_max_s", "data_median_s", "data_max_s")

    def _all(self, kind: str) -> list[float]:
        return [r.all_s for r in self.rounds if r.kind == kind]

    @property
    def deploy_median_s(self) -> float:
        return median(self._all("deploy"))

    @property
    def deploy_max_s(self) -> float:
        return max(self._all("deploy"), default=math.nan)

    @property
    def data_median_s(self) -> float:
        return median(self._all("data"))

    @property
    def data_max_s(self) -> float:
        return max(self._all("data"), default=math.nan)


# --- a fleet of one app ---------------------------------------------------------------------


class Fleet:
    """Agents of one app under their own ZooKeeper root; grows, is timed, idles."""

    def __init__(
        self,
        workdir: Path,
        server_port: int,
        hosts: str,
        zk: KazooClient,
        repo: AppRepo,
        commits: dict[str, str],
        puppet: bool,
        env: dict[str, str],
        agent_zk: Callable[[str], Doc] | None = None,
    ) -> None:
        """``agent_zk``: more ``zookeeper:`` settings for a node's agent (its TLS
        files, say); ``env`` is also the operator's commands' (their identity)."""
        self.workdir = workdir
        self.env = env
        self.agent_zk = agent_zk or (lambda node: {})
        self.server_port = server_port
        self.hosts = hosts
        self.zk = zk
        self.repo = repo
        self.commits = commits
        self.puppet = puppet
        self.root = f"/bench-fleet-{uuid.uuid4().hex[:8]}"
        self.watch = PresenceWatch(zk, self.root, APP)
        self.agents: list[Agent] = []
        self.tag = TAGS[0]
        self.release_version = 0
        self.data_version = 0

    @property
    def nodes(self) -> list[str]:
        return [a.node for a in self.agents]

    def check_alive(self) -> None:
        for agent in self.agents:
            agent.check_alive()

    def cli(self, *words: str) -> tuple[float, float]:
        """A ``mozagent`` command as an operator runs it (no agent config: the
        target on the command line). Returns (perf_counter at start, seconds to exit)."""
        argv = [sys.executable, "-m", "mozagent", *words]
        argv += ["--zookeeper", self.hosts, "--root", self.root, "--timeout", "60"]
        t0 = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=90)
        took = time.perf_counter() - t0
        if res.returncode != 0:
            raise BenchError(f"`mozagent {' '.join(words)}` exited {res.returncode}: {res.stderr}")
        return t0, took

    def converged(self) -> Check:
        """The fleet's current state: the current release installed, the current data applied."""
        return all_of(
            release_check(self.release_version, self.commits[self.tag]),
            data_check(self.data_version),
        )

    def seed(self) -> None:
        """The first release and data value, written with the CLI before any agent starts."""
        self.cli("deploy", APP, self.tag, "--source", self.repo.url)
        self.release_version = self.zk.exists(release_path(self.root, APP)).mzxid
        self.set_value("initial")

    def set_value(self, value: str) -> tuple[float, float]:
        t0, took = self.cli("data", "set", APP, KEY, value, "--string")
        self.data_version = self.zk.exists(f"{self.root}/apps/{APP}/data/{KEY}").mzxid
        return t0, took

    def grow(self, size: int, batch: int, per_batch_timeout: float) -> float:
        """Start agents in batches until there are ``size``; each batch must show
        presence, the current release and data before the next starts, so that
        100 Python start-ups on 2 cores never overlap a timed round."""
        started = time.perf_counter()
        while len(self.agents) < size:
            new = []
            for _ in range(min(batch, size - len(self.agents))):
                node = f"web{len(self.agents) + 1:03d}"
                home = self.workdir / node
                agent = Agent(
                    home, node, self.hosts, self.root, self.puppet, self.env, self.agent_zk(node)
                )
                self.watch.watch(node)
                agent.start()
                self.agents.append(agent)
                new.append(node)
            self.watch.begin()
            self.watch.wait_all(
                new,
                self.converged(),
                per_batch_timeout,
                f"agents {new[0]}..{new[-1]} to start and converge",
                self.check_alive,
                release_failure(self.release_version),
            )
        return time.perf_counter() - started

    def _timed(
        self,
        kind: str,
        what: str,
        act: Callable[[], tuple[float, float]],
        check: Callable[[], Check],
        version: Callable[[], int],
        timeout: float,
    ) -> Round:
        self.watch.begin()
        t0, took = act()
        done = self.watch.wait_all(
            self.nodes,
            check(),
            timeout,
            f"{kind} {what} to reach all {len(self.agents)} agents",
            self.check_alive,
            release_failure(self.release_version) if kind == "deploy" else None,
        )
        return Round(
            kind=kind,
            what=what,
            version=version(),
            cli_s=round(took, 4),
            first_s=round(min(done.values()) - t0, 4),
            all_s=round(max(done.values()) - t0, 4),
        )

    def deploy_round(self, timeout: float, wait: bool = False) -> Round:
        """``wait``: the deploy is ``--wait``, so ``cli_s`` is what the operator
        waits for the command to say every host has it."""
        tag = TAGS[1] if self.tag == TAGS[0] else TAGS[0]

        def act() -> tuple[float, float]:
            more = ("--wait",) if wait else ()
            t0, took = self.cli("deploy", APP, tag, "--source", self.repo.url, *more)
            self.tag = tag
            self.release_version = self.zk.exists(release_path(self.root, APP)).mzxid
            return t0, took

        return self._timed(
            "deploy",
            tag,
            act,
            lambda: release_check(self.release_version, self.commits[tag]),
            lambda: self.release_version,
            timeout,
        )

    def data_round(self, i: int, timeout: float) -> Round:
        value = f"value-{len(self.agents)}-{i}-{uuid.uuid4().hex[:8]}"
        return self._timed(
            "data",
            value,
            lambda: self.set_value(value),
            lambda: data_check(self.data_version),
            lambda: self.data_version,
            timeout,
        )

    def idle(self, settle: float, window: float) -> Idle:
        """What the converged fleet costs while nothing changes: ZooKeeper
        packets (pings included, since the server spends on them too), the
        presence writes the bench's watches see, RSS and CPU of each agent."""
        time.sleep(settle)
        self.check_alive()
        bench_port = local_port(self.zk)
        cpu0 = {a.node: read_cpu_seconds(a.pid) for a in self.agents}
        changes0 = self.watch.changes
        before = server_stat(self.server_port)
        time.sleep(window)
        after = server_stat(self.server_port)
        changes = self.watch.changes - changes0
        self.check_alive()
        elapsed = after.at - before.at
        cpu = [(read_cpu_seconds(a.pid) - cpu0[a.node]) * 1000 / elapsed for a in self.agents]
        rss = [read_rss_mib(a.pid) for a in self.agents]
        common = set(before.per_port) & set(after.per_port)
        bench = 0
        if bench_port is not None and bench_port in common:
            bench = after.per_port[bench_port] - before.per_port[bench_port]
        agent_ports = common - {bench_port}
        per_conn = [(after.per_port[p] - before.per_port[p]) / elapsed for p in agent_ports]
        total = after.received - before.received - bench
        return Idle(
            settle_s=settle,
            window_s=round(elapsed, 2),
            fleet_requests=total,
            fleet_rps=round(total / elapsed, 3),
            per_agent_rps=round(total / elapsed / len(self.agents), 3),
            per_connection_rps_median=round(median(per_conn), 3),
            per_connection_rps_max=round(max(per_conn, default=math.nan), 3),
            connections_seen=len(agent_ports),
            bench_subtracted=bench_port is not None and bench_port in common,
            presence_writes=changes,
            rss_mib_median=round(median(rss), 1),
            rss_mib_max=round(max(rss), 1),
            cpu_ms_per_s_median=round(median(cpu), 2),
            cpu_ms_per_s_max=round(max(cpu), 2),
        )

    def measure(self, size: int, opts: Options, idle: bool) -> FleetResult:
        label = f"{size} agent{'s' if size > 1 else ''}{' + puppet' if self.puppet else ''}"
        say(f"{label}: starting agents {len(self.agents) + 1}..{size} in batches of {opts.batch}")
        start_s = self.grow(size, opts.batch, opts.batch_timeout)
        say(f"  all {size} present and converged ({start_s:.1f} s)")
        time.sleep(opts.pause)
        timeout = opts.round_timeout + size * (3.0 if self.puppet else 1.0)
        rounds = []
        for _ in range(opts.rounds):
            rounds.append(self.deploy_round(timeout))
            say(f"  deploy {rounds[-1].what}: all in {rounds[-1].all_s:.2f} s")
            time.sleep(opts.pause)
        for i in range(opts.rounds):
            rounds.append(self.data_round(i, timeout))
            say(f"  data set: all in {rounds[-1].all_s:.2f} s")
            time.sleep(opts.pause)
        result = FleetResult(label, size, self.puppet, round(start_s, 2), rounds, None)
        if self.puppet:
            result.puppet_run_s_median = round(
                median(s for a in self.agents if (s := a.puppet_seconds()) is not None), 2
            )
        if idle:
            say(f"  idle: {opts.settle:g} s settle, then {opts.window:g} s of ZooKeeper counters")
            result.idle = self.idle(opts.settle, opts.window)
        return result


# --- the run --------------------------------------------------------------------------------


@dataclass
class Options:
    quick: bool
    json_path: str | None
    keep: bool
    puppet: bool
    sizes: list[int]
    puppet_sizes: list[int]
    rounds: int
    batch: int
    batch_timeout: float
    round_timeout: float
    pause: float
    settle: float
    window: float


def parse_args(argv: list[str] | None = None) -> Options:
    parser = bench_parser(
        __doc__, "N = 1 and 10, 3 rounds, 15 s idle", "keep the temp dir (agents' logs)"
    )
    parser.add_argument(
        "--puppet", action="store_true", help="also fleets of 1 and 10 with a trivial manifest"
    )
    parser.add_argument("--sizes", help="fleet sizes, comma-separated (default 1,10,100)")
    args = parser.parse_args(argv)
    default = "1,10" if args.quick else "1,10,100"
    try:
        sizes = sorted({int(s) for s in (args.sizes or default).split(",")})
    except ValueError:
        parser.error("--sizes: comma-separated integers")
    if not sizes or sizes[0] < 1 or sizes[-1] > 150:
        parser.error("--sizes: between 1 and 150 (ZooKeeperServer allows 200 connections)")
    return Options(
        quick=args.quick,
        json_path=args.json_path,
        keep=args.keep,
        puppet=args.puppet,
        sizes=sizes,
        puppet_sizes=[1] if args.quick else [1, 10],
        rounds=3 if args.quick else 5,
        batch=10,
        batch_timeout=180.0,
        round_timeout=60.0,
        pause=1.0,
        settle=5.0 if args.quick else 10.0,
        window=15.0 if args.quick else 30.0,
    )


def release_repo(workdir: Path) -> tuple[AppRepo, dict[str, str]]:
    """The tests' app repo, one tag each: bin/install writes a file and copies the data."""
    repo = AppRepo(workdir)
    return repo, {tag: repo.release(tag) for tag in TAGS}


def run_fleet(
    opts: Options,
    workdir: Path,
    server_port: int,
    hosts: str,
    zk: KazooClient,
    puppet: bool,
    env: dict[str, str],
) -> list[FleetResult]:
    """One fleet grown through the sizes (1, then 9 more, then 90 more): each
    size is measured with all its agents up and converged."""
    repo, commits = release_repo(workdir)
    fleet = Fleet(workdir, server_port, hosts, zk, repo, commits, puppet, env)
    results = []
    try:
        fleet.seed()
        for size in opts.puppet_sizes if puppet else opts.sizes:
            results.append(fleet.measure(size, opts, idle=not puppet))
    finally:
        stop_agents(fleet.agents)
    return results


def run_all(opts: Options) -> dict[str, Any]:
    for tool in ("git", *(["puppet"] if opts.puppet else [])):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed")
    started = time.perf_counter()
    load_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="mozagent-bench-fleet-"))
    os.chmod(workdir, 0o755)  # as root, install scripts run as nobody, who must reach the apps dir
    commit = code_version()  # what the snapshot below is a copy of
    env = child_env(snapshot_code(workdir))
    say(f"workdir {workdir}; agents and commands run its copy of mozagent/ ({commit})")
    fleets: list[FleetResult] = []
    try:
        with zookeeper() as server, zk_client(server.hosts) as zk:
            say(f"ZooKeeper on {server.hosts}")
            for puppet in (False, True) if opts.puppet else (False,):
                sub = workdir / ("puppet" if puppet else "plain")
                sub.mkdir()
                os.chmod(sub, 0o755)
                fleets += run_fleet(opts, sub, server.port, server.hosts, zk, puppet, env)
    finally:
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "mozagent_version": __version__,
        "commit": commit,
        "quick": opts.quick,
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "loadavg_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "rounds": opts.rounds,
        "fleets": fleets,
        "runtime_s": time.perf_counter() - started,
    }


def fmt_spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):6.2f} / {median(values):6.2f} / {max(values):6.2f}"


def format_report(result: dict[str, Any]) -> str:
    fleets: list[FleetResult] = result["fleets"]
    load = result["loadavg_start_end"]
    lines = [
        "",
        f"mozagent {__version__} (commit {result['commit']}) fleet bench "
        f"({'quick' if result['quick'] else 'full'}) — {result['machine']}, "
        f"load average {load[0]} at start, {load[1]} at end",
        "",
        f"change → ALL agents' presence shows it, s (min / median / max of "
        f"{result['rounds']} rounds); t0 = the command's process start",
        f"  {'fleet':<18} {'deploy → all':<24} {'data set → all':<24} "
        f"{'first agent (med)':<18} {'CLI exit (med)'}",
    ]
    for f in fleets:
        dep = [r for r in f.rounds if r.kind == "deploy"]
        dat = [r for r in f.rounds if r.kind == "data"]
        first = f"{median(r.first_s for r in dep):.2f} / {median(r.first_s for r in dat):.2f}"
        cli = f"{median(r.cli_s for r in dep):.2f} / {median(r.cli_s for r in dat):.2f}"
        lines.append(
            f"  {f.label:<18} {fmt_spread([r.all_s for r in dep]):<24} "
            f"{fmt_spread([r.all_s for r in dat]):<24} {first:<18} {cli}"
        )
    lines.append("  (first agent and CLI exit: deploy / data set)")
    for f in fleets:
        if f.puppet_run_s_median is not None:
            lines.append(f"  {f.label}: puppet run median {f.puppet_run_s_median:.2f} s")
    lines += [
        "",
        "idle, converged fleet (ZooKeeper `stat` Received, the bench's connection subtracted)",
        f"  {'fleet':<18} {'ZK req/s fleet':>15} {'per agent':>10} {'per conn med/max':>17} "
        f"{'presence writes':>16} {'RSS MiB med/max':>16} {'CPU ms/s med/max':>17}",
    ]
    for f in fleets:
        if (i := f.idle) is None:
            continue
        lines.append(
            f"  {f.label:<18} {i.fleet_rps:>15.2f} {i.per_agent_rps:>10.3f} "
            f"{f'{i.per_connection_rps_median:.2f}/{i.per_connection_rps_max:.2f}':>17} "
            f"{i.presence_writes:>16} {f'{i.rss_mib_median:.1f}/{i.rss_mib_max:.1f}':>16} "
            f"{f'{i.cpu_ms_per_s_median:.2f}/{i.cpu_ms_per_s_max:.2f}':>17}"
        )
        if not i.bench_subtracted or i.connections_seen != f.agents:
            lines.append(
                f"    note: {i.connections_seen} agent connections seen over the window, "
                f"bench connection {'subtracted' if i.bench_subtracted else 'NOT identified'}"
            )
    window = next((f.idle.window_s for f in fleets if f.idle), None)
    if window is not None:
        lines.append(f"  (window {window:g} s after a {fleets[0].idle.settle_s:g} s settle)")
    lines += ["", f"total runtime {result['runtime_s']:.1f} s", ""]
    return "\n".join(lines)


def stop_on_sigterm() -> None:
    """SIGTERM (a timeout, a CI cancel) ends the run like Ctrl-C does, through
    the finally blocks that stop the agents and ZooKeeper, instead of orphaning them."""

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, on_term)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    stop_on_sigterm()
    logging.basicConfig(level=logging.WARNING, format="  [%(name)s] %(message)s")
    try:
        result = run_all(opts)
    except (BenchError, TimeoutError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        if not opts.keep:
            print("(run with --keep to keep the agents' logs)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(
            f"benchmark interrupted ({exc or 'Ctrl-C'}); agents and ZooKeeper stopped",
            file=sys.stderr,
        )
        return 130
    return write_report(format_report(result), to_json(result), opts.json_path)


if __name__ == "__main__":
    sys.exit(main())
