"""Chaos on a 3-server ZooKeeper ensemble, full counts: the leader SIGKILLed 20 times, quorum lost.

The same scenarios as ``tests/test_ensemble.py`` (``mozagent_dev.chaos``),
with issue 18's counts, printing the figures instead of asserting them: kills,
time from each kill to the next confirmed ``mozagent data set`` (a CLI
process started after the kill, so Python's start-up is in it) and to every
agent connected with its presence, final data states lost, orders created or
run twice, deploys lost, ``deploy --wait`` answers that were not true, and the
quorum outage's status and convergence. Three agent daemons (web1..web3 of
app shop) under the ACL policy of ``tests/roles.py``; ZooKeeper, the agents
and the CLI all on 127.0.0.1.

    python bench/chaos.py            # 20 kills, 60 s outage: about 8 minutes
    python bench/chaos.py --quick    # 5 kills, 20 s outage (CI's counts)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchlib import bench_parser, code_version, to_json, write_report

from mozagent_dev import chaos
from tests.apprepo import AppRepo
from tests.roles import policy_doc
from tests.test_ensemble import NODES, make_agent


def say(text: str) -> None:
    print(text, flush=True)


def run_all(kills: int, outage: float, keep: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"code": code_version(), "kills": kills, "outage_s": outage}
    for name in ("leader_kills", "quorum_loss"):
        home = Path(tempfile.mkdtemp(prefix=f"mozagent-bench-chaos-{name}-"))
        os.chmod(home, 0o755)  # the app's code may run as nobody
        try:
            stage = chaos.Stage(home, policy_doc(), NODES, make_agent)
            try:
                assert stage.zk is not None
                if name == "leader_kills":
                    result[name] = chaos.leader_kills(
                        stage.ensemble, stage.agents, AppRepo(home), stage.cli, stage.zk,
                        stage.root, kills, say=say,
                    )  # fmt: skip
                else:
                    result[name] = chaos.quorum_loss(
                        stage.ensemble, stage.agents, stage.cli, stage.zk, stage.root, outage,
                        say=say,
                    )  # fmt: skip
            finally:
                stage.close()
        finally:
            if keep:
                say(f"kept {home}")
            else:
                shutil.rmtree(home, ignore_errors=True)
    return result


def report(doc: dict[str, Any]) -> str:
    k, q = doc["leader_kills"], doc["quorum_loss"]
    return "\n".join([
        f"chaos on a 3-server ensemble ({doc['code']})",
        f"  leader kills           {k['kills']} (leader changed {k['leader_changed']})",
        f"  kill -> kazoo write    p50 {k['recover_zk_write_p50_s']:.2f} s, "
        f"max {k['recover_zk_write_max_s']:.2f} s",
        f"  kill -> next CLI write p50 {k['recover_write_p50_s']:.2f} s, "
        f"max {k['recover_write_max_s']:.2f} s",
        f"  kill -> agents back    p50 {k['recover_presence_p50_s']:.2f} s, "
        f"max {k['recover_presence_max_s']:.2f} s",
        f"  data set               ok {k['data']['ok']}, nothing-written retried "
        f"{k['data']['nothing_retried']}, may-have-written {k['data']['maybe']}",
        f"  orders                 ok {k['orders']['ok']}, retried {k['orders']['nothing_retried']}"
        f", maybe {k['orders']['maybe']}; znodes {k['order_znodes']}",
        f"  deploys --wait         ok {k['deploys']['ok']}, retried "
        f"{k['deploys']['nothing_retried']}, maybe {k['deploys']['maybe']}",
        f"  states lost            {k['states_lost']}",
        f"  orders doubled         {k['orders_doubled']} (run twice {k['orders_run_twice']}, "
        f"not run {k['orders_not_run']})",
        f"  deploys lost           {k['deploys_lost']} (--wait untrue {k['wait_untruthful']})",
        f"  presence missing       {k['presence_missing']}",
        f"  quorum lost {q['outage_s']:g} s      status rc {q['status_exit']} "
        f"({q['status_state']}), last good kept {q['kept_last_good']}, write refused "
        f"{q['write_refused']}, converged {q['converge_s']:.2f} s after the restart",
        f"    status said: {q['status_says']}",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "5 kills and a 20 s outage (CI's counts)", "keep the dirs")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--outage", type=float, default=60.0)
    opts = parser.parse_args(argv)
    # kazoo's warnings on every dropped connection (each kill) drown the figures.
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    if opts.quick:
        opts.kills, opts.outage = 5, 20.0
    result = json.loads(json.dumps(run_all(opts.kills, opts.outage, opts.keep), default=to_json))
    return write_report(report(result), result, opts.json_path)


if __name__ == "__main__":
    sys.exit(main())
