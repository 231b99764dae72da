"""The agent end to end: real ZooKeeper, real puppet, the daemon as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl

from mozagent_dev.testing import ZooKeeperServer, free_port
from tests.conftest import Sandbox, wait_for


def app_path(box: Sandbox, key: str = "") -> str:
    return f"{box.zk_root}/apps/shop/data" + (f"/{key}" if key else "")


def put(zk: KazooClient, path: str, value: bytes) -> None:
    if zk.exists(path):
        zk.set(path, value)
    else:
        zk.create(path, value, makepath=True)


def test_once_resolves_node_over_app_over_global(sandbox: Sandbox, zk: KazooClient) -> None:
    root = sandbox.zk_root
    put(zk, f"{root}/global/data/greeting", b"global")
    put(zk, f"{root}/global/data/port", b"80")
    put(zk, f"{root}/apps/shop/data/greeting", b"app")
    put(zk, f"{root}/apps/shop/data/port", b"8080")
    put(zk, f"{root}/apps/shop/nodes/web1/data/greeting", b"node")
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sandbox.output() == "greeting=node port=8080 app=shop node=web1\n"
    assert sandbox.layer_file("global") == {"greeting": "global", "port": 80}
    for layer in ("node", "app", "global"):
        path = sandbox.state / "hieradata" / f"{layer}.yaml"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    code, doc = sandbox.status()
    assert code == 0
    assert doc["layers"]["app"]["version"] == zk.exists(app_path(sandbox, "port")).mzxid
    assert doc["last_apply"]["ok"] is True
    assert doc["last_apply"]["results"][0]["exit_code"] == 2
    facts = json.loads((sandbox.state / "facts.d" / "mozagent.json").read_text())
    assert facts["mozagent_app"] == "shop" and facts["mozagent_node"] == "web1"
    assert (
        int(facts["mozagent_data_version"])
        == zk.exists(f"{root}/apps/shop/nodes/web1/data/greeting").mzxid
    )
    human = sandbox.cli("status")
    assert "last apply: OK" in human.stdout and "errors: none" in human.stdout


def test_daemon_follows_changes_and_skips_identical_renders(
    sandbox: Sandbox, zk: KazooClient
) -> None:
    put(zk, app_path(sandbox, "greeting"), b"one")
    sandbox.start_daemon()
    wait_for(lambda: "greeting=one" in sandbox.output(), what="first apply")
    wait_for(lambda: (sandbox.status_doc() or {}).get("last_apply"), what="first apply recorded")
    assert sandbox.run_count() == 1

    put(zk, app_path(sandbox, "greeting"), b"two")
    wait_for(
        lambda: sandbox.layer_file("app").get("greeting") == "two", timeout=5, what="rendered file"
    )
    wait_for(lambda: "greeting=two" in sandbox.output(), what="second apply")
    wait_for(lambda: sandbox.run_count() == 2, what="run count 2")

    # The same value again, and a key of another app: nothing renders differently.
    put(zk, app_path(sandbox, "greeting"), b"two")
    put(zk, f"{sandbox.zk_root}/apps/other/data/greeting", b"x")
    time.sleep(5)  # longer than max_wait plus a puppet run: a run would have happened
    assert sandbox.run_count() == 2

    # Deleting a key re-renders without it.
    put(zk, app_path(sandbox, "port"), b"81")
    wait_for(lambda: "port=81" in sandbox.output(), what="port applied")
    zk.delete(app_path(sandbox, "port"))
    wait_for(lambda: "port=none" in sandbox.output(), what="port removed")


def test_burst_coalesces_into_few_applies_with_the_last_value(
    sandbox: Sandbox, zk: KazooClient
) -> None:
    sandbox.write_config(apply={"min_wait": 0.5, "max_wait": 5.0})
    put(zk, app_path(sandbox, "greeting"), b"start")
    sandbox.start_daemon()
    wait_for(lambda: sandbox.run_count() == 1, what="initial apply")
    wait_for(lambda: (sandbox.status_doc() or {}).get("last_apply"), what="apply recorded")
    for i in range(300):
        zk.set(app_path(sandbox, "greeting"), f"burst-{i}".encode())
    wait_for(lambda: "greeting=burst-299" in sandbox.output(), what="final value applied")
    time.sleep(4)
    assert sandbox.layer_file("app")["greeting"] == "burst-299"
    assert 2 <= sandbox.run_count() <= 3, sandbox.run_count()


def test_bad_znodes_keep_last_good_and_daemon_survives(sandbox: Sandbox, zk: KazooClient) -> None:
    put(zk, app_path(sandbox, "greeting"), b"good")
    proc = sandbox.start_daemon()
    wait_for(lambda: "greeting=good" in sandbox.output(), what="first apply")

    zk.set(app_path(sandbox, "greeting"), b"greeting: [unclosed")
    zk.create(app_path(sandbox, "Bad_Key"), b"1")
    zk.create(app_path(sandbox, "binary"), b"\xff\xfe\x00")
    zk.create(app_path(sandbox, "huge"), b"x" * (1024 * 1024 + 1))

    def errors() -> list[str]:
        return [e["where"] for e in (sandbox.status_doc() or {}).get("errors", {}).get("data", [])]

    wait_for(lambda: len(errors()) == 4, what="four data errors in status")
    code, doc = sandbox.status()
    assert code == 3
    messages = {e["where"]: e["message"] for e in doc["all_errors"]}
    assert "not valid YAML" in messages[app_path(sandbox, "greeting")]
    assert "keeping its last good value" in messages[app_path(sandbox, "greeting")]
    assert "not a Hiera key" in messages[app_path(sandbox, "Bad_Key")]
    assert "not UTF-8" in messages[app_path(sandbox, "binary")]
    assert "over the 1 MiB limit" in messages[app_path(sandbox, "huge")]
    assert sandbox.layer_file("app") == {"greeting": "good"}
    assert "bad_data" in sandbox.daemon_log()

    # Still alive and still listening: fix the value, remove the bad znodes.
    zk.set(app_path(sandbox, "greeting"), b"fixed")
    for key in ("Bad_Key", "binary", "huge"):
        zk.delete(app_path(sandbox, key))
    wait_for(lambda: "greeting=fixed" in sandbox.output(), what="fixed value applied")
    wait_for(lambda: not errors(), what="errors cleared")
    assert proc.poll() is None
    assert sandbox.status()[0] == 0


def test_deleted_layer_renders_empty_every_key_at_once(sandbox: Sandbox, zk: KazooClient) -> None:
    """A recursive delete empties the layer key by key; whichever moment the agent
    reads, what it converges to is the empty layer, never a random subset."""
    for i in range(40):
        put(zk, app_path(sandbox, f"k{i:02d}"), str(i).encode())
    put(zk, app_path(sandbox, "greeting"), b"kept?")
    sandbox.start_daemon()
    wait_for(lambda: "greeting=kept?" in sandbox.output(), what="first apply")
    assert len(sandbox.layer_file("app")) == 41
    zk.delete(f"{sandbox.zk_root}/apps/shop", recursive=True)
    wait_for(lambda: "greeting=none" in sandbox.output(), what="empty layer applied")
    wait_for(
        lambda: sandbox.status()[0] == 0 and not sandbox.status_doc().get("applying"),
        what="idle and healthy",
    )
    assert sandbox.layer_file("app") == {}
    assert sandbox.status()[0] == 0
    doc = sandbox.status()[1]
    assert doc["layers"]["app"]["keys"] == 0 and doc["layers"]["app"]["stale"] is False
    run_data = yaml.safe_load((sandbox.state / "run" / "hieradata" / "app.yaml").read_text())
    assert run_data == {}, "the last run saw a subset of the deleted layer"
    put(zk, app_path(sandbox, "greeting"), b"back")
    wait_for(lambda: "greeting=back" in sandbox.output(), what="recreated layer applied")
    assert sandbox.status()[0] == 0


def test_zkcli_writes_are_picked_up(sandbox: Sandbox, zk: KazooClient) -> None:
    put(zk, app_path(sandbox, "greeting"), b"before")
    sandbox.start_daemon()
    wait_for(lambda: "greeting=before" in sandbox.output(), what="first apply")
    res = subprocess.run(
        [
            "/usr/share/zookeeper/bin/zkCli.sh",
            "-server",
            sandbox.hosts or "",
            "set",
            app_path(sandbox, "greeting"),
            "from-zkcli",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    wait_for(lambda: "greeting=from-zkcli" in sandbox.output(), what="zkCli value applied")


def test_cli_writes_are_picked_up(sandbox: Sandbox) -> None:
    sandbox.start_daemon()
    wait_for(lambda: sandbox.run_count() == 1, what="first apply")
    res = sandbox.cli("data", "set", "shop", "greeting", "via-cli", "--node", "web1")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: "greeting=via-cli" in sandbox.output(), what="cli value applied")


@pytest.fixture
def own_zk(tmp_path_factory: pytest.TempPathFactory):
    server = ZooKeeperServer(data_dir=str(tmp_path_factory.mktemp("zk")))
    server.start()
    yield server
    server.cleanup()


def test_zookeeper_restart_while_running(
    tmp_path, own_zk: ZooKeeperServer, zk_root: str, puppet_bin: str
) -> None:
    box = Sandbox(tmp_path, own_zk.hosts, zk_root)
    try:
        client = KazooClient(hosts=own_zk.hosts, timeout=10)
        client.start(timeout=15)
        put(client, app_path(box, "greeting"), b"before")
        box.start_daemon()
        wait_for(lambda: "greeting=before" in box.output(), what="first apply")
        client.stop()
        client.close()

        own_zk.stop()
        wait_for(lambda: box.status()[0] == 3, timeout=30, what="status reports ZooKeeper down")
        doc = box.status()[1]
        assert doc["zookeeper"]["state"] in ("suspended", "lost", "connecting")
        assert any(e["where"] == "zookeeper" for e in doc["all_errors"])
        assert box.layer_file("app") == {"greeting": "before"}

        own_zk.start()
        client = KazooClient(hosts=own_zk.hosts, timeout=10)
        client.start(timeout=15)
        put(client, app_path(box, "greeting"), b"after-restart")
        client.stop()
        client.close()
        wait_for(
            lambda: "greeting=after-restart" in box.output(),
            timeout=40,
            what="value written after the restart applied",
        )
        wait_for(lambda: box.status()[0] == 0, timeout=10, what="healthy again")
    finally:
        box.stop_daemons()


def test_session_expiry_rereads_everything(
    sandbox: Sandbox, zk: KazooClient, zk_server: ZooKeeperServer
) -> None:
    put(zk, app_path(sandbox, "greeting"), b"before")
    proc = sandbox.start_daemon()
    wait_for(lambda: "greeting=before" in sandbox.output(), what="first apply")
    first = sandbox.status_doc()["zookeeper"]["session_id"]
    # Freeze the agent past its session timeout (4 s), change data meanwhile.
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        put(zk, app_path(sandbox, "greeting"), b"during-expiry")
        time.sleep(7)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_for(
        lambda: "greeting=during-expiry" in sandbox.output(),
        timeout=40,
        what="change made while the session expired",
    )
    wait_for(
        lambda: sandbox.status_doc()["zookeeper"]["session_id"] not in (None, first),
        what="a new session",
    )
    put(zk, app_path(sandbox, "greeting"), b"after-expiry")
    wait_for(
        lambda: "greeting=after-expiry" in sandbox.output(),
        timeout=20,
        what="watches re-armed on the new session",
    )


def test_zookeeper_down_at_start_applies_last_good(sandbox: Sandbox, zk: KazooClient) -> None:
    put(zk, app_path(sandbox, "greeting"), b"remembered")
    assert sandbox.cli("daemon", "--once").returncode == 0
    sandbox.out.unlink()
    down = f"127.0.0.1:{free_port()}"
    sandbox.write_config(zookeeper={"hosts": down, "connect_timeout": 2})
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 3
    assert sandbox.output().startswith("greeting=remembered")
    code, doc = sandbox.status()
    assert code == 3
    assert "could not read" in doc["errors"]["zookeeper"][0]["message"]

    sandbox.out.unlink()
    sandbox.start_daemon()
    wait_for(
        lambda: "greeting=remembered" in sandbox.output(),
        timeout=30,
        what="daemon applies last good data with ZooKeeper down",
    )
    assert sandbox.status()[0] == 3


def test_failed_apply_is_reported_and_retried(sandbox: Sandbox, zk: KazooClient) -> None:
    good = sandbox.manifest.read_text()
    sandbox.manifest.write_text("file { 'broken': ensure => \n")
    proc = sandbox.start_daemon()
    wait_for(lambda: (sandbox.status_doc() or {}).get("last_apply"), what="first apply")
    code, doc = sandbox.status()
    assert code == 1
    assert "could not compile" in doc["last_apply"]["results"][0]["message"]
    assert "FAILED" in sandbox.cli("status").stdout
    sandbox.manifest.write_text(good)
    # The retry (after retry_initial = 2 s) picks up the fixed manifest by itself.
    wait_for(lambda: sandbox.status()[0] == 0, timeout=30, what="retry succeeds")
    assert proc.poll() is None
    # SIGHUP asks for a run without a data change.
    count = sandbox.run_count()
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: sandbox.run_count() == count + 1, what="run after SIGHUP")


def test_sigterm_stops_cleanly(sandbox: Sandbox) -> None:
    proc = sandbox.start_daemon()
    wait_for(lambda: (sandbox.status_doc() or {}).get("last_apply"), what="first apply")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    code, doc = sandbox.status()
    assert doc["agent"]["stopped"] and doc["running"] is False
    assert doc["zookeeper"]["state"] == "closed"
    assert code == 0
    assert "stopped at" in sandbox.cli("status").stdout


def test_killed_daemon_is_an_error(sandbox: Sandbox) -> None:
    proc = sandbox.start_daemon()
    wait_for(lambda: (sandbox.status_doc() or {}).get("last_apply"), what="first apply")
    proc.kill()
    proc.wait(timeout=10)
    code, doc = sandbox.status()
    assert code == 3
    assert "is not running" in doc["all_errors"][-1]["message"]


def test_status_without_state(tmp_path) -> None:
    res = subprocess.run(
        ["python3", "-m", "mozagent", "status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 4
    assert "no status" in res.stdout


def test_runs_without_zookeeper(tmp_path, puppet_bin: str) -> None:
    box = Sandbox(tmp_path, None, "/unused")
    box.write_config(app=None)
    res = box.cli("daemon", "--once")
    assert res.returncode == 0, res.stderr[-2000:]
    assert box.output() == "greeting=none port=none app= node=web1\n"
    assert box.status()[1]["zookeeper"]["state"] == "not configured"


def test_unreadable_znode_is_reported_and_keeps_last_good(
    sandbox: Sandbox, zk: KazooClient
) -> None:
    # ZooKeeper sends no watch event to a client that may no longer read the
    # znode: the periodic full re-read is what notices.
    sandbox.write_config(zookeeper={"resync_interval": 1})
    put(zk, app_path(sandbox, "greeting"), b"readable")
    sandbox.start_daemon()
    wait_for(lambda: "greeting=readable" in sandbox.output(), what="first apply")
    # Only the "owner" identity may read it now: the agent gets NoAuthError.
    zk.set_acls(app_path(sandbox, "greeting"), [make_digest_acl("owner", "secret", all=True)])
    zk.add_auth("digest", "owner:secret")
    zk.set(app_path(sandbox, "greeting"), b"secret-value")
    wait_for(
        lambda: (sandbox.status_doc() or {}).get("errors", {}).get("data"),
        what="unreadable znode reported",
    )
    err = sandbox.status()[1]["errors"]["data"][0]
    assert err["where"] == app_path(sandbox, "greeting")
    assert "lacks the read (r) permission" in err["message"], err
    assert "last good value" in err["message"]
    assert sandbox.layer_file("app") == {"greeting": "readable"}


def test_once_refuses_to_run_beside_the_daemon(sandbox: Sandbox) -> None:
    proc = sandbox.start_daemon()
    wait_for(lambda: (sandbox.status_doc() or {}).get("last_apply"), what="first apply")
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 1
    assert f"another mozagent (pid {proc.pid})" in res.stderr
    assert sandbox.status_doc()["agent"]["mode"] == "daemon"


def test_restart_remembers_a_failed_apply(sandbox: Sandbox) -> None:
    sandbox.manifest.write_text("file { 'broken': ensure => \n")
    assert sandbox.cli("daemon", "--once").returncode == 1
    sandbox.start_daemon()
    # Before its own first run, the new daemon still reports the failure.
    code, doc = sandbox.status()
    assert code == 1 and doc["last_apply"]["ok"] is False
