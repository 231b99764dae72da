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

``fleet`` (issue 18, "Fleet"): N ``mozagent daemon`` processes of one app
(``bench/fleet.py``'s ``Fleet``: own node name, state and apps dir each, no
puppet manifest, ZooKeeper defaults), started in batches; then:

* one write to the global layer (kazoo ``set``) → every agent's presence
  shows ``data_version`` ≥ the write's mzxid (the rule of ``data set
  --wait``, ``desired.convergence.data_outcome``);
* ``mozagent data set --global KEY VALUE --wait``: what the operator waits for;
* ``mozagent deploy`` → every presence shows the release installed;
* ZooKeeper's requests (``mntr``: packets received, watches, connections,
  outstanding requests, latency) and the java process's CPU
  (``/proc/PID/stat``), idle and during each fan-out;
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
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from benchlib import BenchError, bench_parser, code_version, read_rss_mib, to_json, write_report
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
from mozagent.desired.layers import layer_paths
from mozagent.render.hieradata import HieraData
from mozagent.sources.zkreader import ZooKeeperReader

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
        f"median {statistics.median(agents):.2f} s" if agents else "    (no 'started' line)",
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


def parse_args(argv: list[str] | None = None) -> Options:
    parser = bench_parser(
        __doc__, "fewer samples and rounds", "keep the temp dirs (daemon logs)"
    )
    parser.add_argument("part", choices=("keys", "fleet", "all"))
    parser.add_argument("--keys", type=int, default=10_000, help="keys in the app layer")
    args = parser.parse_args(argv)
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
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
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
    except (BenchError, TimeoutError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    lines += ["", f"total runtime {time.perf_counter() - started:.1f} s", ""]
    return write_report("\n".join(lines), to_json(result), opts.json_path)


if __name__ == "__main__":
    sys.exit(main())
