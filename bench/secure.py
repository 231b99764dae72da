"""What TLS and ACLs cost: one agent on plain text and an open tree against
one over TLS (client certificate, host name checked) on a tree under a role
policy, in the same run, on the same ZooKeeper.

Not a test: it prints figures (and optionally JSON) and exits 0 whatever they
are. One ZooKeeper on 127.0.0.1 with a plain ``clientPort`` and a TLS
``secureClientPort`` (Netty; ``mozagent_dev.testing.ZooKeeperServer``), a
throwaway PKI (``mozagent_dev.pki``), and for each side a real ``mozagent
daemon`` with a one-key layer and a one-resource manifest:

* write → rendered: ``zk.set`` of the key by the operator's client (plain, or
  TLS as ``x509:CN=ops`` under the policy) until the agent's rendered
  ``app.yaml`` holds it, p50/p99 over N writes (``bench/run.py``'s method);
* idle: the agent's CPU seconds over a window with nothing to do, and its RSS;
* ``deploy --wait`` to 10 agents (``bench/fleet.py``'s fleet): the command's
  whole time, as the deployer waits for it, from its process start to its exit
  once every host has installed the release. The TLS fleet has one certificate
  per host (``agents: {node: identity}``), so every ``--wait`` also reads and
  checks each host's claim; the two fleets run side by side and their rounds
  alternate.
Run from the repository root:

    .venv/bin/python bench/secure.py [--quick] [--json PATH]
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import REPO, bench_parser, read_cpu_seconds, read_rss_mib, to_json, write_report
from fleet import Fleet, child_env, median, release_repo, snapshot_code, stop_agents
from kazoo.client import KazooClient
from run import APP, AgentUnderTest, create_layer, measure_latency, say

from mozagent.desired.acl import digest_id
from mozagent.zkauth import TLS_ENV
from mozagent_dev.pki import Pair, Pki
from mozagent_dev.testing import ZooKeeperServer

ADMIN = ("admin", "bench-admin-pw")
FLEET_SIZE = 10


def policy(root: Path, agents: list[str] | dict[str, str]) -> Path:
    path = root / "policy.yaml"
    roles = {"deployers": ["x509:CN=ops"], "operators": ["x509:CN=ops"], "agents": agents}
    path.write_text(yaml.safe_dump({"admins": [digest_id(*ADMIN)], "apps": {APP: roles}}))
    return path


def apply_policy(
    hosts: str, zk_root: str, work: Path, agents: list[str] | dict[str, str] | None = None
) -> None:
    cred = work / "admin.cred"
    cred.write_text(f"{ADMIN[0]}:{ADMIN[1]}\n")
    cred.chmod(0o600)
    env = {**os.environ, "MOZAGENT_ZOOKEEPER_CREDENTIALS": str(cred)}
    path = policy(work, agents if agents is not None else ["x509:CN=web1"])
    cmd = [sys.executable, "-m", "mozagent", "acl", "apply", str(path)]
    subprocess.run(
        [*cmd, "--zookeeper", hosts, "--root", zk_root],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
        cwd=REPO,
    )


def idle_cost(agent: AgentUnderTest, seconds: float) -> dict[str, float]:
    agent.wait_idle(60)
    before = read_cpu_seconds(agent.pid)
    time.sleep(seconds)
    return {
        "idle_cpu_ms_per_min": round((read_cpu_seconds(agent.pid) - before) * 60e3 / seconds, 1),
        "rss_mib": round(read_rss_mib(agent.pid), 1),
    }


def one_side(
    label: str, work: Path, hosts: str, writer: KazooClient, extra: dict[str, Any], opts: Any
) -> dict[str, Any]:
    root = work / label
    root.mkdir()
    zk_root = f"/bench-{label}"
    agent = AgentUnderTest(root, hosts, zk_root)
    config = yaml.safe_load(agent.config_path.read_text())
    config["zookeeper"].update(extra)
    agent.config_path.write_text(yaml.safe_dump(config))
    try:
        agent.start(expected_keys=1)
        lat = measure_latency(agent, writer, label, 1, opts.writes, random.Random(7))
        cost = idle_cost(agent, opts.idle)
    finally:
        agent.stop()
    say(f"  {label}: p50 {lat.p50_ms:.1f} ms, p99 {lat.p99_ms:.1f} ms, {cost}")
    return {"p50_ms": lat.p50_ms, "p99_ms": lat.p99_ms, "timeouts": lat.timeouts, **cost}


def tls_settings(ca: Path, pair: Pair) -> dict[str, str]:
    return {"tls_ca": str(ca), "tls_cert": str(pair.cert), "tls_key": str(pair.key)}


def deploy_wait(
    work: Path, zk: ZooKeeperServer, admin: KazooClient, pki: Pki, ops: Pair, rounds: int
) -> dict[str, Any]:
    """``deploy --wait`` to two fleets of FLEET_SIZE agents on one server, one
    in plain text on an open tree, one over TLS with a certificate per host
    and the policy's ACLs; rounds alternate between them."""
    os.chmod(work, 0o755)  # as root, install scripts run as nobody, who must reach the apps dir
    env = child_env(snapshot_code(work))
    nodes = [f"web{i:03d}" for i in range(1, FLEET_SIZE + 1)]
    pairs = {node: pki.issue(node, f"/CN={node}") for node in nodes}
    files = {"ca": pki.ca, "cert": ops.cert, "key": ops.key}
    ops_env = {**env, **{TLS_ENV[k]: str(path) for k, path in files.items()}}
    repo, commits = release_repo(work)
    plain = Fleet(work / "fleet-plain", zk.port, zk.hosts, admin, repo, commits, False, env)
    secure = Fleet(
        work / "fleet-tls",
        zk.port,
        zk.tls_hosts,
        admin,
        repo,
        commits,
        False,
        ops_env,
        agent_zk=lambda node: tls_settings(pki.ca, pairs[node]),
    )
    apply_policy(zk.hosts, secure.root, work, {node: f"x509:CN={node}" for node in nodes})
    took: dict[str, list[float]] = {"plain": [], "tls": []}
    try:
        for label, fleet in (("plain", plain), ("tls", secure)):
            fleet.seed()
            fleet.grow(FLEET_SIZE, 5, 180)
            say(f"  {label}: {FLEET_SIZE} agents present and converged")
        for _ in range(rounds):
            for label, fleet in (("plain", plain), ("tls", secure)):
                took[label].append(fleet.deploy_round(60 + FLEET_SIZE, wait=True).cli_s)
                say(f"  {label}: deploy --wait {took[label][-1]:.2f} s")
    finally:
        stop_agents(plain.agents + secure.agents)
    return {
        label: {"p50_s": round(median(t), 3), "max_s": round(max(t), 3), "runs": t}
        for label, t in took.items()
    }


def run_all(opts: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mozagent-bench-secure-") as tmp:
        work = Path(tmp)
        pki = Pki(work / "pki")
        server_pair = pki.issue("server", "/CN=zk", "IP:127.0.0.1")
        agent_pair = pki.issue("web1", "/CN=web1")
        ops = pki.issue("ops", "/CN=ops")
        with ZooKeeperServer(tls=(server_pair.both, pki.ca)) as zk:
            admin = KazooClient(hosts=zk.hosts, timeout=10, auth_data=[("digest", ":".join(ADMIN))])
            admin.start(timeout=15)
            secure = KazooClient(
                hosts=zk.tls_hosts,
                timeout=10,
                use_ssl=True,
                ca=str(pki.ca),
                certfile=str(ops.cert),
                keyfile=str(ops.key),
                check_hostname=True,
            )
            secure.start(timeout=15)
            try:
                create_layer(admin, f"/bench-plain/apps/{APP}/data", 1)
                create_layer(admin, f"/bench-tls/apps/{APP}/data", 1)
                apply_policy(zk.hosts, "/bench-tls", work)
                say("plain text, open tree:")
                plain = one_side("plain", work, zk.hosts, admin, {}, opts)
                say("TLS with a client certificate, role ACLs:")
                tls = one_side(
                    "tls",
                    work,
                    zk.tls_hosts,
                    secure,
                    {
                        "tls_ca": str(pki.ca),
                        "tls_cert": str(agent_pair.cert),
                        "tls_key": str(agent_pair.key),
                    },
                    opts,
                )
                say(f"deploy --wait to {FLEET_SIZE} agents, plain vs TLS with per-host identities:")
                fleets = deploy_wait(work, zk, admin, pki, ops, opts.rounds)
            finally:
                for c in (admin, secure):
                    c.stop()
                    c.close()
    plain["deploy_wait_p50_s"] = fleets["plain"]["p50_s"]
    tls["deploy_wait_p50_s"] = fleets["tls"]["p50_s"]
    ratios = {
        k: round(tls[k] / plain[k], 2) if plain[k] else None
        for k in ("p50_ms", "p99_ms", "idle_cpu_ms_per_min", "rss_mib", "deploy_wait_p50_s")
    }
    return {
        "fleet_size": FLEET_SIZE,
        "deploy_wait": fleets,
        "writes": opts.writes,
        "idle_s": opts.idle,
        "plain": plain,
        "tls_acl": tls,
        "ratio_tls_to_plain": ratios,
    }


def report(result: dict[str, Any]) -> str:
    rows = [("", "plain, open", "TLS + ACLs", "ratio")]
    for key, name in (
        ("p50_ms", "write -> rendered p50 (ms)"),
        ("p99_ms", "write -> rendered p99 (ms)"),
        ("idle_cpu_ms_per_min", "agent idle CPU (ms/min)"),
        ("rss_mib", "agent RSS (MiB)"),
        ("deploy_wait_p50_s", f"deploy --wait, {result['fleet_size']} agents, p50 (s)"),
    ):
        p, t = result["plain"][key], result["tls_acl"][key]
        digits = 2 if key.endswith("_s") else 1
        ratio = result["ratio_tls_to_plain"][key]
        rows.append((name, f"{p:.{digits}f}", f"{t:.{digits}f}", f"{ratio}"))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, width, strict=True))
        )
        for r in rows
    ]
    runs = len(result["deploy_wait"]["plain"]["runs"])
    head = f"{result['writes']} writes, {result['idle_s']:g} s idle, {runs} deploys per fleet"
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "50 writes, a 20 s idle window, 3 deploys", "unused")
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=7, help="deploy --wait runs per fleet")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.writes, opts.idle, opts.rounds = 50, 20.0, 3
    result = json.loads(json.dumps(run_all(opts), default=to_json))
    return write_report(report(result), result, opts.json_path)


if __name__ == "__main__":
    sys.exit(main())
