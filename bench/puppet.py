"""What a puppet run costs: bare ``puppet apply``, the agent's runner with
``puppet.runner: exec``, and with ``puppet.runner: warm``, interleaved in one run.

Not a test: it prints figures and exits 0 whatever they are. Everything is
real and local: the Debian ``puppet``, a Hiera config and facts as the agent
renders them, and for the agent rows the agent's own ``run_puppet`` with its
``ChildRunner`` (containment, ledger) and, for warm, its ``WarmPuppet``:

* per run, for a one-file manifest and one of 200 file resources, each run
  changing every resource (a fact that counts the rounds): wall time, and CPU
  seconds of everything the run started (the puppet process and its
  children; for warm runs, the forked child, read from the parent's
  ``cutime``/``cstime``, plus the parent's own);
* two real agents (``mozagent daemon``, one per runner) on one ZooKeeper,
  writes to each in turn: ``zk.set`` of the key until puppet has written it to
  the manifest's file (the agent's defaults: a 0.5 s quiet period first);
* the warm parent's RSS.

Run from the repository root:

    .venv/bin/python bench/puppet.py [--quick] [--json PATH] [--rounds N]
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from benchlib import bench_parser, code_version, to_json, write_report
from kazoo.client import KazooClient
from run import (
    APP,
    KEY,
    AgentUnderTest,
    FileWatcher,
    create_layer,
    percentile,
    say,
    zk_client,
    zookeeper,
)

from mozagent import __version__
from mozagent.apply.process import ChildRunner
from mozagent.apply.puppet import ApplyItem, PuppetPaths, build_command, run_puppet
from mozagent.apply.warm import WarmPuppet
from mozagent.config import PuppetConfig
from mozagent.desired.keys import encode_value

TICK = os.sysconf("SC_CLK_TCK")
RUNNERS = ("bare", "exec", "warm")


def manifests(root: Path) -> dict[str, Path]:
    out = root / "out"
    out.mkdir()
    one = root / "one.pp"
    one.write_text(f"file {{ '{out}/one': content => \"${{facts['round']}}\\n\" }}\n")
    many = root / "many.pp"
    many.write_text(
        "".join(
            f"file {{ '{out}/f{i:03d}': content => \"${{facts['round']}} {i}\\n\" }}\n"
            for i in range(200)
        )
    )
    return {"one file": one, "200 files": many}


def puppet_world(root: Path) -> PuppetPaths:
    """Hiera data and facts where the agent renders them, and a work dir."""
    data = root / "hieradata"
    data.mkdir()
    (data / "app.yaml").write_text("greeting: hello\n")
    (root / "hiera.yaml").write_text(
        f"version: 5\ndefaults:\n  datadir: {data}\n  data_hash: yaml_data\n"
        "hierarchy:\n  - name: app\n    path: app.yaml\n"
    )
    facts = root / "facts.d"
    facts.mkdir()
    (facts / "mozagent.json").write_text(json.dumps({"mozagent_app": APP}))
    return PuppetPaths(str(root / "hiera.yaml"), str(facts), str(root / "work"))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parent_cpu(pid: int) -> float:
    """A process's own CPU and its waited-for children's (the forked runs)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


class Runs:
    """The three ways to run one manifest, on the same world."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.paths = puppet_world(root)
        self.cfg = PuppetConfig(extra_args=("--vardir", str(root / "var")), timeout=300)
        self.warm = WarmPuppet(self.cfg, str(root / "state"))
        self.results: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def once(self, runner: str, name: str, manifest: Path, round_: int) -> None:
        item = ApplyItem(manifest.name, str(manifest), env={"FACTER_round": f"{runner}-{round_}"})
        cpu0 = children_cpu()
        warm_cpu0 = self._warm_cpu()
        started = time.perf_counter()
        if runner == "bare":
            cmd = build_command(self.cfg, item, self.paths, str(self.root / "summary.yaml"))
            res = subprocess.run(
                cmd, env={**os.environ, **item.env}, capture_output=True, timeout=300
            )
            ok = res.returncode in (0, 2)
        else:
            result = run_puppet(
                self.cfg,
                item,
                self.paths,
                ChildRunner(threading.Event()),
                warm=self.warm if runner == "warm" else None,
            )
            ok = result.ok and not any("run with puppet apply" in t for t in result.output_tail)
        wall = time.perf_counter() - started
        cpu = children_cpu() - cpu0 + (self._warm_cpu() - warm_cpu0)
        if not ok:
            raise RuntimeError(f"{runner} run of {name} failed")
        self.results.setdefault((runner, name), []).append((wall, cpu))

    def _warm_cpu(self) -> float:
        info = self.warm.info()
        pid = info.get("pid")
        try:
            return parent_cpu(pid) if pid else 0.0
        except OSError:
            return 0.0


def per_run(opts: Any, work: Path) -> dict[str, Any]:
    runs = Runs(work)
    world = manifests(work)
    runs.warm.prestart()
    try:
        for name, manifest in world.items():  # a first run of each, not counted
            for runner in RUNNERS:
                runs.once(runner, name, manifest, -1)
        runs.results.clear()
        for i in range(opts.rounds):
            for name, manifest in world.items():
                for runner in RUNNERS if i % 2 == 0 else reversed(RUNNERS):
                    runs.once(runner, name, manifest, i)
            say(f"  round {i + 1}/{opts.rounds}")
        rss = runs.warm.info().get("rss_mib")
    finally:
        runs.warm.stop()
    table: dict[str, Any] = {}
    for name in world:
        row = {}
        for runner in RUNNERS:
            samples = runs.results[(runner, name)]
            row[runner] = {
                "wall_p50_s": round(statistics.median(w for w, _ in samples), 3),
                "cpu_p50_s": round(statistics.median(c for _, c in samples), 3),
            }
        row["warm_to_bare"] = round(row["warm"]["wall_p50_s"] / row["bare"]["wall_p50_s"], 2)
        table[name] = row
    return {"manifests": table, "warm_parent_rss_mib": rss}


def agent(work: Path, hosts: str, runner: str, zk: KazooClient) -> AgentUnderTest:
    root = work / f"agent-{runner}"
    root.mkdir()
    zk_root = f"/bench-puppet-{runner}"
    create_layer(zk, f"{zk_root}/apps/{APP}/data", 1)
    box = AgentUnderTest(root, hosts, zk_root)
    config = yaml.safe_load(box.config_path.read_text())
    config["puppet"]["runner"] = runner
    config.pop("apply", None)  # the agent's defaults: a 0.5 s quiet period
    box.config_path.write_text(yaml.safe_dump(config))
    return box


def write_to_done(opts: Any, work: Path) -> dict[str, Any]:
    """ZooKeeper write → puppet done, an agent per runner, writes alternating."""
    times: dict[str, list[float]] = {"exec": [], "warm": []}
    rss = None
    with zookeeper() as server, zk_client(server.hosts) as zk:
        boxes = {runner: agent(work, server.hosts, runner, zk) for runner in times}
        try:
            for box in boxes.values():
                box.start(expected_keys=1, timeout=180)
            for i in range(opts.writes):
                for runner, box in boxes.items():
                    times[runner].append(one_write(zk, box, f"{runner}-{i}"))
                    box.wait_idle(120)
            rss = (boxes["warm"].status().get("puppet_runner") or {}).get("rss_mib")
        finally:
            for box in boxes.values():
                box.stop()
    out: dict[str, Any] = {}
    for runner, samples in times.items():
        ordered = sorted(samples)
        out[runner] = {
            "p50_s": round(percentile(ordered, 50), 3),
            "p99_s": round(percentile(ordered, 99), 3),
        }
    out["warm_parent_rss_mib_in_agent"] = rss
    return out


def one_write(zk: KazooClient, box: AgentUnderTest, value: str) -> float:
    watcher = FileWatcher(str(box.out.parent), box.out.name)
    try:
        watcher.forget_past_events()
        started = time.perf_counter()
        zk.set(f"{box.layer_path()}/{KEY}", encode_value(value))
        check: Callable[[str], bool] = lambda text: text.strip() == value  # noqa: E731
        if not watcher.wait(check, 120):
            raise RuntimeError(f"puppet never wrote {value!r}")
        return time.perf_counter() - started
    finally:
        watcher.close()


def run_all(opts: Any) -> dict[str, Any]:
    if shutil.which("puppet") is None:
        raise RuntimeError("puppet is not installed")
    work = Path(tempfile.mkdtemp(prefix="mozagent-bench-puppet-"))
    try:
        say(f"per run, {opts.rounds} rounds of {', '.join(RUNNERS)} interleaved:")
        runs = per_run(opts, work / "runs")
        say(f"write -> puppet done, {opts.writes} writes per agent:")
        latency = write_to_done(opts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "mozagent_version": __version__,
        "commit": code_version(),
        "rounds": opts.rounds,
        "writes": opts.writes,
        "per_run": runs,
        "write_to_done": latency,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"mozagent {result['mozagent_version']} (commit {result['commit']}) puppet bench: "
        f"{result['rounds']} rounds, {result['writes']} writes per agent",
        "",
        f"{'':<12}{'bare wall':>10}{'exec wall':>10}{'warm wall':>10}"
        f"{'bare cpu':>10}{'exec cpu':>10}{'warm cpu':>10}{'warm/bare':>10}",
    ]
    for name, row in result["per_run"]["manifests"].items():
        walls = [row[r]["wall_p50_s"] for r in RUNNERS]
        cpus = [row[r]["cpu_p50_s"] for r in RUNNERS]
        lines.append(
            f"{name:<12}"
            + "".join(f"{v:>9.2f}s" for v in walls + cpus)
            + f"{row['warm_to_bare']:>10}"
        )
    lat = result["write_to_done"]
    lines += [
        "",
        f"write -> puppet done: exec p50 {lat['exec']['p50_s']:.2f} s, p99 "
        f"{lat['exec']['p99_s']:.2f} s; warm p50 {lat['warm']['p50_s']:.2f} s, p99 "
        f"{lat['warm']['p99_s']:.2f} s",
        f"warm parent RSS: {result['per_run']['warm_parent_rss_mib']} MiB (bench), "
        f"{lat['warm_parent_rss_mib_in_agent']} MiB (agent)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "4 rounds, 4 writes", "unused")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--writes", type=int, default=10)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.writes = 4, 4
    result = json.loads(json.dumps(run_all(opts), default=to_json))
    return write_report(report(result), result, opts.json_path)


if __name__ == "__main__":
    sys.exit(main())
