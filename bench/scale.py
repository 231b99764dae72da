"""Scale: 10,000 keys in one app layer, and a fleet of many agents on one ZooKeeper.

Not a test: it prints figures (and optionally JSON) next to the targets and
exits 0 whatever they are. Everything is real and local, on ``127.0.0.1``.

``keys`` (issue 18, "10,000 keys in one app layer"): one ZooKeeper, an app
layer of N keys (10,000 by default; ``run.create_layer``'s mixed values),
``mozagent daemon`` with no puppet manifest, so that puppet's seconds do not
hide the agent's milliseconds (the agent renders the Hiera files whether or not
puppet runs; what it then applies is the same snapshot).

* cold start → file: t0 just before the daemon's process starts (an empty
  state dir each time: no ``lastgood.json``), t1 when
  ``state/hieradata/app.yaml`` holds all N keys. Also the part of it inside
  the agent, from its own ``started`` log line to the file's mtime.
* one key → file: ``run.measure_latency`` (t0 before the kazoo ``set``, t1 when
  the file holds the value, inotify), on that daemon.
* in process: the agent's own reader and renderer (``ZooKeeperReader``,
  ``HieraData``) driven from this process, to say where a cold sync and a
  one-key render spend their time (the full read; resolving, rendering and
  writing the layer files; the durable ``lastgood.json``).

``fleet`` (issue 18, "Fleet"): a 3-server ``mozagent_dev.ensemble`` on
127.0.0.1 (its per-address connection cap lifted) and N ``mozagent daemon``
processes of one app (``bench/fleet.py``'s ``Fleet``: own node name, state and
apps dir each, no puppet manifest, ZooKeeper defaults, a copy of
``mozagent/``), started 10 at a time, each batch converged before the next; then:

* one write to the global layer (kazoo ``set``) → every agent's presence
  shows ``data_version`` ≥ the write's mzxid (the rule of ``data set
  --wait``, ``desired.convergence.data_outcome``);
* ``mozagent data set --global KEY VALUE --wait``: what the operator waits for;
* ``mozagent deploy`` → every presence shows the release installed;
* ZooKeeper's requests (``mntr`` packets received, watches, connections,
  summed over the members; the worst max latency) and the java processes'
  CPU (``/proc/PID/stat``), idle and during each fan-out;
* every agent's RSS (sum and per agent).

Run from the repository root::

    .venv/bin/python bench/scale.py keys [--keys 10000] [--quick]
    .venv/bin/python bench/scale.py fleet --sizes 100,300 [--quick]
    .venv/bin/python bench/scale.py all

Every wait is bounded; every agent and the ZooKeeper server are stopped on
any exit (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from benchlib import (
    BenchError,
    bench_parser,
    code_version,
    read_cpu_seconds,
    read_rss_mib,
    to_json,
    write_report,
)
from fleet import (
    TAGS,
    Fleet,
    child_env,
    data_check,
    release_check,
    release_repo,
    snapshot_code,
    stop_agents,
    stop_on_sigterm,
)
from kazoo.client import KazooClient
from run import (
    APP,
    KEY,
    LAYER_FILE,
    AgentUnderTest,
    LatencyResult,
    create_layer,
    measure_latency,
    percentile,
    say,
    zk_client,
    zookeeper,
)

from mozagent import __version__
from mozagent.config import parse_config
from mozagent.desired.fleet import release_path
from mozagent.desired.keys import encode_value
from mozagent.desired.layers import layer_paths
from mozagent.render.hieradata import HieraData
from mozagent.sources.zkreader import ZooKeeperReader
from mozagent_dev.ensemble import ZooKeeperEnsemble

TARGET_COLD_S = 2.0
TARGET_ONE_KEY_P99_MS = 50.0
LAST_FILLER = "key{:04d}"  # run.create_layer's filler names; the last one marks a complete file


# --- keys: one daemon, many keys --------------------------------------------------------------


class LightAgent(AgentUnderTest):
    """``run.AgentUnderTest`` without puppet: the same sandbox, config and
    waits, no manifest, so that every figure is the agent's own."""

    def __init__(self, root: Path, zk_hosts: str, zk_root: str) -> None:
        super().__init__(root, zk_hosts, zk_root)
        config = yaml.safe_load(self.config_path.read_text())
        del config["puppet"]
        self.config_path.write_text(yaml.safe_dump(config))

    def started_at(self) -> float | None:
        """The wall-clock time of the daemon's ``started`` log line (after its imports)."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == "started" and doc.get("timestamp"):
                return datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00")).timestamp()
        return None


def complete(keys: int) -> Any:
    """A check for FileWatcher: the app layer's file holds its last key (rendering
    is all or nothing: a renamed-in file is a whole layer)."""
    marker = f"\n{LAST_FILLER.format(keys - 2)}:"
    return lambda text: marker in text


@dataclass
class ColdStart:
    wall_s: float  # process start → the file complete
    agent_s: float | None  # the daemon's "started" log line → the file's mtime
    rss_mib: float


def cold_start(workdir: Path, name: str, hosts: str, zk_root: str, keys: int) -> ColdStart:
    """A daemon on an empty state dir: connect, read every key, render, write."""
    root = workdir / name
    root.mkdir()
    agent = LightAgent(root, hosts, zk_root)
    try:
        t0 = time.time()  # wall clock: compared with the file's mtime and the log's timestamp
        agent.start(expected_keys=keys, timeout=120)
        # start() returns once status.json says the agent read everything and
        # went idle; the file was complete before that, so find when.
        path = Path(agent.hieradata) / LAYER_FILE
        if not complete(keys)(path.read_text()):
            raise BenchError(f"{path} lacks keys after the agent's first read")
        mtime = path.stat().st_mtime
        wall = mtime - t0
        started = agent.started_at()
        rss = read_rss_mib(agent.pid)
    finally:
        agent.stop()
    return ColdStart(
        wall_s=round(wall, 3),
        agent_s=None if started is None else round(mtime - started, 3),
        rss_mib=round(rss, 1),
    )


@dataclass
class InProcess:
    """The agent's reader and renderer, timed from this process."""

    full_read_s: float  # ZooKeeperReader.process(): list + get every key, pipelined
    cold_render_s: float  # HieraData.render(): resolve, render, write, save lastgood
    one_key_read_ms: list[float] = field(repr=False)  # the changed key's get, after the watch
    one_key_render_ms: list[float] = field(repr=False)  # the render that follows
    lastgood_save_ms: float = 0.0  # save_lastgood() alone, the whole layer, durable
    json_extra = ("one_key_read_p50_ms", "one_key_render_p50_ms", "one_key_render_p99_ms")

    @property
    def one_key_read_p50_ms(self) -> float:
        return round(percentile(sorted(self.one_key_read_ms), 50), 2)

    @property
    def one_key_render_p50_ms(self) -> float:
        return round(percentile(sorted(self.one_key_render_ms), 50), 2)

    @property
    def one_key_render_p99_ms(self) -> float:
        return round(percentile(sorted(self.one_key_render_ms), 99), 2)


def in_process(workdir: Path, hosts: str, zk_root: str, keys: int, changes: int) -> InProcess:
    """What the sync worker does, step by step, with this process's clock."""
    state = workdir / "in-process"
    cfg = parse_config(
        {
            "app": APP,
            "node": "in-process",
            "state_dir": str(state),
            "zookeeper": {"hosts": hosts, "root": zk_root},
        },
        "<bench>",
    )
    woken = threading.Event()
    client = KazooClient(hosts=hosts, timeout=10)
    client.start(timeout=15)
    try:
        reader = ZooKeeperReader(client, layer_paths(zk_root, APP, cfg.node), woken.set)
        hiera = HieraData(cfg, None)
        t0 = time.perf_counter()
        reader.process()
        t1 = time.perf_counter()
        snapshot, _ = hiera.render(reader.views, 0)
        t2 = time.perf_counter()
        if len(reader.views["app"].entries) != keys:
            raise BenchError(f"in process: read {len(reader.views['app'].entries)} of {keys} keys")
        t3 = time.perf_counter()
        hiera.save_lastgood()
        lastgood_ms = (time.perf_counter() - t3) * 1000
        reads, renders = [], []
        path = f"{reader.views['app'].path}/{KEY}"
        for i in range(changes):
            woken.clear()
            client.set(path, f"in-process-{i}".encode())
            if not woken.wait(5):
                raise BenchError("in process: no watch event for a one-key change")
            r0 = time.perf_counter()
            reader.process()
            r1 = time.perf_counter()
            snapshot, _ = hiera.render(reader.views, snapshot.version)
            r2 = time.perf_counter()
            reads.append((r1 - r0) * 1000)
            renders.append((r2 - r1) * 1000)
    finally:
        client.stop()
        client.close()
    return InProcess(
        full_read_s=round(t1 - t0, 3),
        cold_render_s=round(t2 - t1, 3),
        one_key_read_ms=reads,
        one_key_render_ms=renders,
        lastgood_save_ms=round(lastgood_ms, 2),
    )


def run_keys(opts: Options) -> dict[str, Any]:
    """Cold starts, then the one-key latency on a last daemon, then the in-process split."""
    workdir = Path(tempfile.mkdtemp(prefix="mozagent-bench-scale-"))
    say(f"workdir {workdir}")
    rng = random.Random(20240601)
    out: dict[str, Any] = {"keys": opts.keys}
    try:
        with zookeeper() as server, zk_client(server.hosts) as zk:
            zk_root = f"/bench-scale-{os.getpid()}"
            t0 = time.perf_counter()
            create_layer(zk, f"{zk_root}/apps/{APP}/data", opts.keys)
            say(f"  {opts.keys} keys created in {time.perf_counter() - t0:.1f} s")
            colds = []
            for i in range(opts.cold_starts):
                colds.append(cold_start(workdir, f"cold-{i}", server.hosts, zk_root, opts.keys))
                say(f"  cold start {i + 1}: {colds[-1].wall_s:.2f} s to the complete file")
            out["cold"] = colds
            root = workdir / "latency"
            root.mkdir()
            agent = LightAgent(root, server.hosts, zk_root)
            try:
                agent.start(expected_keys=opts.keys, timeout=120)
                lat = measure_latency(agent, zk, "scale", opts.keys, opts.writes, rng)
                out["rss_after_latency_mib"] = round(read_rss_mib(agent.pid), 1)
            finally:
                agent.stop()
            out["latency"] = lat
            say(f"  one key → file: p50 {lat.p50_ms:.1f} ms, p99 {lat.p99_ms:.1f} ms")
            out["in_process"] = in_process(workdir, server.hosts, zk_root, opts.keys, opts.writes)
    finally:
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def format_keys(res: dict[str, Any]) -> list[str]:
    colds: list[ColdStart] = res["cold"]
    lat: LatencyResult = res["latency"]
    inp: InProcess = res["in_process"]
    walls = sorted(c.wall_s for c in colds)
    agents = sorted(c.agent_s for c in colds if c.agent_s is not None)
    cold_ok = walls[-1] <= TARGET_COLD_S
    one_ok = lat.p99_ms <= TARGET_ONE_KEY_P99_MS and lat.timeouts == 0
    return [
        f"keys: {res['keys']:,} keys in the app layer, daemon without puppet",
        f"  cold start → complete file ({len(colds)} starts, empty state dir): "
        f"median {statistics.median(walls):.2f} s, max {walls[-1]:.2f} s "
        f"(target ≤ {TARGET_COLD_S:g} s: {'ok' if cold_ok else 'MISSED'})",
        f"    of which inside the agent ('started' log line → file mtime): "
        f"median {statistics.median(agents):.2f} s"
        if agents
        else "    (no 'started' line)",
        f"    daemon RSS after its first sync: {statistics.median(c.rss_mib for c in colds):.1f}"
        f" MiB; after {lat.writes} one-key changes: {res['rss_after_latency_mib']:.1f} MiB",
        f"  one key → file ({len(lat.samples_ms)}/{lat.writes}, {lat.method.split(' ')[0]}): "
        f"p50 {lat.p50_ms:.1f} ms, p90 {lat.p90_ms:.1f}, p99 {lat.p99_ms:.1f}, "
        f"max {lat.max_ms:.1f} (zk.set alone p50 {lat.zk_set_p50_ms:.2f} ms) "
        f"(target p99 ≤ {TARGET_ONE_KEY_P99_MS:g} ms: {'ok' if one_ok else 'MISSED'})",
        f"    daemon CPU over the {lat.writes} changes: {lat.daemon_cpu_s:.2f} s "
        f"({lat.daemon_cpu_s / max(1, lat.writes) * 1000:.1f} ms per change)",
        "  in process (the agent's ZooKeeperReader and HieraData, this process's clock):",
        f"    cold: full read {inp.full_read_s:.2f} s, first render + write + lastgood "
        f"{inp.cold_render_s:.2f} s (lastgood.json alone {inp.lastgood_save_ms:.1f} ms)",
        f"    one key: read p50 {inp.one_key_read_p50_ms:.2f} ms; render + write + lastgood "
        f"p50 {inp.one_key_render_p50_ms:.2f} ms, p99 {inp.one_key_render_p99_ms:.2f} ms",
    ]


# --- fleet: many agents on one ZooKeeper ------------------------------------------------------


class ScaleEnsemble(ZooKeeperEnsemble):
    """``mozagent_dev.ensemble``'s 3 servers with room for a fleet: no
    per-address connection cap (every agent connects from 127.0.0.1; the
    fixture allows 200 per server). Properties in zoo.cfg: the last one wins."""

    def _write_config(self, i: int) -> Path:
        cfg = super()._write_config(i)
        cfg.write_text(cfg.read_text() + "maxClientCnxns=0\n")
        return cfg

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.poll() is None]


SUMMED = ("zk_packets_received", "zk_watch_count", "zk_num_alive_connections")


@dataclass
class ZkSample:
    """The ensemble's ``mntr`` counters (summed over members; latency the
    worst) and the java processes' CPU, at one instant."""

    at: float
    cpu_s: float
    sums: dict[str, float]
    max_latency_ms: float

    def num(self, name: str) -> float:
        return self.sums.get(name, math.nan)


def zk_sample(ensemble: ScaleEnsemble) -> ZkSample:
    sums = dict.fromkeys(SUMMED, 0.0)
    latency = 0.0
    for i in range(ensemble.size):
        mntr = ensemble.mntr(i)
        if "zk_packets_received" not in mntr:
            raise BenchError(f"no mntr answer from ZooKeeper {i + 1}")
        for name in SUMMED:
            sums[name] += float(mntr.get(name, 0))
        latency = max(latency, float(mntr.get("zk_max_latency", 0)))
    cpu = sum(read_cpu_seconds(pid) for pid in ensemble.pids())
    return ZkSample(time.monotonic(), cpu, sums, latency)


@dataclass
class ZkLoad:
    """What ZooKeeper did between two samples: requests (packets received) and CPU."""

    seconds: float
    requests: int
    requests_per_s: float
    cpu_pct: float  # of one core, all members together
    watches: int  # at the end
    connections: int
    max_latency_ms: float
    outstanding_max: int

    @classmethod
    def between(cls, a: ZkSample, b: ZkSample, outstanding_max: int = 0) -> ZkLoad:
        dt = max(b.at - a.at, 1e-6)
        received = int(b.num("zk_packets_received") - a.num("zk_packets_received"))
        return cls(
            seconds=round(dt, 3),
            requests=received,
            requests_per_s=round(received / dt, 1),
            cpu_pct=round((b.cpu_s - a.cpu_s) / dt * 100, 1),
            watches=int(b.num("zk_watch_count")),
            connections=int(b.num("zk_num_alive_connections")),
            max_latency_ms=b.max_latency_ms,
            outstanding_max=outstanding_max,
        )


@dataclass
class FanOut:
    what: str
    agents: int
    first_s: float
    all_s: float  # t0 to the last agent's presence showing it
    zk: ZkLoad  # from t0 to the last agent
    cli_s: float | None = None  # the operator's command, start to exit (--wait: all done)


@dataclass
class FleetSize:
    agents: int
    start_s: float  # growing to this size, batches converged
    idle: ZkLoad
    rss_mib_sum: float
    rss_mib_median: float
    rss_mib_max: float
    rounds: list[FanOut]


class ScaleFleet(Fleet):
    """``bench/fleet.py``'s fleet, with the global layer's key and ZooKeeper's
    own counters around every change."""

    def __init__(self, server: ScaleEnsemble, *args: Any) -> None:
        super().__init__(*args)
        self.server = server
        self.global_path = f"{self.root}/global/data/{KEY}"

    def seed(self) -> None:
        super().seed()
        self.zk.create(self.global_path, encode_value("initial"), makepath=True)
        self.data_version = max(self.data_version, self.zk.exists(self.global_path).mzxid)

    def _fan_out(self, what: str, act: Any, check: Any, timeout: float) -> FanOut:
        """``act()`` makes the change and returns (t0, cli seconds, the version to
        wait for); ZooKeeper is sampled just before t0 and when the last agent has it."""
        self.watch.begin()
        before = zk_sample(self.server)
        t0, cli_s, version = act()
        done = self.watch.wait_all(
            self.nodes, check(version), timeout, f"{what} to reach all agents", self.check_alive
        )
        after = zk_sample(self.server)
        last = max(done.values())
        # The counters were read when the wait saw the last agent, a little after
        # it: the window is the sampling's, the fan-out time the presence's.
        return FanOut(
            what,
            len(self.agents),
            round(min(done.values()) - t0, 3),
            round(last - t0, 3),
            ZkLoad.between(before, after),
            None if cli_s is None else round(cli_s, 3),
        )

    def global_write(self, i: int, timeout: float) -> FanOut:
        """One kazoo ``set`` of a global key: the fan-out alone, no CLI start-up."""

        def act() -> tuple[float, None, int]:
            t0 = time.perf_counter()
            stat = self.zk.set(self.global_path, encode_value(f"global-{i}-{uuid.uuid4().hex[:6]}"))
            self.data_version = stat.mzxid
            return t0, None, stat.mzxid

        return self._fan_out("global write", act, data_check, timeout)

    def global_cli_wait(self, i: int, timeout: float) -> FanOut:
        """``mozagent data set --global KEY VALUE --wait``: what the operator waits for."""

        def act() -> tuple[float, float, int]:
            value = f"cli-{i}-{uuid.uuid4().hex[:6]}"
            t0, took = self.cli("data", "set", "--global", KEY, value, "--string", "--wait")
            self.data_version = self.zk.exists(self.global_path).mzxid
            return t0, took, self.data_version

        return self._fan_out("data set --global --wait", act, data_check, timeout)

    def deploy(self, timeout: float) -> FanOut:
        """``mozagent deploy`` → every agent installed it (fleet.py's check)."""
        tag = TAGS[1] if self.tag == TAGS[0] else TAGS[0]

        def act() -> tuple[float, float, int]:
            t0, took = self.cli("deploy", APP, tag, "--source", self.repo.url)
            self.tag = tag
            self.release_version = self.zk.exists(release_path(self.root, APP)).mzxid
            return t0, took, self.release_version

        return self._fan_out(
            f"deploy {tag}", act, lambda v: release_check(v, self.commits[tag]), timeout
        )

    def idle_load(self, settle: float, window: float) -> ZkLoad:
        time.sleep(settle)
        self.check_alive()
        a = zk_sample(self.server)
        time.sleep(window)
        b = zk_sample(self.server)
        self.check_alive()
        return ZkLoad.between(a, b)


def run_fleet_sizes(opts: Options) -> dict[str, Any]:
    """One fleet grown through the sizes, each measured with all its agents converged."""
    if shutil.which("git") is None:
        raise BenchError("git is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="mozagent-bench-scale-fleet-"))
    os.chmod(workdir, 0o755)  # as root, install scripts run as nobody
    commit = code_version()
    env = child_env(snapshot_code(workdir))
    say(f"workdir {workdir}; agents run its copy of mozagent/ ({commit})")
    sizes: list[FleetSize] = []
    server = ScaleEnsemble(3)
    server.start()
    fleet: ScaleFleet | None = None
    try:
        with zk_client(server.hosts) as zk:
            say(f"ZooKeeper ensemble on {server.hosts}, java pids {server.pids()}")
            empty = zk_sample(server)
            time.sleep(opts.window)
            no_agents = ZkLoad.between(empty, zk_sample(server))
            repo, commits = release_repo(workdir)
            fleet = ScaleFleet(
                server, workdir, server.ports[0], server.hosts, zk, repo, commits, False, env
            )
            fleet.seed()
            for size in opts.sizes:
                say(
                    f"{size} agents: starting {len(fleet.agents) + 1}..{size} in batches of "
                    f"{opts.batch}"
                )
                start_s = fleet.grow(size, opts.batch, 300.0)
                say(f"  all {size} present and converged ({start_s:.1f} s)")
                idle = fleet.idle_load(opts.settle, opts.window)
                say(
                    f"  idle: {idle.requests_per_s:.1f} req/s, java {idle.cpu_pct:.1f}% CPU, "
                    f"{idle.watches} watches, {idle.connections} connections"
                )
                rss = [read_rss_mib(a.pid) for a in fleet.agents]
                timeout = 60.0 + size * 1.0
                rounds = []
                for i in range(opts.rounds):
                    rounds.append(fleet.global_write(i, timeout))
                    say(
                        f"  global write → all: {rounds[-1].all_s:.2f} s "
                        f"({rounds[-1].zk.requests} ZK requests)"
                    )
                    time.sleep(opts.pause)
                rounds.append(fleet.global_cli_wait(0, timeout))
                say(f"  data set --global --wait: exits after {rounds[-1].cli_s:.2f} s")
                time.sleep(opts.pause)
                for _ in range(opts.deploys):
                    rounds.append(fleet.deploy(timeout))
                    say(f"  deploy → all installed: {rounds[-1].all_s:.2f} s")
                    time.sleep(opts.pause)
                sizes.append(
                    FleetSize(
                        size,
                        round(start_s, 1),
                        idle,
                        round(sum(rss), 1),
                        round(statistics.median(rss), 1),
                        round(max(rss), 1),
                        rounds,
                    )
                )
    finally:
        if fleet is not None:
            stop_agents(fleet.agents)
        server.cleanup()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "server": "3-server ZooKeeperEnsemble (maxClientCnxns=0)",
        "no_agents": no_agents,
        "sizes": sizes,
    }


def format_fleet(res: dict[str, Any]) -> list[str]:
    lines = [
        f"fleet: N `mozagent daemon` processes, no puppet, one app, against one {res['server']}",
        f"  ZooKeeper with no agents: {res['no_agents'].requests_per_s:.1f} req/s, "
        f"java {res['no_agents'].cpu_pct:.1f}% of a core",
        f"  {'agents':>6} {'idle req/s':>10} {'per agent':>9} {'java CPU':>8} {'watches':>8} "
        f"{'conns':>6} {'RSS sum':>9} {'per agent med/max':>18}",
    ]
    sizes: list[FleetSize] = res["sizes"]
    for s in sizes:
        i = s.idle
        lines.append(
            f"  {s.agents:>6} {i.requests_per_s:>10.1f} {i.requests_per_s / s.agents:>9.3f} "
            f"{i.cpu_pct:>7.1f}% {i.watches:>8} {i.connections:>6} "
            f"{s.rss_mib_sum / 1024:>7.2f} G "
            f"{f'{s.rss_mib_median:.1f}/{s.rss_mib_max:.1f} MiB':>18}"
        )
    lines += [
        "",
        "  change → every presence shows it (t0 = the set, or the command's start):",
        f"  {'agents':>6} {'what':<26} {'first':>6} {'all':>6} {'CLI':>6} {'ZK req':>7} "
        f"{'req/s':>7} {'java CPU':>8} {'ZK max lat':>10}",
    ]
    for s in sizes:
        for r in s.rounds:
            cli = "-" if r.cli_s is None else f"{r.cli_s:.2f}"
            lines.append(
                f"  {r.agents:>6} {r.what:<26} {r.first_s:>6.2f} {r.all_s:>6.2f} {cli:>6} "
                f"{r.zk.requests:>7} {r.zk.requests_per_s:>7.0f} {r.zk.cpu_pct:>7.1f}% "
                f"{r.zk.max_latency_ms:>8.0f} ms"
            )
        lines.append(f"  {s.agents} agents started (batches converged) in {s.start_s:.0f} s")
    return lines


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Options:
    part: str
    quick: bool
    json_path: str | None
    keep: bool
    keys: int
    cold_starts: int
    writes: int
    sizes: list[int]
    batch: int
    rounds: int
    deploys: int
    pause: float
    settle: float
    window: float


def parse_args(argv: list[str] | None = None) -> Options:
    parser = bench_parser(__doc__, "fewer samples and rounds", "keep the temp dirs (daemon logs)")
    parser.add_argument("part", choices=("keys", "fleet", "all"))
    parser.add_argument("--keys", type=int, default=10_000, help="keys in the app layer")
    parser.add_argument("--sizes", default="100,300", help="fleet sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=10, help="agents started at a time")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(x) for x in args.sizes.split(",")})
    except ValueError:
        parser.error("--sizes: comma-separated integers")
    if not sizes or sizes[0] < 1 or sizes[-1] > 500:
        parser.error("--sizes: between 1 and 500")
    if not 2 <= args.keys <= 10_000:
        parser.error("--keys: between 2 and 10,000 (run.create_layer's key names)")
    return Options(
        part=args.part,
        quick=args.quick,
        json_path=args.json_path,
        keep=args.keep,
        keys=args.keys,
        cold_starts=3 if args.quick else 5,
        writes=60 if args.quick else 200,
        sizes=sizes,
        batch=args.batch,
        rounds=3 if args.quick else 5,
        deploys=1 if args.quick else 2,
        pause=1.0,
        settle=5.0 if args.quick else 10.0,
        window=10.0 if args.quick else 20.0,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    stop_on_sigterm()
    logging.basicConfig(level=logging.WARNING, format="  [%(name)s] %(message)s")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "mozagent_version": __version__,
        "commit": code_version(),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "loadavg_start": round(os.getloadavg()[0], 2),
    }
    lines = [
        "",
        f"mozagent {__version__} (commit {result['commit']}) scale bench "
        f"({'quick' if opts.quick else 'full'}) — {result['machine']}, "
        f"load average {result['loadavg_start']} at start",
        "",
    ]
    try:
        if opts.part in ("keys", "all"):
            result["keys"] = run_keys(opts)
            lines += format_keys(result["keys"])
        if opts.part in ("fleet", "all"):
            result["fleet"] = run_fleet_sizes(opts)
            lines += ["", *format_fleet(result["fleet"])]
    except (BenchError, TimeoutError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(
            f"benchmark interrupted ({exc or 'Ctrl-C'}); agents and ZooKeeper stopped",
            file=sys.stderr,
        )
        return 130
    lines += ["", f"total runtime {time.perf_counter() - started:.1f} s", ""]
    return write_report("\n".join(lines), to_json(result), opts.json_path)


if __name__ == "__main__":
    sys.exit(main())
