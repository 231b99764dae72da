"""The reference service's two user-visible waits, with what each stage took:
from ``stack create`` on a real Heat to the app's page answering, and from
``mozagent data set`` to the page showing the new value.

Not a test: it prints figures and exits 0. A real Keystone and heat-all on
127.0.0.1 (the real-Heat tests' fixture) create the stack of
``examples/heat/webapp.yaml``; the agent (the real daemon, warm puppet
runner) applies its front ends (``examples/mozpuppet``) to the machine's
real Apache with mod_wsgi and MariaDB, as in ``tests/test_webservice.py``.
Needs root and ``tools/install-deps --test``. From the repository root:

    .venv/bin/python bench/webservice.py [--quick] [--json PATH]

Stages come from the agent's own log (``apply_finished``: each puppet run's
seconds) and status (the install script's seconds); every wait is bounded,
and everything started is stopped on any exit.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from benchlib import BenchError, bench_parser, code_version, to_json, write_report

from mozagent_dev import webservice
from mozagent_dev.testing import ZooKeeperServer, wait_until
from tests.realheat.cloud import HeatCloud, heat_missing
from tests.test_realheat import Stacks
from tests.webhost import WebHost, free_port, web_host

BOUND_S = 400.0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def events_since(host: WebHost, mark: int) -> list[dict[str, Any]]:
    """The agent's log events after byte ``mark`` of its log."""
    found = []
    for line in host.box.daemon_log()[mark:].splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            found.append(doc)
    return found


def short(name: str) -> str:
    """A config by the stack's resource (Heat names it <stack>-<resource>-<id>)."""
    for resource in ("database_config", "vhost_config"):
        if resource in name:
            return resource
    return name


def puppet_seconds(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds of each config's puppet runs (``apply_finished``), summed."""
    out: dict[str, float] = {}
    for e in events:
        if e.get("event") == "apply_finished":
            name = short(str(e.get("config")))
            out[name] = round(out.get(name, 0.0) + float(e.get("seconds") or 0), 2)
    return out


def stamp(event: dict[str, Any]) -> float:
    """An event's time, as ``time.time()``."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def deployment_seconds(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds from each deployment's start to its end (its run; the signal is after)."""
    started: dict[str, datetime] = {}
    out: dict[str, float] = {}
    for e in events:
        kind, name = e.get("event"), short(str(e.get("name")))
        if kind not in ("deployment_started", "deployment_finished") or "timestamp" not in e:
            continue
        at = datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00"))
        if kind == "deployment_started":
            started[name] = at
        elif name in started:
            out[name] = round((at - started[name]).total_seconds(), 2)
    return out


def page_until(url: str, want: Any, bound: float = 120.0) -> float:
    """Seconds until the page answers (``want`` of its JSON holds)."""
    start = time.perf_counter()

    def ready() -> bool:
        status, body = webservice.get(url, timeout=10)
        return status == 200 and bool(want(json.loads(body)))

    wait_until(ready, bound, f"{url} to answer as wanted", 0.02)
    return time.perf_counter() - start


def stack_to_page(
    cloud: HeatCloud, zk: ZooKeeperServer, root: Path, changes: int
) -> dict[str, Any]:
    stacks = Stacks(cloud)
    port = free_port()
    template = yaml.safe_load(webservice.STACK.read_text())
    try:
        t0 = time.perf_counter()
        stack_id = stacks.create(template, port=port)
        occ = stacks.os_collect_config(stack_id)
        fast = {"poll_min": 1.0, "poll_max": 2.0}  # the agent's defaults
        with web_host(root, zk.hosts, occ, port, **fast) as host:
            agent_up = time.perf_counter() - t0
            stacks.wait(stack_id, "CREATE_COMPLETE", timeout=BOUND_S)
            complete = time.perf_counter() - t0
            events = events_since(host, 0)
            t1 = time.perf_counter()
            host.deploy("v1")
            deployed = time.perf_counter() - t1
            install = (host.box.status_doc() or {}).get("release", {}).get("last_install", {})
            first_page = page_until(host.url, lambda p: p["release"] == "v1")
            row: dict[str, Any] = {
                "create_to_complete_s": round(complete, 2),
                "agent_started_s": round(agent_up, 2),
                "deployments_s": deployment_seconds(events),
                "puppet_s": puppet_seconds(events),
                "deploy_wait_s": round(deployed, 2),
                "install_script_s": round(install["ended"] - install["started"], 2),
                "install_to_page_s": round(first_page, 2),
                "create_to_page_s": round(complete + deployed + first_page, 2),
                "data": data_changes(host, changes),
            }
            return row
    finally:
        stacks.cleanup()


def data_changes(host: WebHost, count: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        value = f"change {i} {time.time():.3f}"
        mark = len(host.box.daemon_log())
        t, wall = time.perf_counter(), time.time()
        host.cli("data", "set", "webapp", "webapp::env", json.dumps({"GREETING": value}))
        page_until(host.url, lambda p, v=value: p["greeting"] == v)
        took, shown = time.perf_counter() - t, time.time()
        events = events_since(host, mark)
        runs = puppet_seconds(events)
        first = next((stamp(e) for e in events if e.get("event") == "apply_started"), wall)
        vhost = [
            stamp(e)
            for e in events
            if e.get("event") == "apply_finished" and short(str(e.get("config"))) == "vhost_config"
        ]
        rows.append(
            {
                "set_to_page_s": round(took, 2),
                "set_to_first_run_s": round(first - wall, 2),
                "puppet_s": runs,
                "vhost_done_to_page_s": round(shown - vhost[-1], 2) if vhost else None,
            }
        )
        say(f"  data set -> page: {took:.2f} s (puppet: {runs})")
        time.sleep(1.0)
    return rows


def run(opts: Any) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise BenchError("needs root (the machine's Apache and MariaDB, Keystone's keys)")
    if lacking := heat_missing() + webservice.missing():
        raise BenchError(f"not installed: {', '.join(lacking)} (tools/install-deps --test)")
    work = Path(tempfile.mkdtemp(prefix="mozagent-webservice-bench-"))
    zk = ZooKeeperServer()
    cloud = HeatCloud(work / "cloud")
    try:
        zk.start()
        say("starting Keystone and heat-all on 127.0.0.1")
        cloud.start(timeout=180)
        say("stack create -> page")
        row = stack_to_page(cloud, zk, work / "host", 3 if opts.quick else 7)
    finally:
        cloud.stop()
        zk.cleanup()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return {"code": code_version(), "row": row}


def report(result: dict[str, Any]) -> str:
    r = result["row"]
    data = r["data"]
    configs = sorted({c for d in data for c in d["puppet_s"]})

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2) if values else 0.0

    def col(key: str) -> list[float]:
        return [d[key] for d in data if d.get(key) is not None]

    per_change = ", ".join(
        f"{c} {med([d['puppet_s'].get(c, 0.0) for d in data]):.2f} s" for c in configs
    )
    deployments = ", ".join(f"{k} {v:.2f} s" for k, v in r["deployments_s"].items())
    return "\n".join(
        [
            f"reference service bench ({result['code']})",
            f"stack create -> CREATE_COMPLETE   {r['create_to_complete_s']:6.2f} s"
            f"  (agent started at {r['agent_started_s']:.2f} s; deployments run: {deployments};"
            f" puppet runs: {r['puppet_s']})",
            f"deploy v1 --wait                  {r['deploy_wait_s']:6.2f} s"
            f"  (the install script {r['install_script_s']:.2f} s)",
            f"installed -> page answers         {r['install_to_page_s']:6.2f} s"
            "  (mod_wsgi starts the app's daemons)",
            f"stack create -> page answers      {r['create_to_page_s']:6.2f} s",
            f"data set -> page shows it, p50    {med([d['set_to_page_s'] for d in data]):6.2f} s"
            f" over {len(data)}",
            f"  of which: data set -> first puppet run {med(col('set_to_first_run_s')):.2f} s"
            " (the command, ZooKeeper's watch, the quiet period);",
            f"  puppet per change, p50: {per_change} (one after the other; the vhost's run"
            " includes Apache's graceful restart);",
            "  the vhost's run done -> the page shows it"
            f" {med(col('vhost_done_to_page_s')):.2f} s.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "3 data changes instead of 7", "(unused)")
    opts = parser.parse_args(argv)
    try:
        result = run(opts)
    except (BenchError, TimeoutError, subprocess.SubprocessError, OSError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return write_report(report(result), to_json(result), opts.json_path)


if __name__ == "__main__":
    sys.exit(main())
