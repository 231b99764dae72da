"""Chaos against a standalone ZooKeeper, with full counts: what was lost, what recovered, how fast.

Not a test: it prints figures (and optionally JSON) and exits 0 whatever they
are; ``tests/test_partitions.py`` runs the same scenarios
(``mozagent_dev.zkchaos``) with CI's counts and asserts them. Everything is
real and local: a ZooKeeper server on a free ``127.0.0.1`` port, one
``mozagent daemon`` (app shop, node web1, the test suite's sandbox: session
timeout 4 s, real puppet), a real git repository for releases, and
``mozagent_dev.faultproxy`` relays for partitions.

* restarts: the server stopped and started N times (100; ``--quick`` 15)
  while a writer streams counters into 10 keys; after each start, the time
  until the agent has rendered what was confirmed once writes flowed again;
  at the end, keys whose last confirmed value is missing from ZooKeeper and
  from the agent's rendered Hiera file (goal 0 and 0);
* expiry: the agent's session ended during an install and during an order,
  once by a second client with its session id and password, once by SIGSTOP
  past the timeout: re-read, re-armed, presence back, runs counted (1);
* partitions: the agent cut off (hold, reset) until its session expired, then
  healed; ``deploy --wait`` through a relay held or reset after its write and
  healed, and held from the start until its --timeout: is its answer true?

Run from the repository root:

    .venv/bin/python bench/chaos_zk.py [--quick] [--restarts N] [--json PATH] [--keep]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchlib import bench_parser, code_version, to_json, write_report

from mozagent_dev import zkchaos
from mozagent_dev.faultproxy import FaultProxy
from mozagent_dev.testing import ZooKeeperServer, wait_until
from tests.apprepo import AppRepo
from tests.conftest import Sandbox

ROOT = "/chaos"
NODE = "web1"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@contextmanager
def stand(
    keep: bool, via_proxy: Callable[[ZooKeeperServer], FaultProxy] | None = None
) -> Iterator[Any]:
    """A fresh server, an agent (through a relay, if asked) with its first
    render done, and a writer's client; all stopped on the way out."""
    home = Path(tempfile.mkdtemp(prefix="mozagent-chaos-bench-"))
    os.chmod(home, 0o755)
    server = ZooKeeperServer()
    server.start()
    proxy = via_proxy(server) if via_proxy else None
    zk = zkchaos.client(server.hosts)
    (home / "agent").mkdir()
    box = Sandbox(home / "agent", proxy.hosts if proxy else server.hosts, ROOT)
    box.write_config(**zkchaos.agent_settings(home / "agent", NODE))
    try:
        zkchaos.put(zk, zkchaos.data_path(ROOT, "chaos"), b"0")
        box.start_daemon()
        wait_until(lambda: zkchaos.rendered(box).get("chaos") == 0, 60, "the first render")
        wait_until(lambda: zkchaos.presence(zk, ROOT, NODE), 60, "the presence")
        yield server, proxy, zk, box, home
    finally:
        box.stop_daemons()
        zk.stop()
        zk.close()
        if proxy is not None:
            proxy.close()
        server.cleanup()
        if keep:
            say(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def run_all(restarts: int, keep: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "code": code_version(),
        "restarts": None,
        "expiry": [],
        "partitions": [],
    }
    say(f"restarts: {restarts} under writes")
    with stand(keep) as (server, _, zk, box, _home):
        result["restarts"] = zkchaos.restarts_under_writes(server, box, zk, ROOT, restarts, say=say)
    for method in ("client_id", "sigstop"):
        say(f"expiry by {method} during an install and an order")
        with stand(keep, zkchaos.ZooKeeperProxy) as (server, proxy, zk, box, home):
            repo = AppRepo(home)
            result["expiry"] += zkchaos.expiry_scenario(
                method, box, repo, proxy, server, zk, ROOT, NODE
            )
    for mode in ("hold", "reset"):
        say(f"agent partition: {mode}")
        with stand(keep, lambda s: FaultProxy(s.port)) as (_, proxy, zk, box, _home):
            result["partitions"].append(
                zkchaos.agent_partition(mode, box, proxy, zk, ROOT, NODE, 7)
            )
    result["cli"] = []
    for case in ("hold-healed", "reset-healed", "hold-to-timeout"):
        say(f"deploy --wait across a CLI partition: {case}")
        with stand(keep) as (server, _, zk, box, home):
            report = zkchaos.cli_partition_deploy(
                case, box, AppRepo(home), server, zk, ROOT, NODE, "v1"
            )
            result["cli"].append(report)
    return result


def format_report(result: dict[str, Any]) -> str:
    r: zkchaos.RestartReport = result["restarts"]
    lines = [
        f"mozagent chaos against a standalone ZooKeeper (code {result['code']})",
        "",
        f"restarts under writes: {r.restarts} restarts, {r.keys} keys, {r.writes} writes confirmed "
        f"({r.retries} attempts repeated after ConnectionLoss or a timeout)",
        f"  final states lost: in ZooKeeper {r.lost_in_zookeeper}, "
        f"in the agent's files {r.lost_in_agent}",
        f"  recovery (start -> agent caught up): median {r.recovery_median_s:.2f} s, "
        f"max {r.recovery_max_s:.2f} s; final convergence {r.final_converge_s:.2f} s",
        "",
        "session expiry:",
    ]
    for e in result["expiry"]:
        lines.append(
            f"  {e.during:<7} by {e.method:<9}: runs {e.runs}, new session {e.new_session}, "
            f"presence back {e.presence_back}, re-read {e.reread}, re-armed {e.rearmed}, "
            f"outcome {e.outcome[:12]}, re-read {e.recovery_s:.2f} s after the thaw"
        )
    lines += ["", "agent partitions (until its session expired):"]
    for p in result["partitions"]:
        lines.append(
            f"  {p.mode:<5}: status {p.seen_in_status} (exit {p.status_exit}), last good kept "
            f"{p.kept_last_good}, converged {p.heal_to_converged_s:.2f} s after the heal"
        )
    lines += ["", "deploy --wait across a CLI partition:"]
    for c in result["cli"]:
        lines.append(
            f"  {c.case:<15}: exit {c.exit_code}, written {c.written}, installed {c.installed}, "
            f"truthful {c.truthful}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        __doc__, quick="15 restarts instead of 100", keep="keep the sandboxes (daemon logs) in /tmp"
    )
    parser.add_argument("--restarts", type=int, default=None, help="server restarts (default 100)")
    args = parser.parse_args(argv)
    restarts = args.restarts or (15 if args.quick else 100)
    result = run_all(restarts, args.keep)
    return write_report(format_report(result), to_json(result), args.json_path)


if __name__ == "__main__":
    raise SystemExit(main())
