"""Releases, orders and presence end to end: real agents (daemon processes),
the real ZooKeeper, real puppet, real git repositories (file:// URLs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from mozagent.desired.fleet import host_path, orders_path, release_path, result_path
from mozagent_dev.testing import ZooKeeperServer, text_of
from tests.apprepo import AppRepo, git
from tests.conftest import Sandbox, wait_for


class Fleet:
    """Agents of one app, each a daemon with its own node name and state dir."""

    def __init__(self, root: Path, server: ZooKeeperServer, zk_root: str, zk: KazooClient):
        self.root = root
        self.server = server
        self.zk_root = zk_root
        self.zk = zk
        self.repo = AppRepo(root)
        self.boxes: dict[str, Sandbox] = {}

    def agent(self, node: str, home_name: str | None = None, **overrides: Any) -> Sandbox:
        """An agent named ``node``; ``home_name`` gives a second agent of the
        same node name a state dir (and apps dir) of its own."""
        home = self.root / (home_name or node)
        home.mkdir()
        box = Sandbox(home, self.server.hosts, self.zk_root)
        settings: dict[str, Any] = {
            "node": node,
            "releases": {"apps_dir": str(home / "apps"), "keep": 2, "timeout": 30},
            "orders": {"timeout": 20, "max_age": 600},
        }
        box.write_config(**{**settings, **overrides})
        self.boxes[home_name or node] = box
        return box

    def start(self, *nodes: str) -> None:
        for node in nodes or tuple(self.boxes):
            self.boxes[node].start_daemon()

    def stop(self) -> None:
        for box in self.boxes.values():
            box.stop_daemons()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return next(iter(self.boxes.values())).cli(*args, timeout=timeout)

    def deploy(self, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("deploy", "shop", tag, "--source", self.repo.url, *extra)

    def set_release(self, tag: str, node: str | None = None) -> int:
        """As any ZooKeeper client may write it (zkCli.sh, another tool)."""
        path = release_path(self.zk_root, "shop")
        if node is not None:
            path = f"{self.zk_root}/apps/shop/canaries/{node}"
        data = f"ref: {tag}\nsource: {self.repo.url}\n".encode()
        if self.zk.exists(path):
            return self.zk.set(path, data).mzxid
        self.zk.create(path, data, makepath=True)
        return self.zk.exists(path).mzxid

    def presence(self, node: str) -> dict[str, Any] | None:
        # One read, no exists() first: a presence can go (a session ending)
        # between two reads, and that is "no presence", not an error.
        try:
            data, _ = self.zk.get(host_path(self.zk_root, "shop", node))
        except NoNodeError:
            return None
        return json.loads(data)

    def current(self, node: str) -> str | None:
        link = self.root / node / "apps" / "shop" / "current"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def installed_text(self, node: str) -> str:
        return text_of(self.root / node / "apps" / "shop" / "current" / "installed.txt")


@pytest.fixture
def fleet(
    zk_server: ZooKeeperServer, zk_root: str, zk: KazooClient, puppet_bin: str
) -> Iterator[Fleet]:
    # Not under pytest's tmp_path: pytest keeps its base dir 0700, and under
    # root the app's code runs as nobody, which must reach its release dir.
    root = Path(tempfile.mkdtemp(prefix="mozagent-fleet-"))
    os.chmod(root, 0o755)
    f = Fleet(root, zk_server, zk_root, zk)
    try:
        yield f
    finally:
        f.stop()
        shutil.rmtree(root, ignore_errors=True)


def installed_commit(f: Fleet, node: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        doc = f.presence(node) or {}
        return ((doc.get("release") or {}).get("installed") or {}).get("commit")

    return probe


def test_release_installs_switches_and_shows_in_status_and_presence(fleet: Fleet) -> None:
    v1 = fleet.repo.release("v1")
    box = fleet.agent("web1")
    for words in (
        ("set", "shop", "greeting", "hello"),
        ("--global", "set", "greeting", "hi"),
        ("--global", "set", "where", "everywhere"),
        ("--node", "web1", "set", "shop", "where", "web1"),
    ):
        res = box.cli("data", *words)
        assert res.returncode == 0, res.stderr
    fleet.start()
    res = fleet.deploy("v1", "--wait", "--timeout", "90")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "web1: done" in res.stdout, res.stdout
    assert fleet.current("web1") == v1
    listing = json.loads(fleet.cli("fleet", "shop", "--json").stdout)
    assert "web1" in json.dumps(listing) and v1[:12] in json.dumps(listing), listing
    assert fleet.cli("fleet", "shop").returncode == 0
    text = fleet.installed_text("web1")
    assert f"app=shop node=web1 ref=v1\ncommit={v1}" in text
    # MOZAGENT_DATA holds the app's merged data (node > app > global).
    data = json.loads(text_of(fleet.root / "web1" / "apps" / "shop" / "current" / "data.json"))
    assert data == {"greeting": "hello", "where": "web1"}, data
    if os.geteuid() == 0:
        assert "user=nobody" in text  # never as root
    status = box.cli("status")
    assert "installed: v1" in status.stdout and v1[:12] in status.stdout, status.stdout
    doc = fleet.presence("web1")
    assert doc is not None and doc["release"]["installed"]["commit"] == v1
    assert doc["data_version"] and doc["last_apply"]["ok"] is True


def last_install(f: Fleet, node: str) -> dict[str, Any]:
    doc = f.presence(node) or {}
    return (doc.get("release") or {}).get("last_install") or {}


def acted_on(f: Fleet, node: str, version: int) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        last = last_install(f, node)
        return last if (last.get("version") or 0) >= version else None

    return probe


def test_failed_install_keeps_the_old_release_and_rollback_switches_back(fleet: Fleet) -> None:
    v1 = fleet.repo.release("v1")
    v2 = fleet.repo.release("v2", fail_nodes="web1")
    v3 = fleet.repo.release("v3")
    box = fleet.agent("web1")
    fleet.start()
    fleet.set_release("v1")
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 60, what="v1 installed")
    version = fleet.set_release("v2")
    failed = wait_for(acted_on(fleet, "web1", version), 60, what="the v2 install to end")
    assert failed["ok"] is False and "7" in failed["message"], failed
    assert fleet.current("web1") == v1  # current did not move
    assert "install refused on web1" in text_of(failed["log"])  # the script's output is kept
    code, doc = box.status()
    assert code == 3 and any("install failed" in e["message"] for e in doc["errors"]["release"])
    assert box.daemons[0].poll() is None  # the daemon keeps running
    fleet.set_release("v3")
    wait_for(lambda: installed_commit(fleet, "web1")() == v3, 60, what="v3 installed")
    fleet.set_release("v1")  # rollback: the old tree is still there, its script runs again
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 60, what="rolled back to v1")
    assert fleet.current("web1") == v1 and "ref=v1" in fleet.installed_text("web1")
    assert v2 not in os.listdir(fleet.root / "web1" / "apps" / "shop" / "releases")
    code, doc = box.status()
    assert "release" not in doc["errors"], doc["errors"]


def test_a_node_override_canaries_one_host(fleet: Fleet) -> None:
    v1 = fleet.repo.release("v1")
    v2 = fleet.repo.release("v2")
    fleet.agent("web1")
    fleet.agent("web2")
    fleet.start()
    fleet.set_release("v1")
    for node in ("web1", "web2"):
        wait_for(lambda n=node: installed_commit(fleet, n)() == v1, 60, what=f"v1 on {node}")
    fleet.set_release("v2", node="web2")
    wait_for(lambda: installed_commit(fleet, "web2")() == v2, 60, what="the canary on web2")
    assert installed_commit(fleet, "web1")() == v1
    assert fleet.presence("web2")["release"]["desired"]["path"].endswith("canaries/web2")
    fleet.zk.delete(f"{fleet.zk_root}/apps/shop/canaries/web2")
    wait_for(lambda: installed_commit(fleet, "web2")() == v1, 60, what="web2 back on v1")


def bad_release_values() -> list[tuple[str, bytes, str]]:
    return [
        ("not-yaml", b"ref: [unclosed", "release"),
        ("no-ref", b"source: file:///nowhere\n", "ref"),
        ("alias-bomb", b"a: &a [x, x]\nref: *a\nsource: s\n", "alias"),
        ("unknown-ref", b"ref: v404\nsource: {url}\n", "v404"),
        ("unfetchable", b"ref: v1\nsource: file:///nonexistent/repo.git\n", "nonexistent"),
    ]


def test_bad_release_znodes_are_errors_and_the_release_stays(fleet: Fleet) -> None:
    v1 = fleet.repo.release("v1")
    box = fleet.agent("web1")
    fleet.start()
    fleet.set_release("v1")
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 60, what="v1 installed")
    path = release_path(fleet.zk_root, "shop")
    for name, raw, word in bad_release_values():
        stat = fleet.zk.set(path, raw.replace(b"{url}", fleet.repo.url.encode()))
        last = wait_for(acted_on(fleet, "web1", stat.mzxid), 60, what=f"the {name} release")
        assert last["ok"] is False and word in last["message"], (name, last)
        code, doc = box.status()
        assert code == 3, name
        assert any(word in e["message"] for e in doc["errors"]["release"]), (name, doc["errors"])
        assert fleet.current("web1") == v1, name
    assert box.daemons[0].poll() is None


def kill9(box: Sandbox) -> None:
    proc = box.daemons[-1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_killed_mid_install_the_release_installs_after_restart(fleet: Fleet) -> None:
    fleet.repo.release("v1", slow="sleep 30")
    box = fleet.agent("web1")
    fleet.start()
    fleet.set_release("v1")
    wait_for(
        lambda: "release install" in str((box.status_doc() or {}).get("applying")),
        60,
        what="the install to start",
    )
    time.sleep(1)
    kill9(box)
    assert fleet.current("web1") is None  # nothing half-installed was switched to
    fleet.repo.release("v1b")  # a quick one under the same...
    git(fleet.repo.path, "tag", "-f", "v1", "v1b")  # ...tag: the operator fixed the release
    box.start_daemon()
    v1 = git(fleet.repo.path, "rev-parse", "v1")
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 60, what="v1 after the restart")
    assert "ref=v1" in fleet.installed_text("web1")


def push_order(f: Fleet, command: str, nodes: list[str] | None = None) -> str:
    """As `mozagent order` writes it (the CLI's own tests cover the CLI)."""
    doc = {"command": command, "by": "test@here", "at": time.time(), "nodes": nodes}
    path = f.zk.create(
        orders_path(f.zk_root, "shop") + "/order-",
        json.dumps(doc).encode(),
        sequence=True,
        makepath=True,
    )
    return path.rsplit("/", 1)[1]


def result_of(f: Fleet, order: str, node: str, final: bool = True) -> dict[str, Any] | None:
    path = result_path(f.zk_root, "shop", order, node)
    if f.zk.exists(path) is None:
        return None
    doc = json.loads(f.zk.get(path)[0])
    return doc if not final or doc["state"] != "running" else None


def three_agents_on_v1(f: Fleet) -> str:
    v1 = f.repo.release("v1")
    for node in ("web1", "web2", "web3"):
        f.agent(node)
    f.start()
    f.set_release("v1")
    for node in ("web1", "web2", "web3"):
        wait_for(lambda n=node: installed_commit(f, n)() == v1, 90, what=f"v1 on {node}")
    return v1


def test_an_order_runs_once_on_each_of_three_agents(fleet: Fleet) -> None:
    v1 = three_agents_on_v1(fleet)
    res = fleet.cli("order", "shop", "hello", "--wait", "--timeout", "90")
    assert res.returncode == 0, res.stdout + res.stderr
    order = res.stdout.split()[0]
    assert order.startswith("order-"), res.stdout
    for node in ("web1", "web2", "web3"):
        res = wait_for(lambda n=node: result_of(fleet, order, n), 60, what=f"{node}'s result")
        assert res["state"] == "done" and res["returncode"] == 0, res
        assert f"hello from {node} in " in res["output"] and v1 in res["output"]
    res = fleet.cli("order", "shop", "rm-rf", "--wait", "--timeout", "90")
    assert res.returncode != 0 and res.stdout.count("refused") >= 3, res.stdout
    unknown = res.stdout.split()[0]
    for node in ("web1", "web2", "web3"):
        res = wait_for(lambda n=node: result_of(fleet, unknown, n), 60, what=f"{node} refusing")
        assert res["state"] == "refused" and "rm-rf" in res["message"], res
    targeted = push_order(fleet, "hello", nodes=["web2"])
    wait_for(lambda: result_of(fleet, targeted, "web2"), 60, what="web2's result")
    # Each ran exactly once, and the untargeted hosts never answered the targeted order.
    for node in ("web1", "web2", "web3"):
        runs = text_of(fleet.repo.marks / f"hello-{node}").splitlines()
        assert len(runs) == (2 if node == "web2" else 1), (node, runs)
    assert result_of(fleet, targeted, "web1", final=False) is None
    # A restart does not run any of them again.
    box = fleet.boxes["web1"]
    box.stop_daemons()
    box.start_daemon()
    time.sleep(3)
    assert len(text_of(fleet.repo.marks / "hello-web1").splitlines()) == 1


def test_killed_mid_order_it_is_not_run_again(fleet: Fleet) -> None:
    three_agents_on_v1(fleet)
    order = push_order(fleet, "slow", nodes=["web1"])
    box = fleet.boxes["web1"]
    wait_for(
        lambda: (
            (result_of(fleet, order, "web1", final=False) or {}).get("state") == "running"
            or "running" in json.dumps((box.status_doc() or {}).get("orders"))
        ),
        30,
        what="the order to start",
    )
    kill9(box)
    box.start_daemon()
    res = wait_for(lambda: result_of(fleet, order, "web1"), 60, what="the interrupted result")
    assert res["state"] == "failed" and "interrupted" in res["message"], res
    time.sleep(8)  # longer than the command: had it been run again, it would have finished
    assert not (fleet.repo.marks / "slow-web1").exists()


def test_presence_goes_with_the_agent_and_comes_back_after_session_expiry(
    fleet: Fleet,
) -> None:
    box = fleet.agent("web1")
    proc = box.start_daemon()
    first = wait_for(lambda: fleet.presence("web1"), 30, what="presence")
    assert first["node"] == "web1" and first["pid"] == proc.pid
    owner = fleet.zk.exists(host_path(fleet.zk_root, "shop", "web1")).ephemeralOwner
    # Freeze the agent past its session timeout (4 s): ZooKeeper expires the
    # session and drops the ephemeral; thawed, the agent puts it back.
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: fleet.presence("web1") is None, 30, what="the presence to expire")
    finally:
        proc.send_signal(signal.SIGCONT)
    wait_for(lambda: fleet.presence("web1"), 30, what="the presence to come back")
    again = fleet.zk.exists(host_path(fleet.zk_root, "shop", "web1")).ephemeralOwner
    assert again != owner
    # Deleted by someone: put back.
    fleet.zk.delete(host_path(fleet.zk_root, "shop", "web1"))
    wait_for(lambda: fleet.presence("web1"), 30, what="the presence to be put back")
    box.stop_daemons()
    assert fleet.presence("web1") is None  # a clean stop removes it at once


def test_deploy_wait_and_data_wait_name_the_host_that_failed(fleet: Fleet) -> None:
    three_agents_on_v1(fleet)
    v2 = fleet.repo.release("v2", fail_nodes="web3")
    res = fleet.deploy("v2", "--wait", "--timeout", "90")
    assert res.returncode != 0, res.stdout
    out = res.stdout + res.stderr
    assert "web3" in out and "install" in out.lower(), out
    for node in ("web1", "web2"):
        assert installed_commit(fleet, node)() == v2
        assert any(node in line and "done" in line.lower() for line in out.splitlines()), out
    # Puppet itself fails on web3 for this value: data set --wait names it.
    (fleet.root / "web3" / "site.pp").write_text(
        "if lookup('greeting', undef, undef, '') == 'broken' { fail('web3 cannot take it') }\n"
    )
    res = fleet.cli("data", "set", "shop", "greeting", "broken", "--wait", "--timeout", "90")
    assert res.returncode != 0, res.stdout
    lines = (res.stdout + res.stderr).splitlines()
    assert any("web3" in line and "fail" in line.lower() for line in lines), lines
    assert any("web1" in line and "done" in line.lower() for line in lines), lines
    # Converged data: every host reports it, so the next wait returns 0.
    res = fleet.cli("data", "set", "shop", "greeting", "fine", "--wait", "--timeout", "90")
    assert res.returncode == 0, res.stdout + res.stderr


def test_daemon_once_installs_the_release_and_answers_orders(fleet: Fleet) -> None:
    v1 = fleet.repo.release("v1")
    box = fleet.agent("web1")
    fleet.set_release("v1")
    history = push_order(fleet, "hello")  # pushed before this host ever ran
    res = box.cli("daemon", "--once")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert fleet.current("web1") == v1
    assert (result_of(fleet, history, "web1") or {}).get("state") == "expired"
    order = push_order(fleet, "hello")
    res = box.cli("daemon", "--once")
    assert res.returncode == 0
    done = result_of(fleet, order, "web1")
    assert done is not None and done["state"] == "done", done
    assert fleet.presence("web1") is None  # --once leaves no presence behind


def test_hostile_order_and_release_znodes_are_refused_and_the_agent_keeps_going(
    fleet: Fleet,
) -> None:
    from tests.poison import POISON

    v1 = fleet.repo.release("v1")
    box = fleet.agent("web1")
    fleet.start()
    fleet.set_release("v1")
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 60, what="v1 installed")
    base = orders_path(fleet.zk_root, "shop") + "/order-"
    fleet.zk.ensure_path(orders_path(fleet.zk_root, "shop"))
    bad = {
        fleet.zk.create(base, raw, sequence=True).rsplit("/", 1)[1]: name
        for name, raw, _ in [*POISON, ("not-json", b"{command: [", ""), ("empty", b"", "")]
    }
    bad[push_order(fleet, "hello; rm -rf /")] = "injection"
    for order, name in bad.items():
        res = wait_for(lambda o=order: result_of(fleet, o, "web1"), 60, what=f"{name} refused")
        assert res["state"] == "refused", (name, res)
        assert f"/orders/{order}" in res["message"] or "hello; rm" in res["message"], (name, res)
    release = release_path(fleet.zk_root, "shop")
    for name, raw, _ in POISON:
        stat = fleet.zk.set(release, raw)
        last = wait_for(acted_on(fleet, "web1", stat.mzxid), 60, what=f"{name} as a release")
        assert last["ok"] is False and release in last["message"], (name, last)
    assert fleet.current("web1") == v1
    assert box.daemons[0].poll() is None
    good = push_order(fleet, "hello")
    res = wait_for(lambda: result_of(fleet, good, "web1"), 60, what="a good order after them")
    assert res["state"] == "done", res


def test_an_agent_that_was_down_runs_young_orders_expires_old_ones_and_old_ones_go(
    fleet: Fleet,
) -> None:
    v1 = fleet.repo.release("v1")
    box = fleet.agent("web1", orders={"timeout": 20, "max_age": 6, "retention": 15})
    fleet.start()
    fleet.set_release("v1")
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 60, what="v1 installed")
    box.stop_daemons()
    young = push_order(fleet, "hello")
    box.start_daemon()
    res = wait_for(lambda: result_of(fleet, young, "web1"), 60, what="the young order's result")
    assert res["state"] == "done", res
    box.stop_daemons()
    old = push_order(fleet, "hello")
    time.sleep(7)  # past max_age while the agent is down
    box.start_daemon()
    res = wait_for(lambda: result_of(fleet, old, "web1"), 60, what="the old order's result")
    assert res["state"] == "expired", res
    assert len(text_of(fleet.repo.marks / "hello-web1").splitlines()) == 1
    time.sleep(8)  # past the retention: the next order's read removes both
    push_order(fleet, "hello")
    orders = orders_path(fleet.zk_root, "shop")
    wait_for(
        lambda: not {young, old} & set(fleet.zk.get_children(orders)), 30, what="old orders pruned"
    )


# --- issue 13: a node name is held by one live agent; only ephemeral presences are hosts -------


def presence_owner(f: Fleet, node: str) -> int | None:
    stat = f.zk.exists(host_path(f.zk_root, "shop", node))
    return None if stat is None else stat.ephemeralOwner


def conflict(box: Sandbox) -> list[dict[str, Any]]:
    return ((box.status_doc() or {}).get("errors") or {}).get("presence") or []


def ran_in(f: Fleet, order: str, node: str, home: str) -> bool:
    """The result of ``order`` under ``node`` came from the agent living in ``home``."""
    res = result_of(f, order, node) or {}
    return str(f.root / home / "apps") in res.get("output", "")


def test_a_second_agent_with_the_same_node_name_keeps_its_hands_off(fleet: Fleet) -> None:
    v1 = fleet.repo.release("v1")
    first = fleet.agent("web1")
    first_proc = first.start_daemon()
    fleet.set_release("v1")
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 60, what="v1 on the first web1")
    before = push_order(fleet, "hello", nodes=["web1"])
    wait_for(lambda: result_of(fleet, before, "web1"), 60, what="the first web1's result")
    result_znode = result_path(fleet.zk_root, "shop", before, "web1")
    result_stat = fleet.zk.exists(result_znode)
    owner = presence_owner(fleet, "web1")

    twin = fleet.agent("web1", home_name="twin")
    twin_proc = twin.start_daemon()
    (problem,) = wait_for(lambda: conflict(twin), 60, what="the twin to report the conflict")
    assert "node name web1 is held by another live agent" in problem["message"], problem
    assert f"pid {first_proc.pid} " in problem["message"], problem
    assert f"session 0x{owner:x}" in problem["message"], problem
    res = twin.cli("status")
    assert res.returncode == 3 and "held by another live agent" in res.stdout, res.stdout
    assert "node_name_held_elsewhere" in twin.daemon_log()
    # The first's presence and result are untouched; it reports no conflict itself.
    assert presence_owner(fleet, "web1") == owner
    assert (fleet.presence("web1") or {}).get("pid") == first_proc.pid
    assert fleet.zk.exists(result_znode).mzxid == result_stat.mzxid
    assert not conflict(first)
    # A targeted order runs on the first only, and the twin records none.
    during = push_order(fleet, "hello", nodes=["web1"])
    wait_for(lambda: result_of(fleet, during, "web1"), 60, what="the order pushed during")
    assert ran_in(fleet, during, "web1", "web1"), result_of(fleet, during, "web1")
    res = fleet.cli("fleet", "shop")
    assert res.returncode == 0 and "1 of 1 hosts converged" in res.stdout, res.stdout
    # Stopping the twin leaves the first's presence (and the first) in place.
    twin.stop_daemons()
    assert twin_proc.returncode == 0
    assert presence_owner(fleet, "web1") == owner
    assert (fleet.presence("web1") or {}).get("pid") == first_proc.pid
    res = fleet.cli("fleet", "shop", "--json")
    hosts = json.loads(res.stdout)["hosts"]
    assert [(h["node"], h["presence"]["pid"]) for h in hosts] == [("web1", first_proc.pid)]
    assert not list((twin.state / "orders").glob("order-*.json"))
    assert len(text_of(fleet.repo.marks / "hello-web1").splitlines()) == 2

    # The twin back, and the first gone: the twin takes the name, leaves the
    # orders pushed before that to the first, and runs the ones after.
    twin_proc = twin.start_daemon()
    wait_for(lambda: conflict(twin), 60, what="the twin to refuse again")
    first.stop_daemons()
    wait_for(
        lambda: (fleet.presence("web1") or {}).get("pid") == twin_proc.pid,
        60,
        what="the twin to take the name",
    )
    wait_for(lambda: not conflict(twin), 30, what="the twin's conflict to clear")
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 60, what="v1 on the twin")
    after = push_order(fleet, "hello", nodes=["web1"])
    wait_for(lambda: result_of(fleet, after, "web1"), 60, what="the twin's result")
    assert ran_in(fleet, after, "web1", "twin"), result_of(fleet, after, "web1")
    # Orders are judged in order: by now the twin has passed over the older ones.
    assert fleet.zk.exists(result_znode).mzxid == result_stat.mzxid
    assert ran_in(fleet, during, "web1", "web1")
    assert len(text_of(fleet.repo.marks / "hello-web1").splitlines()) == 3
    assert twin.cli("status").returncode == 0


def test_an_agent_restarted_after_kill_9_replaces_its_own_stale_presence(fleet: Fleet) -> None:
    box = fleet.agent("web1")
    box.start_daemon()
    wait_for(lambda: fleet.presence("web1"), 30, what="presence")
    old = presence_owner(fleet, "web1")
    kill9(box)
    assert presence_owner(fleet, "web1") == old  # the ephemeral outlives its agent for now
    proc = box.start_daemon()
    wait_for(lambda: (fleet.presence("web1") or {}).get("pid") == proc.pid, 30, what="replaced")
    assert presence_owner(fleet, "web1") != old
    assert "presence_replaced" in box.daemon_log()
    assert "node_name_held_elsewhere" not in box.daemon_log()
    # What the next restart recognises: this session, this boot, this process.
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    recorded = json.loads((box.state / "presence.json").read_text())
    assert recorded["session"] == presence_owner(fleet, "web1")
    assert recorded["pid"] == proc.pid and recorded["boot_id"] == boot
    assert (fleet.presence("web1") or {}).get("boot_id") == boot


def start_in_boot(box: Sandbox, boot_id: str | None) -> subprocess.Popen[bytes]:
    """The agent started as if the machine were in boot ``boot_id`` (None:
    this machine's own), through the boot id file it reads."""
    if boot_id is None:
        return box.start_daemon()
    path = box.root / "boot_id"
    path.write_text(boot_id + "\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOZAGENT_BOOT_ID_FILE", str(path))
        return box.start_daemon()


def image_of(f: Fleet, box: Sandbox, node: str, home: str) -> Sandbox:
    """A second agent named ``node`` whose state dir is a copy of ``box``'s,
    taken as a VM image is: the running agent frozen meanwhile."""

    def idle() -> bool:
        doc = box.status_doc() or {}
        return bool(doc.get("last_apply")) and not doc.get("applying")

    wait_for(idle, 60, what="the first run to end")
    copy = f.agent(node, home_name=home)
    box.daemons[-1].send_signal(signal.SIGSTOP)
    try:
        shutil.copytree(box.state, copy.state, symlinks=True)
    finally:
        box.daemons[-1].send_signal(signal.SIGCONT)
    return copy


@pytest.mark.parametrize("boot", ["another boot", "the same boot"])
def test_a_clone_of_a_running_host_keeps_its_hands_off_its_presence(
    fleet: Fleet, boot: str
) -> None:
    first = fleet.agent("web1")
    first_proc = first.start_daemon()
    wait_for(lambda: fleet.presence("web1"), 30, what="the first's presence")
    owner = presence_owner(fleet, "web1")
    clone = image_of(fleet, first, "web1", "clone")
    # The clone carries the first's record of its claim: the same session.
    assert json.loads((clone.state / "presence.json").read_text())["session"] == owner

    clone_proc = start_in_boot(clone, "0b0e-clone" if boot == "another boot" else None)
    (problem,) = wait_for(lambda: conflict(clone), 60, what="the clone to report the conflict")
    message = problem["message"]
    assert message.startswith(f"node name web1 is held by session 0x{owner:x}, "), message
    if boot == "another boot":
        assert "records as its own, but from another boot" in message, message
        assert f"(pid {first_proc.pid} on " in message and "this is boot 0b0e-clone" in message
        assert "copy (clone, image) of that host" in message, message
    else:
        assert f"pid {first_proc.pid}, still running on this machine" in message, message
    res = clone.cli("status")
    assert res.returncode == 3 and "held by session" in res.stdout, res.stdout
    assert "node_name_held_elsewhere" in clone.daemon_log()
    assert "presence_replaced" not in clone.daemon_log()
    # The first keeps its presence and its name, and sees no conflict.
    assert presence_owner(fleet, "web1") == owner
    assert (fleet.presence("web1") or {}).get("pid") == first_proc.pid
    assert not conflict(first) and first_proc.poll() is None
    clone.stop_daemons()
    assert clone_proc.returncode == 0
    assert presence_owner(fleet, "web1") == owner
    assert (fleet.presence("web1") or {}).get("pid") == first_proc.pid


def test_an_agent_restarted_in_another_boot_waits_for_its_old_session_to_end(
    fleet: Fleet,
) -> None:
    # A session timeout (10 s, the test server's most) the restart is well within.
    box = fleet.agent("web1", zookeeper={"session_timeout": 10})
    box.start_daemon()
    wait_for(lambda: fleet.presence("web1"), 30, what="presence")
    old = presence_owner(fleet, "web1")
    kill9(box)  # and the machine "reboots": its boot id changes
    proc = start_in_boot(box, "0b0e-after-reboot")
    (problem,) = wait_for(lambda: conflict(box), 30, what="the agent to wait for the old session")
    assert "from another boot" in problem["message"], problem
    assert "restarted within the ZooKeeper session timeout" in problem["message"], problem
    assert presence_owner(fleet, "web1") == old  # not taken: it could be a clone's
    wait_for(
        lambda: (fleet.presence("web1") or {}).get("pid") == proc.pid,
        30,
        what="the name taken once the old session ended",
    )
    assert presence_owner(fleet, "web1") != old
    assert (fleet.presence("web1") or {}).get("boot_id") == "0b0e-after-reboot"
    wait_for(lambda: not conflict(box), 30, what="the conflict to clear")
    assert "presence_replaced" not in box.daemon_log()
    assert box.cli("status").returncode == 0


def forge_ghost(f: Fleet) -> None:
    """A persistent hosts/ghost, as any ZooKeeper client could write it: it
    claims every data version and a release it never installed."""
    doc = {
        "node": "ghost",
        "app": "shop",
        "agent_version": "9.9",
        "pid": 1,
        "data_version": 2**62,
        "last_apply": {"ok": True, "data_version": 2**62, "ended": time.time(), "message": "ok"},
        "release": {
            "desired": {"ref": "vX", "path": release_path(f.zk_root, "shop"), "version": 2**62},
            "installed": {"ref": "vX", "commit": "0" * 40, "source": None},
            "last_install": {"ok": True, "ref": "vX", "commit": "0" * 40, "version": 2**62},
        },
    }
    f.zk.create(host_path(f.zk_root, "shop", "ghost"), json.dumps(doc).encode(), makepath=True)


def test_a_forged_persistent_presence_is_no_host(fleet: Fleet) -> None:
    v1 = fleet.repo.release("v1")
    fleet.repo.release("v2")
    fleet.agent("web1")
    fleet.start()
    fleet.set_release("v1")
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 60, what="v1 installed")
    forge_ghost(fleet)
    res = fleet.deploy("v2", "--wait", "--timeout", "90")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ghost: not a live agent (persistent znode); not waited for" in res.stdout
    assert "waiting for 1 hosts" in res.stdout and "web1: done (v2 at " in res.stdout
    assert "ghost: done" not in res.stdout
    res = fleet.cli("data", "set", "shop", "greeting", "hi", "--wait", "--timeout", "90")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ghost: not a live agent" in res.stdout and "ghost: done" not in res.stdout
    assert "web1: done (data version" in res.stdout
    # fleet agrees: web1 converged, ghost shown as not live and not converged.
    res = fleet.cli("fleet", "shop")
    assert res.returncode == 1, res.stdout
    assert "1 of 1 hosts converged" in res.stdout
    ghost = next(line for line in res.stdout.splitlines() if line.startswith("ghost "))
    assert ghost.endswith("NOT LIVE: persistent znode"), ghost
    hosts = {h["node"]: h for h in json.loads(fleet.cli("fleet", "shop", "--json").stdout)["hosts"]}
    assert hosts["web1"]["converged"] is True and hosts["web1"]["live"] is True
    assert hosts["ghost"]["converged"] is False and hosts["ghost"]["live"] is False
    # Only ghost left: nothing live to wait for.
    fleet.stop()
    res = fleet.deploy("v1", "--wait", "--timeout", "10")
    assert res.returncode == 3 and "no live host to wait for" in res.stderr, res.stderr


def test_a_persistent_znode_under_the_agent_s_name_is_neither_deleted_nor_overwritten(
    fleet: Fleet,
) -> None:
    path = host_path(fleet.zk_root, "shop", "web1")
    fleet.zk.create(path, b'{"node": "web1", "app": "shop"}', makepath=True)
    box = fleet.agent("web1")
    box.start_daemon()
    (problem,) = wait_for(lambda: conflict(box), 60, what="the agent to report it")
    assert "taken by a persistent znode" in problem["message"] and "remove it" in problem["message"]
    assert box.cli("status").returncode == 3
    data, stat = fleet.zk.get(path)
    assert stat.ephemeralOwner == 0 and data == b'{"node": "web1", "app": "shop"}'
    fleet.zk.delete(path)  # the operator removes it: the agent takes its name
    wait_for(lambda: presence_owner(fleet, "web1"), 30, what="the agent's own presence")
    wait_for(lambda: not conflict(box), 30, what="the conflict to clear")
