"""kill -9 of the agent at seeded random moments, with full counts: what was lost, what doubled.

Not a test: it prints what it counted (and optionally JSON) and exits 0
whatever it found; ``tests/test_agent_chaos.py`` runs the same storm
(``mozagent_dev.agentchaos``) with CI's counts and asserts it. Everything is
real and local: a ZooKeeper server on a free ``127.0.0.1`` port, one
``mozagent daemon`` (the test suite's sandbox, real puppet) watching its data,
release and orders and polling the Heat stand-in (``mozagent_dev.heatstub``),
a real git repository for releases.

The storm: 200 data changes, 100 Heat deployments (script, TempURL signals),
30 releases and 50 orders (``--quick``: the CI counts), the daemon SIGKILLed
after 40 of those events (a seeded delay of 0 to 1.5 s after each) and restarted.
Then, once converged: signals per deployment (lost, repeated), runs per order
(doubled), the final data value rendered and written by puppet, whether
``current`` points at the last release and that release is complete, temp
files left and state files that do not parse.

With ``--heat-outage SECONDS`` (e.g. 300: minutes, where CI holds 5 s) it
runs ``tests/test_agent_chaos.py``'s Heat outage instead: signals answered
503, then every connection to Heat (signals and the metadata poll) reset for
that long while a new deployment is published; then Heat comes back, and it
prints the signals each deployment got (goal: 1 each, none lost).

Run from the repository root:

    .venv/bin/python bench/chaos_agent.py [--quick] [--seed N] [--kills N] [--json PATH]
    .venv/bin/python bench/chaos_agent.py --heat-outage 300
"""

from __future__ import annotations

import time

from benchlib import bench_parser, code_version, to_json, write_report

from mozagent_dev.agentchaos import Counts
from mozagent_dev.testing import ZooKeeperServer
from tests.test_agent_chaos import heat_outage, storm

FULL = Counts(data=200, deployments=100, releases=30, orders=50, kills=40)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        __doc__,
        quick="the CI counts (20, 10, 4, 6; 8 kills)",
        keep="(sandboxes are always removed)",
    )
    parser.add_argument("--seed", type=int, default=18, help="the schedule's seed (default 18)")
    parser.add_argument("--kills", type=int, default=None, help="kill -9s (default 40)")
    parser.add_argument(
        "--heat-outage",
        type=float,
        default=None,
        metavar="SECONDS",
        help="run the Heat outage for this long instead of the storm",
    )
    args = parser.parse_args(argv)
    if args.heat_outage is not None:
        return outage(args.heat_outage, args.json_path)
    counts = Counts() if args.quick else FULL
    if args.kills is not None:
        counts = Counts(counts.data, counts.deployments, counts.releases, counts.orders, args.kills)
    server = ZooKeeperServer()
    server.start()
    began = time.monotonic()
    try:
        report = storm(server, "/chaos-agent", counts, args.seed, timeout=900)
    finally:
        server.cleanup()
    lines = [
        f"mozagent {code_version()}, {time.monotonic() - began:.0f} s in all",
        *report.lines(),
    ]
    doc = {
        **to_json(report),
        "lost_signals": report.lost_signals,
        "repeated_signals": report.repeated_signals,
        "doubled_orders": report.doubled_orders,
    }
    return write_report("\n".join(lines), doc, args.json_path)


def outage(seconds: float, json_path: str | None) -> int:
    server = ZooKeeperServer()
    server.start()
    began = time.monotonic()
    try:
        signals = heat_outage(server, "/chaos-heat", seconds)
    finally:
        server.cleanup()
    text = (
        f"mozagent {code_version()}: Heat down {seconds:g} s (503, then every connection reset);"
        f" signals per deployment after: {signals}; {time.monotonic() - began:.0f} s in all"
    )
    return write_report(text, {"outage_s": seconds, "signals": signals}, json_path)


if __name__ == "__main__":
    raise SystemExit(main())
