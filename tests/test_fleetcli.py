"""``mozagent fleet``, ``deploy``, ``order`` and ``data … --wait`` against a real ZooKeeper.

The agents are played by the test: ``Agents`` holds its own session and
creates each host's presence as an EPHEMERAL znode following the contract of
issue 9, and threads update them to play hosts converging or failing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss

from mozagent.cli import fleet as fleetcli
from mozagent.cli import fleetviews as views
from mozagent.cli import main
from mozagent.desired import convergence as cv
from mozagent.desired.fleet import DesiredRelease
from mozagent.desired.release import InvalidRelease, Release
from mozagent_dev.testing import ZooKeeperServer, free_port, wait_until

COMMIT = "1a2b3c4d5e" + "0" * 30
SOURCE = "file:///srv/git/shop"


def layer_version(zk: KazooClient, path: str) -> int:
    """The contract's data version of a layer, computed independently of the CLI."""
    if zk.exists(path) is None:
        return 0
    names, stat = zk.get_children(path, include_data=True)
    return max([stat.pzxid, *(zk.exists(f"{path}/{n}").mzxid for n in names)])


class Agents:
    """Stand-ins for the agents: presence znodes on a session of their own."""

    def __init__(self, hosts: str, root: str) -> None:
        self.root = root
        self.client = KazooClient(hosts=hosts, timeout=10)
        self.client.start(timeout=15)
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def path(self, node: str, app: str = "shop") -> str:
        return f"{self.root}/apps/{app}/hosts/{node}"

    def join(self, node: str, app: str = "shop", data_version: int = 0, **fields: Any) -> None:
        doc: dict[str, Any] = {
            "node": node,
            "app": app,
            "agent_version": "0.4.0",
            "pid": 123,
            "updated": time.time(),
            "data_version": data_version,
            "last_apply": {
                "ok": True,
                "data_version": data_version,
                "ended": time.time() - 30,
                "message": "ok",
            },
            "release": {"desired": None, "installed": None, "last_install": None},
        }
        doc.update(fields)
        self.docs[(app, node)] = doc
        self.client.create(
            self.path(node, app), json.dumps(doc).encode(), ephemeral=True, makepath=True
        )

    def join_raw(self, node: str, data: bytes, app: str = "shop") -> None:
        self.client.create(self.path(node, app), data, ephemeral=True, makepath=True)

    def update(self, node: str, app: str = "shop", **fields: Any) -> None:
        doc = self.docs[(app, node)]
        doc.update(fields, updated=time.time())
        self.client.set(self.path(node, app), json.dumps(doc).encode())

    def installed(self, node: str, version: int, ok: bool = True, ref: str = "v2") -> None:
        """The host acted on release znode ``version``: installed it, or failed to."""
        desired = {"ref": ref, "source": SOURCE, "path": self.release_path(), "version": version}
        last = {
            "ok": ok,
            "ref": ref,
            "commit": COMMIT if ok else None,
            "version": version,
            "ended": time.time(),
            "message": "ok" if ok else "install script exited 1",
            "log": f"/srv/apps/shop/logs/{version}.log",
        }
        release = dict(self.docs[("shop", node)]["release"], desired=desired, last_install=last)
        if ok:
            release["installed"] = {"ref": ref, "commit": COMMIT, "source": SOURCE}
        self.update(node, release=release)

    def leave(self, node: str, app: str = "shop") -> None:
        self.client.delete(self.path(node, app))

    def release_path(self, node: str | None = None) -> str:
        base = f"{self.root}/apps/shop"
        return f"{base}/canaries/{node}" if node else f"{base}/release"

    def soon(self, play: Callable[[], None]) -> None:
        """Run ``play`` in a thread (the hosts reacting while the CLI waits)."""

        def run() -> None:
            try:
                play()
            except BaseException as exc:  # reported by the fixture, not lost
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)
        self.client.stop()
        self.client.close()
        assert not self.errors, self.errors


@pytest.fixture
def agents(zk_server: ZooKeeperServer, zk_root: str) -> Iterator[Agents]:
    team = Agents(zk_server.hosts, zk_root)
    yield team
    team.close()


@pytest.fixture
def cli(zk_server: ZooKeeperServer, zk_root: str, capsys: pytest.CaptureFixture[str]):
    """Run ``mozagent ...`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--zookeeper", zk_server.hosts, "--root", zk_root])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    return run


def row(out: str, node: str) -> str:
    return next(line for line in out.splitlines() if line.split()[:1] == [node])


def until(what: str, predicate: Callable[[], Any], timeout: float = 20) -> Any:
    return wait_until(predicate, timeout, what, 0.05)


# --- fleet -----------------------------------------------------------------------------------


def test_fleet_marks_hosts_lagging_or_failed(cli, agents: Agents, zk: KazooClient, zk_root: str):
    assert cli("data", "set", "shop", "greeting", "hi")[0] == 0
    assert cli("data", "set", "--global", "port", "80")[0] == 0
    assert cli("deploy", "shop", "v2", "--source", SOURCE)[0] == 0
    current = max(
        layer_version(zk, f"{zk_root}/apps/shop/data"), layer_version(zk, f"{zk_root}/global/data")
    )
    release = zk.exists(agents.release_path()).mzxid
    for node in ("web1", "web2", "web3", "web4"):
        agents.join(node, data_version=current)
        agents.installed(node, release, ok=node != "web3")
    agents.update("web2", data_version=current - 1)  # has not applied the newest data
    assert cli("data", "set", "shop", "workers", "4", "--node", "web4")[0] == 0  # its own layer

    code, out, _ = cli("fleet", "shop")
    assert code == 1, out
    assert f"app shop: data version {current}" in out
    assert "release v2 from file:///srv/git/shop" in out
    assert row(out, "web1").endswith("  ok")
    assert "v2 1a2b3c4d" in row(out, "web1") and "0.4.0" in row(out, "web1")
    assert row(out, "web2").endswith("LAGGING: data")
    assert row(out, "web3").endswith("FAILED: install")
    assert row(out, "web4").endswith("LAGGING: data")
    assert "web3: install failed: install script exited 1" in out
    assert "1 of 4 hosts converged" in out

    code, out, _ = cli("fleet", "shop", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["exit_code"] == 1 and doc["converged"] is False
    by_node = {h["node"]: h for h in doc["hosts"]}
    assert [n for n, h in sorted(by_node.items()) if h["converged"]] == ["web1"]
    assert by_node["web3"]["problems"] == ["FAILED: install"]
    assert by_node["web4"]["expected_data_version"] > current

    node_layer = layer_version(zk, f"{zk_root}/apps/shop/nodes/web4/data")
    agents.update("web2", data_version=current)
    agents.update("web4", data_version=node_layer)
    agents.installed("web3", release, ok=True)
    code, out, _ = cli("fleet", "shop")
    assert code == 0, out
    assert "4 of 4 hosts converged" in out


def test_fleet_marks_a_host_that_did_not_act_on_the_new_release(cli, agents: Agents, zk):
    assert cli("deploy", "shop", "v1", "--source", SOURCE)[0] == 0
    old = zk.exists(agents.release_path()).mzxid
    agents.join("web1")
    agents.installed("web1", old, ref="v1")
    assert cli("fleet", "shop")[0] == 0
    assert cli("deploy", "shop", "v2")[0] == 0
    code, out, _ = cli("fleet", "shop")
    assert code == 1 and row(out, "web1").endswith("LAGGING: release"), out
    assert "v1 1a2b3c4d" in row(out, "web1") and "  v2  " in row(out, "web1")


def test_fleet_without_live_hosts_exits_3(cli, agents: Agents) -> None:
    code, out, _ = cli("fleet", "shop")
    assert code == 3 and "no live hosts" in out
    agents.join("web1")
    assert cli("fleet", "shop")[0] == 0
    agents.leave("web1")  # an agent that stops takes its presence with it
    assert cli("fleet", "shop")[0] == 3


def test_malformed_presences_are_shown_not_fatal(cli, agents: Agents) -> None:
    agents.join("web1")
    agents.join_raw("web2", b"{not json")
    agents.join_raw(
        "web3", json.dumps({"node": "web3", "app": "shop", "data_version": "x"}).encode()
    )
    agents.join_raw("web4", json.dumps({"node": "mail1", "app": "shop"}).encode())
    agents.join_raw("web5", b"\x1b[31m" * 10)
    agents.join_raw("web6", json.dumps({"node": "web6", "app": "shop", "pid": True}).encode())
    code, out, _ = cli("fleet", "shop")
    assert code == 1, out
    assert row(out, "web1").endswith("  ok")
    for node in ("web2", "web3", "web4", "web5", "web6"):
        assert "UNREADABLE: presence" in row(out, node), out
    assert "data_version is not an integer" in row(out, "web3")
    assert "names node 'mail1'" in row(out, "web4")
    assert "\x1b" not in out
    doc = json.loads(cli("fleet", "shop", "--json")[1])
    assert sorted(h["node"] for h in doc["hosts"] if "unreadable" in h) == [
        "web2",
        "web3",
        "web4",
        "web5",
        "web6",
    ]


# --- deploy ----------------------------------------------------------------------------------


def release_doc(zk: KazooClient, path: str) -> dict[str, Any]:
    return yaml.safe_load(zk.get(path)[0])


def test_deploy_writes_the_release_and_keeps_its_source(cli, agents: Agents, zk) -> None:
    code, _, err = cli("deploy", "shop", "v1")
    assert code == 2 and "pass --source" in err
    assert zk.exists(agents.release_path()) is None
    code, out, _ = cli("deploy", "shop", "v1", "--source", SOURCE, "--install-script", "bin/go")
    assert code == 0 and "release of app shop is now v1" in out
    doc = release_doc(zk, agents.release_path())
    assert doc["ref"] == "v1" and doc["source"] == SOURCE and doc["install_script"] == "bin/go"
    assert "@" in doc["by"] and abs(doc["at"] - time.time()) < 60
    assert cli("deploy", "shop", "v2")[0] == 0
    doc = release_doc(zk, agents.release_path())
    assert (doc["ref"], doc["source"], doc["install_script"]) == ("v2", SOURCE, "bin/go")
    # A canary: the node's override, its source taken from the app's release.
    assert cli("deploy", "shop", "v3", "--node", "web1")[0] == 0
    assert release_doc(zk, agents.release_path("web1"))["ref"] == "v3"
    assert release_doc(zk, agents.release_path())["ref"] == "v2"


@pytest.mark.parametrize("existing", [True, False])
def test_deploy_refuses_when_someone_changed_the_release_meanwhile(
    cli, agents: Agents, zk: KazooClient, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    path = agents.release_path()
    if existing:
        assert cli("deploy", "shop", "v1", "--source", SOURCE)[0] == 0
    theirs = b"ref: theirs\nsource: file:///srv/git/other\n"
    read = fleetcli.read_release

    def read_then_race(session: fleetcli.Session, where: str) -> Any:
        found = read(session, where)
        if where == path:  # the other operator writes between our read and our write
            if zk.exists(path):
                zk.set(path, theirs)
            else:
                zk.create(path, theirs, makepath=True)
        return found

    monkeypatch.setattr(fleetcli, "read_release", read_then_race)
    code, out, err = cli("deploy", "shop", "v2", "--source", SOURCE)
    assert code == 1, out + err
    assert "someone else changed the release meanwhile" in err and "nothing written" in err
    assert len(err.strip().splitlines()) == 1
    assert zk.get(path)[0] == theirs


def test_deploy_wait_names_the_host_that_failed(cli, agents: Agents, zk: KazooClient) -> None:
    assert cli("deploy", "shop", "v1", "--source", SOURCE)[0] == 0
    old = zk.exists(agents.release_path()).mzxid
    for node in ("web1", "web2", "web3", "web4"):
        agents.join(node)
        agents.installed(node, old, ref="v1")
    canary = {"ref": "v0", "source": SOURCE, "path": agents.release_path("web4"), "version": 1}
    agents.update("web4", release=dict(agents.docs[("shop", "web4")]["release"], desired=canary))

    def hosts_install() -> None:
        new = until("the deploy", lambda: zk.exists(agents.release_path()).mzxid > old and True)
        version = zk.exists(agents.release_path()).mzxid
        assert new
        for node in ("web1", "web3", "web2"):
            time.sleep(0.3)
            agents.installed(node, version, ok=node != "web3")

    agents.soon(hosts_install)
    started = time.monotonic()
    code, out, err = cli("deploy", "shop", "v2", "--wait", "--timeout", "20")
    assert code == 1, out + err
    assert time.monotonic() - started < 15
    lines = out.splitlines()
    assert "web4: canary: follows its own release" in out
    assert "waiting for 3 hosts to install release version" in out
    done = [line.split(":")[0] for line in lines if ": done (v2 at 1a2b3c4d5e)" in line]
    assert done == ["web1", "web2"]
    assert "web3: FAILED: install script exited 1 (log /srv/apps/shop/logs/" in out
    assert not any(line.startswith("web4: done") for line in lines)
    assert err.startswith("mozagent: error: 2 of 3 hosts done; failed: web3")
    assert "web1" not in err and "web4" not in err


def test_deploy_wait_names_hosts_that_never_answer_or_went_away(
    cli, agents: Agents, zk: KazooClient
) -> None:
    for node in ("web1", "web2", "web3"):
        agents.join(node)

    def hosts() -> None:
        until("the deploy", lambda: zk.exists(agents.release_path()))
        version = zk.exists(agents.release_path()).mzxid
        agents.installed("web1", version)
        agents.leave("web3")  # web2 never answers

    agents.soon(hosts)
    started = time.monotonic()
    code, out, err = cli("deploy", "shop", "v2", "--source", SOURCE, "--wait", "--timeout", "3")
    elapsed = time.monotonic() - started
    assert code == 1, out + err
    assert 2 <= elapsed < 4.5, elapsed
    assert "web1: done" in out and "web3: went away" in out
    assert "did not answer within 3 s: web2" in err and "went away: web3" in err


class LoseFirstReadAfterWrite:
    """The first read a command makes once its change is written fails with
    ConnectionLoss, as when a reset or an election lands right after the
    commit: the wait's discovery, before ``follow`` polls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lost = 0
        real = fleetcli.Session.result

        def result(session: fleetcli.Session, pending: Any, deadline: float | None = None) -> Any:
            if session.written and not self.lost:
                self.lost += 1
                raise ConnectionLoss("forced by the test: the connection dropped")
            return real(session, pending, deadline)

        monkeypatch.setattr(fleetcli.Session, "result", result)


@pytest.mark.parametrize("command", ["deploy", "data", "order"])
def test_a_connection_lost_right_after_the_write_does_not_end_the_wait(
    cli, agents: Agents, zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:  # fmt: skip
    agents.join("web1")
    orders = f"{zk_root}/apps/shop/orders"

    def host_acts() -> None:
        if command == "deploy":
            until("the deploy", lambda: zk.exists(agents.release_path()))
            agents.installed("web1", zk.exists(agents.release_path()).mzxid)
        elif command == "data":
            layer = f"{zk_root}/apps/shop/data"
            until("the write", lambda: zk.exists(f"{layer}/greeting"))
            agents.update("web1", data_version=layer_version(zk, layer))
        else:
            name = until("the order", lambda: zk.exists(orders) and max(zk.get_children(orders)))
            result(agents, name, "web1", "done", 0)

    argv = {
        "deploy": ["deploy", "shop", "v2", "--source", SOURCE],
        "data": ["data", "set", "shop", "greeting", "hello"],
        "order": ["order", "shop", "restart"],
    }[command]
    lose = LoseFirstReadAfterWrite(monkeypatch)
    agents.soon(host_acts)
    code, out, err = cli(*argv, "--wait", "--timeout", "15")
    assert lose.lost == 1  # the fault happened, after the write
    assert code == 0, out + err
    assert "web1: done" in out and "all 1 hosts done" in out, out
    assert "cut short" not in err


def test_wait_without_live_hosts_says_so(cli, agents: Agents, zk: KazooClient) -> None:
    code, _, err = cli("deploy", "shop", "v2", "--source", SOURCE, "--wait")
    assert code == 3 and "no live host to wait for (the change is written)" in err
    assert zk.exists(agents.release_path()) is not None
    agents.join("web1")
    code, _, err = cli("deploy", "shop", "v3", "--node", "web2", "--wait")
    assert code == 3 and "node web2 of app shop" in err


# --- data --wait ---------------------------------------------------------------------------


def test_data_set_wait_follows_the_hosts_in_scope(
    cli, agents: Agents, zk: KazooClient, zk_root: str
) -> None:
    agents.join("web1")
    agents.join("web2")
    agents.join("web1", app="blog")
    app_layer = f"{zk_root}/apps/shop/data"

    def apply_when_written(layer: str, nodes: list[tuple[str, str]], fail: str = "") -> None:
        until("the write", lambda: zk.exists(f"{layer}/greeting"))
        version = layer_version(zk, layer)
        for app, node in nodes:
            time.sleep(0.2)
            if node == fail:
                last = {
                    "ok": False,
                    "data_version": version,
                    "ended": time.time(),
                    "message": "puppet failed: 2 resources",
                }
                agents.update(node, app=app, last_apply=last)
            else:
                agents.update(node, app=app, data_version=version)

    agents.soon(lambda: apply_when_written(app_layer, [("shop", "web1"), ("shop", "web2")]))
    code, out, err = cli("data", "set", "shop", "greeting", "hello", "--wait", "--timeout", "15")
    assert code == 0, out + err
    assert "web1: done (data version " in out and "web2: done (data version " in out
    assert "blog" not in out
    assert out.strip().endswith("all 2 hosts done")

    node_layer = f"{zk_root}/apps/shop/nodes/web2/data"
    agents.soon(lambda: apply_when_written(node_layer, [("shop", "web2")], fail="web2"))
    code, out, err = cli(
        "data", "set", "shop", "greeting", "x", "--node", "web2", "--wait", "--timeout", "15"
    )
    assert code == 1, out + err
    assert "web2: FAILED: puppet failed: 2 resources" in out and "web1" not in out
    assert "failed: web2" in err

    agents.soon(
        lambda: apply_when_written(
            f"{zk_root}/global/data", [("shop", "web1"), ("shop", "web2"), ("blog", "web1")]
        )
    )
    code, out, err = cli("data", "set", "--global", "greeting", "g", "--wait", "--timeout", "15")
    assert code == 0, out + err
    assert "blog/web1: done" in out and "shop/web2: done" in out
    assert "all 3 hosts done" in out


def test_data_import_wait_times_out_on_a_host_that_does_not_apply(
    cli, agents: Agents, tmp_path
) -> None:
    agents.join("web1")
    src = tmp_path / "shop.yaml"
    src.write_text("greeting: hi\n")
    code, out, err = cli("data", "import", "shop", str(src), "--wait", "--timeout", "2")
    assert code == 1 and "imported 1 keys" in out
    assert "did not answer within 2 s: web1" in err


def test_data_delete_wait_follows_the_layer_version(
    cli, agents: Agents, zk: KazooClient, zk_root: str
) -> None:
    assert cli("data", "set", "shop", "greeting", "hello")[0] == 0
    layer = f"{zk_root}/apps/shop/data"
    agents.join("web1", data_version=layer_version(zk, layer))

    def apply_the_delete() -> None:
        until("the delete", lambda: zk.exists(f"{layer}/greeting") is None)
        agents.update("web1", data_version=layer_version(zk, layer))

    agents.soon(apply_the_delete)
    code, out, err = cli("data", "delete", "shop", "greeting", "--wait", "--timeout", "10")
    assert code == 0, out + err
    assert f"web1: done (data version {layer_version(zk, layer)})" in out


# --- orders ----------------------------------------------------------------------------------


def result(agents: Agents, order: str, node: str, state: str, rc: int | None = None, **kw: Any):
    doc = {
        "node": node,
        "order": order,
        "command": "restart",
        "state": state,
        "returncode": rc,
        "output": kw.pop("output", ""),
        "started": time.time(),
        "ended": None if state == "running" else time.time(),
        "message": kw.pop("message", ""),
    }
    path = f"{agents.root}/apps/shop/orders/{order}/results/{node}"
    data = json.dumps(doc).encode()
    if agents.client.exists(path):
        agents.client.set(path, data)
    else:
        agents.client.create(path, data, makepath=True)


def test_order_create_and_status(cli, agents: Agents, zk: KazooClient, zk_root: str) -> None:
    for node in ("web1", "web2", "web3"):
        agents.join(node)
    code, out, err = cli("order", "shop", "restart")
    assert code == 0 and out == "order-0000000000\n", err
    doc = json.loads(zk.get(f"{zk_root}/apps/shop/orders/order-0000000000")[0])
    assert doc["command"] == "restart" and doc["nodes"] is None and "@" in doc["by"]

    code, out, _ = cli("order", "status", "shop")
    assert code == 4, out  # nobody has finished yet
    assert "order-0000000000: restart" in out
    assert all(row(out, n).endswith("pending") for n in ("web1", "web2", "web3"))

    result(agents, "order-0000000000", "web1", "done", 0, output="restarted\n")
    result(agents, "order-0000000000", "web2", "running")
    result(agents, "order-0000000000", "web3", "refused", message="unknown command")
    result(agents, "order-0000000000", "web9", "done", 0)  # a host that is gone since
    code, out, _ = cli("order", "status", "shop", "0")
    assert code == 1, out
    assert row(out, "web1").endswith("done (rc 0)") and "| restarted" in out
    assert row(out, "web2").endswith("running")
    assert row(out, "web3").endswith("refused (unknown command)")
    assert row(out, "web9").endswith("done (rc 0) [host no longer live]")

    code, out, _ = cli("order", "shop", "migrate", "--node", "web1", "--node", "web7")
    assert code == 0 and out == "order-0000000001\n"
    code, out, _ = cli("order", "status", "shop", "--json")  # the newest: order-...1
    doc = json.loads(out)
    assert doc["order"] == "order-0000000001" and doc["nodes"] == ["web1", "web7"]
    assert {n: h["state"] for n, h in doc["hosts"].items()} == {"web1": "pending", "web7": "absent"}
    assert code == doc["exit_code"] == 1  # web7 is targeted but not live
    assert doc["hosts"]["web7"]["text"] == "not live, no result (no such host now)"


def test_order_wait_follows_until_every_host_finished(
    cli, agents: Agents, zk: KazooClient, zk_root: str
) -> None:
    agents.join("web1")
    agents.join("web2")
    orders = f"{zk_root}/apps/shop/orders"

    def hosts_run(fail: bool) -> None:
        name = until("the order", lambda: zk.exists(orders) and max(zk.get_children(orders)))
        until("its own order", lambda: name == max(zk.get_children(orders)))
        result(agents, name, "web1", "running")
        time.sleep(0.4)
        result(agents, name, "web1", "done", 0)
        result(agents, name, "web2", "failed", 3, message="exited 3") if fail else result(
            agents, name, "web2", "done", 0
        )

    agents.soon(lambda: hosts_run(False))
    code, out, err = cli("order", "shop", "restart", "--wait", "--timeout", "15")
    assert code == 0, out + err
    assert out.startswith("order-0000000000\n")
    assert "web1: done (rc 0) in " in out and "web2: done (rc 0) in " in out
    assert "all 2 hosts done" in out

    until("the first order's threads", lambda: all(not t.is_alive() for t in agents.threads))
    code, out, err = cli("order", "shop", "restart")
    agents.soon(lambda: hosts_run(True))
    code, out, err = cli("order", "status", "shop", "order-0000000001", "--wait", "--timeout", "15")
    assert code == 1, out + err
    assert "web2: failed (rc 3, exited 3)" in out
    assert "failed: web2" in err and "web1" not in err


def test_order_for_an_app_named_status(cli, agents: Agents, zk_root: str, zk) -> None:
    agents.join("web1", app="status")
    code, out, _ = cli("order", "--app", "status", "restart")
    assert code == 0 and out == "order-0000000000\n"
    assert zk.exists(f"{zk_root}/apps/status/orders/order-0000000000")
    code, out, _ = cli("order", "status", "--app", "status")
    assert code == 4 and row(out, "web1").endswith("pending")
    code, _, err = cli("order", "status", "shop")
    assert code == 3 and "app shop has no orders" in err


# --- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fleet",), "fleet takes APP"),
        (("fleet", "sh/op"), "app name 'sh/op' is invalid"),
        (("fleet", "shop", "--timeout", "0"), "--timeout must be a positive number"),
        (("deploy", "shop"), "deploy takes APP REF"),
        (("deploy", "shop", ""), "ref is empty"),
        (("deploy", "shop", "v1", "--source=-oProxy=x"), "starts with '-'"),
        (("deploy", "shop", "v1", "--source", SOURCE, "--install-script", "/bin/sh"), "absolute"),
        (("deploy", "shop", "v1", "--node", "a/b"), "node name 'a/b' is invalid"),
        (("order", "shop"), "order takes APP NAME"),
        (("order", "shop", "bad name"), "order command name 'bad name' is invalid"),
        (("order", "status", "shop", "x1"), "not an order number or name"),
        (("order", "status", "shop", "--node", "web1"), "--node is for creating an order"),
        (("data", "set", "shop", "k", "1", "--dry-run", "--wait"), "--wait follows"),
        (("data", "delete", "shop", "--force", "--wait"), "--wait follows"),
        (("data", "--wait", "get", "shop", "k"), "--wait follows"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(
    cli, zk: KazooClient, zk_root: str, args: tuple[str, ...], message: str
) -> None:
    code, out, err = cli(*args)
    assert code == 2, out + err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert zk.exists(zk_root) is None


# --- the pure rules, without a server --------------------------------------------------------


def presence(**fields: Any) -> bytes:
    doc = {"node": "web1", "app": "shop", "data_version": 10, **fields}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"[1, 2]", "not a mapping"),
        (b"", "not a mapping"),
        (presence(node="web2"), "names node 'web2'"),
        (presence(app="blog"), "names app 'blog'"),
        (presence(data_version=True), "data_version is not an integer"),
        (presence(data_version=1.5), "data_version is not an integer"),
        (presence(last_apply={"data_version": 3}), "last_apply: ok is missing"),
        (presence(release={"desired": {"path": "/x"}}), "version is missing"),
        (presence(release="v2"), "release is not a mapping"),
        (b"a: &x [1]\nb: *x\n", "aliases"),
    ],
)
def test_damaged_presence_is_unreadable(raw: bytes, why: str) -> None:
    parsed = cv.Presence.parse(raw, "web1", "shop")
    assert isinstance(parsed, cv.Unreadable) and why in parsed.reason


def test_outcomes_of_a_wait() -> None:
    def host(**fields: Any) -> cv.Presence | cv.Unreadable:
        return cv.Presence.parse(presence(**fields), "web1", "shop")

    failed = {"ok": False, "data_version": 12, "message": "puppet failed"}
    assert cv.data_outcome(host(data_version=12), 12).state == cv.DONE
    assert cv.data_outcome(host(data_version=13), 12).state == cv.DONE
    assert cv.data_outcome(host(data_version=11), 12).state == cv.PENDING
    assert cv.data_outcome(host(last_apply=failed), 12).text.startswith("FAILED: puppet failed")
    assert cv.data_outcome(host(last_apply=failed), 13).state == cv.PENDING
    assert cv.data_outcome(None, 12).state == cv.GONE

    path = "/m/apps/shop/release"
    wanted = DesiredRelease(path, 7, Release("v2", SOURCE))
    acted = {
        "desired": {"ref": "v2", "path": path, "version": 7},
        "installed": {"ref": "v2", "commit": COMMIT, "source": SOURCE},
        "last_install": {"ok": True, "ref": "v2", "commit": COMMIT, "version": 7},
    }
    assert cv.release_outcome(host(release=acted), wanted).state == cv.DONE
    later = DesiredRelease(path, 8, wanted.release)
    assert cv.release_outcome(host(release=acted), later).state == cv.PENDING
    bad = dict(acted, last_install=dict(acted["last_install"], ok=False, message="exit 1"))
    assert cv.release_outcome(host(release=bad), wanted).text == "FAILED: exit 1"

    app_path = "/m/apps/shop/release"
    follows = {"ref": "v1", "path": "/m/apps/shop/canaries/web1", "version": 3}
    assert cv.canary_path(host(release={"desired": follows}), app_path) == follows["path"]
    assert (
        cv.canary_path(host(release={"desired": {**follows, "path": app_path}}), app_path) is None
    )


def test_host_problems_rules() -> None:
    wanted = DesiredRelease("/m/apps/shop/release", 7, Release("v2", SOURCE))
    good = {
        "desired": {"ref": "v2", "path": wanted.path, "version": 7},
        "installed": {"ref": "v2", "commit": COMMIT, "source": SOURCE},
        "last_install": {"ok": True, "ref": "v2", "commit": COMMIT, "version": 7},
    }

    def marks(data_version: int = 10, **release: Any) -> tuple[str, ...]:
        parsed = cv.Presence.parse(
            presence(data_version=data_version, release={**good, **release}), "web1", "shop"
        )
        return cv.host_problems(parsed, 10, wanted)

    assert marks() == ()
    assert marks(9) == ("LAGGING: data",)
    assert marks(desired={**good["desired"], "version": 6}) == ("LAGGING: release",)
    assert marks(desired={**good["desired"], "path": "/m/apps/shop/canaries/web1"}) == (
        "LAGGING: release",
    )
    assert marks(installed={**good["installed"], "ref": "v1"}) == ("LAGGING: release",)
    assert marks(installed={**good["installed"], "commit": "f" * 40}) == ("LAGGING: release",)
    assert marks(last_install={**good["last_install"], "ok": False}) == ("FAILED: install",)
    failed = {"ok": False, "data_version": 10, "message": "puppet failed"}
    parsed = cv.Presence.parse(presence(last_apply=failed, release=good), "web1", "shop")
    assert cv.host_problems(parsed, 10, wanted) == ("FAILED: apply",)
    unreadable = DesiredRelease(wanted.path, 7, None, "lacks source")
    parsed = cv.Presence.parse(presence(release=good), "web1", "shop")
    assert cv.host_problems(parsed, 10, unreadable) == ("UNREADABLE: release: lacks source",)


def test_summary_and_exit_code() -> None:
    outcomes = {
        "web1": cv.Standing(cv.DONE, "done (rc 0)"),
        "web2": cv.Standing(cv.FAILED, "refused (unknown)"),
        "web3": cv.Standing(cv.PENDING, "pending"),
        "web4": cv.Standing(cv.SKIPPED, "canary"),
    }
    assert views.wait_summary(outcomes, 5) == (
        "1 of 3 hosts done; failed: web2; did not answer within 5 s: web3"
    )
    assert cv.exit_code(outcomes, 4) == 1
    assert cv.exit_code({"web3": outcomes["web3"]}, 4) == 4
    assert cv.exit_code({"web1": outcomes["web1"], "web4": outcomes["web4"]}, 4) == 0
    assert cv.clean("a\x1b[2Jb\nc") == "a?[2Jb?c"


@pytest.mark.parametrize("ref", ["-x", "--upload-pack=evil", "", "a b", "a..b"])
def test_refs_a_host_would_refuse_are_refused(ref: str) -> None:
    with pytest.raises(InvalidRelease):
        cv.check_release(ref, None, None)


# --- issue 13: what counts as a live host, and as converged ------------------------------------


def forge(zk: KazooClient, agents: Agents, node: str, **fields: Any) -> None:
    """A persistent presence, as any ZooKeeper client may write one."""
    doc = {"node": node, "app": "shop", "data_version": 2**62, **fields}
    zk.create(agents.path(node), json.dumps(doc).encode(), makepath=True)


def test_a_persistent_presence_is_not_a_live_host(cli, agents: Agents, zk: KazooClient) -> None:
    assert cli("deploy", "shop", "v1", "--source", SOURCE)[0] == 0
    version = zk.exists(agents.release_path()).mzxid
    agents.join("web1")
    agents.installed("web1", version, ref="v1")
    claims = {"ref": "v1", "commit": COMMIT, "ok": True, "version": 2**62}
    forge(zk, agents, "ghost", release={"last_install": claims})
    code, out, _ = cli("fleet", "shop")
    assert code == 1, out
    assert row(out, "ghost").endswith("NOT LIVE: persistent znode") and "1 of 1 hosts" in out
    assert "not live agents, not counted" in out and out.rstrip().count("ghost") == 2
    code, out, err = cli("data", "set", "shop", "greeting", "hi", "--wait", "--timeout", "2")
    assert "ghost: not a live agent (persistent znode); not waited for" in out
    assert "ghost" not in err and "waiting for 1 hosts" in out
    agents.leave("web1")
    code, out, _ = cli("fleet", "shop")
    assert code == 3 and "no live hosts" in out and "ghost" in out
    code, _, err = cli("deploy", "shop", "v2", "--wait", "--timeout", "5")
    assert code == 3 and "no live host to wait for" in err


def test_converged_means_exactly_the_release_s_ref_at_the_commit_the_host_resolved(
    cli, agents: Agents, zk: KazooClient
) -> None:
    agents.join("web1")
    agents.join("web2")
    release_path = agents.release_path()

    def lie(node: str, **installed: Any) -> None:
        """Claims to have acted on the release, with something else installed."""
        version = zk.exists(release_path).mzxid
        agents.installed(node, version)
        release = agents.docs[("shop", node)]["release"]
        agents.update(node, release={**release, "installed": {**release["installed"], **installed}})

    def hosts() -> None:
        until("the deploy", lambda: zk.exists(release_path))
        agents.installed("web1", zk.exists(release_path).mzxid)
        lie("web2", ref="v1")

    agents.soon(hosts)
    code, out, err = cli("deploy", "shop", "v2", "--source", SOURCE, "--wait", "--timeout", "10")
    assert code == 1, out + err
    assert "web1: done (v2 at 1a2b3c4d5e)" in out
    assert "web2: FAILED: installed ref 'v1', the release is 'v2'" in out
    code, out, _ = cli("fleet", "shop")
    assert code == 1 and row(out, "web2").endswith("LAGGING: release"), out
    assert "web2: release: FAILED: installed ref 'v1'" in out and row(out, "web1").endswith("ok")
    lie("web2", commit="f" * 40)
    code, out, _ = cli("fleet", "shop")
    assert code == 1 and "web2: release: FAILED: installed commit ffffffffffff" in out, out


def test_fleet_and_wait_agree_on_every_host() -> None:
    """The fleet table marks a host converged exactly when a wait for the
    current data version and release would call it done."""
    path = "/m/apps/shop/release"
    wanted = DesiredRelease(path, 7, Release("v2", SOURCE))
    desired = {"ref": "v2", "path": path, "version": 7}
    installed = {"ref": "v2", "commit": COMMIT, "source": SOURCE}
    last = {"ok": True, "ref": "v2", "commit": COMMIT, "version": 7}
    variants: list[dict[str, Any]] = [
        {},
        {"desired": {**desired, "version": 6}},
        {"desired": {**desired, "path": "/m/apps/shop/canaries/web1"}},
        {"installed": {**installed, "ref": "v1"}},
        {"installed": {**installed, "commit": "f" * 40}},
        {"installed": {**installed, "source": "file:///elsewhere"}},
        {"installed": None},
        {"last_install": {**last, "ok": False}},
        {"last_install": {**last, "version": 9}},
        {"last_install": {**last, "version": 6}},
        {"last_install": {**last, "commit": "0000000000"}},
        {"last_install": None},
    ]
    applies: list[dict[str, Any]] = [
        {"data_version": 10},
        {"data_version": 9},
        {"data_version": 10, "last_apply": {"ok": False, "data_version": 10}},
        {"data_version": 9, "last_apply": {"ok": False, "data_version": 9}},
        {"data_version": 11},
    ]
    seen = set()
    for apply in applies:
        for variant in variants:
            release = {"desired": desired, "installed": installed, "last_install": last, **variant}
            raw = presence(**apply, release=release)
            for owner in (0, 0x1234):
                host = cv.judge_presence(raw, owner, "web1", "shop")
                (state,) = cv.fleet_states({"web1": host}, 10, {}, wanted, {})
                done = (
                    cv.data_outcome(host, 10).state == cv.DONE
                    and cv.release_outcome(host, wanted).state == cv.DONE
                )
                assert (not state.problems) == done, (apply, variant, owner, state.problems)
                seen.add(done)
    assert seen == {True, False}
    ghost = cv.judge_presence(presence(), 0, "web1", "shop")
    assert cv.data_outcome(ghost, 1).text == "not a live agent (persistent znode)"


# --- issue 13: timeouts are not stalls; a stall is said in words --------------------------------


def test_a_wait_that_runs_out_of_time_does_not_blame_zookeeper(
    cli, agents: Agents, zk: KazooClient
) -> None:
    agents.join("web1")  # live, and never answers
    for words in (
        ("order", "shop", "restart", "--wait", "--timeout", "2"),
        ("deploy", "shop", "v2", "--source", SOURCE, "--wait", "--timeout", "2"),
        ("data", "set", "shop", "greeting", "hi", "--wait", "--timeout", "2"),
    ):
        code, out, err = cli(*words)
        assert code == 1, (words, out, err)
        assert err.splitlines() == [
            "mozagent: error: "
            + ("order-0000000000: " if words[0] == "order" else "")
            + "0 of 1 hosts done; did not answer within 2 s: web1"
        ], (words, err)


@pytest.fixture
def own_zk(tmp_path) -> Iterator[ZooKeeperServer]:
    """A server of this test's own, to be SIGSTOPped."""
    server = ZooKeeperServer(data_dir=str(tmp_path / "zk"))
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.cleanup()


def freeze(server: ZooKeeperServer) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)


def test_a_zookeeper_that_stalls_during_a_wait_is_named_in_words(
    own_zk: ZooKeeperServer, tmp_path
) -> None:
    team = Agents(own_zk.hosts, "/mozagent")
    try:
        team.join("web1")
        words = ["deploy", "shop", "v2", "--source", SOURCE, "--wait", "--timeout", "8"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "mozagent", *words, "--zookeeper", own_zk.hosts],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # bounded: the command's own --timeout ends it
            lines.append(line)
            if line.startswith("waiting for 1 hosts"):
                freeze(own_zk)  # the wait is under way: every read from now on stalls
                break
        out, err = proc.communicate(timeout=30)
    finally:
        os.kill(own_zk.proc.pid, signal.SIGCONT)
        team.close()
    assert proc.returncode == 1, "".join(lines) + out + err
    assert f"mozagent: ZooKeeper at {own_zk.hosts} stopped answering during the wait" in err
    assert "did not answer within 8 s: web1" in err
    assert "ConnectionLoss" not in err and "Traceback" not in err
    assert all(line.startswith("mozagent: ") for line in err.splitlines()), err


def test_a_connection_lost_mid_command_is_said_in_words(
    own_zk: ZooKeeperServer, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    real = fleetcli.read_presences

    def stall_first(*args: Any, **kwargs: Any) -> Any:
        freeze(own_zk)  # connected; the next request gets no answer until kazoo gives up
        return real(*args, **kwargs)

    monkeypatch.setattr(fleetcli, "read_presences", stall_first)
    code = main(["fleet", "shop", "--zookeeper", own_zk.hosts, "--timeout", "6"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"mozagent: error: ZooKeeper at {own_zk.hosts} stopped answering" in err, err
    assert "ConnectionLoss" not in err and "Traceback" not in err
    assert all(line.startswith("mozagent: ") for line in err.splitlines()), err


def test_kazoo_s_own_lines_are_shaped_like_ours(tmp_path) -> None:
    port = free_port()  # nothing listens there
    res = subprocess.run(  # a process of its own: pytest's log capture would hide the fault
        [
            sys.executable,
            "-m",
            "mozagent",
            "data",
            "get",
            "shop",
            "a",
            "--zookeeper",
            f"127.0.0.1:{port}",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, "MOZAGENT_ZOOKEEPER": f"127.0.0.1:{port}"},
    )
    assert res.returncode == 1
    assert f"cannot connect to ZooKeeper at 127.0.0.1:{port} within 2 s" in res.stderr
    lines = res.stderr.splitlines()
    assert "mozagent: warning: ZooKeeper client: Connection dropped: " in res.stderr
    assert all(line.startswith("mozagent: ") for line in lines), res.stderr
    assert len(lines) == len(set(lines)), res.stderr  # a retry loop says it once


# --- issue 13: an order for a host that is not there --------------------------------------------


def test_order_wait_for_a_host_that_is_not_live_is_refused_up_front(
    cli, agents: Agents, zk: KazooClient, zk_root: str
) -> None:
    agents.join("web1")
    code, out, err = cli("order", "shop", "restart", "--node", "nosuchnode", "--wait")
    assert code == 3 and out == "", out
    assert "app shop has no such live host: nosuchnode" in err and "nothing written" in err
    assert zk.exists(f"{zk_root}/apps/shop/orders") is None
    # Without --wait it is pushed (the host may come back), and status says what it is.
    code, out, err = cli("order", "shop", "restart", "--node", "nosuchnode")
    assert code == 0 and "nosuchnode is not live now" in err
    code, out, err = cli("order", "status", "shop", "--wait", "--timeout", "5")
    assert code == 1 and "nosuchnode: not live, no result (no such host now)" in out
    assert "not live (no such host): nosuchnode" in err and "went away" not in err
