"""The core's failure paths, against the real ZooKeeper and puppet: what a hostile
or unlucky operator did to the agent, and what the agent must do instead.

Each test names the defect it guards against (issue "core hardening").
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kazoo.client import KazooClient

from mozagent.config import load_config
from mozagent.daemon import Daemon
from mozagent.render import hieradata as hieradata_module
from mozagent.report.health import HEARTBEAT_FILE
from mozagent.report.status import StatusStore
from mozagent.runtime import Progress, Worker
from mozagent_dev.testing import ZooKeeperServer, text_of
from tests.conftest import Sandbox, wait_for
from tests.poison import POISON
from tests.test_agent import app_path, put


def node_path(box: Sandbox, key: str = "") -> str:
    return f"{box.zk_root}/apps/shop/nodes/web1/data" + (f"/{key}" if key else "")


def idle(box: Sandbox) -> bool:
    doc = box.status_doc() or {}
    return bool(doc.get("last_apply")) and not doc.get("applying") and not doc.get("next_apply")


def processes_with(*words: str) -> list[int]:
    """Pids whose command line is exactly ``words`` (e.g. ``sleep 3117``)."""
    want = "\0".join(words).encode() + b"\0"
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if fh.read() == want:
                    out.append(int(name))
        except OSError:
            continue
    return out


def kill_all(*words: str) -> None:
    for pid in processes_with(*words):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def own_zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer(data_dir=str(tmp_path_factory.mktemp("zk")))
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.cleanup()


@pytest.fixture
def own_box(tmp_path: Path, own_zk: ZooKeeperServer, zk_root: str, puppet_bin: str):
    box = Sandbox(tmp_path, own_zk.hosts, zk_root)
    client = KazooClient(hosts=own_zk.hosts, timeout=10)
    client.start(timeout=15)
    yield box, client
    box.stop_daemons()
    client.stop()
    client.close()


# --- 1. one poisoned znode must not stop a host -----------------------------------


def test_poisoned_values_are_bad_keys_and_everything_else_still_applies(
    sandbox: Sandbox, zk: KazooClient
) -> None:
    put(zk, app_path(sandbox, "greeting"), b"before")
    proc = sandbox.start_daemon()
    wait_for(lambda: "greeting=before" in sandbox.output(), what="first apply")
    started = time.monotonic()
    for name, raw, _ in POISON:
        put(zk, app_path(sandbox, name), raw)
    put(zk, app_path(sandbox, "greeting"), b"after")
    wait_for(lambda: "greeting=after" in sandbox.output(), what="other keys still applied")

    def data_errors() -> dict[str, str]:
        errors = (sandbox.status_doc() or {}).get("errors", {}).get("data", [])
        return {e["where"]: e["message"] for e in errors}

    wait_for(lambda: len(data_errors()) == len(POISON), what="every poisoned znode reported")
    assert time.monotonic() - started < 30, "bounded parsing: no value may cost seconds of CPU"
    errors = data_errors()
    for name, _, why in POISON:
        assert why in errors[app_path(sandbox, name)], (name, errors[app_path(sandbox, name)])
        assert "key left out" in errors[app_path(sandbox, name)]
    assert set(sandbox.layer_file("app")) == {"greeting"}
    code, doc = sandbox.status()
    assert code == 3 and doc["last_apply"]["ok"] is True
    # Still following: a later change is rendered and applied.
    put(zk, app_path(sandbox, "port"), b"81")
    wait_for(lambda: "port=81" in sandbox.output(), what="later change applied")
    # A poisoned value that had a good one before keeps it.
    put(zk, app_path(sandbox, "greeting"), POISON[0][1])
    wait_for(
        lambda: (
            "keeping its last good value" in data_errors().get(app_path(sandbox, "greeting"), "")
        ),
        what="poisoned greeting reported",
    )
    assert sandbox.layer_file("app")["greeting"] == "after"
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


# --- 3. each run applies one snapshot and records its version ----------------------


SNAPSHOT_MANIFEST = """\
$a = lookup('a', undef, undef, 'none')
$b = lookup('b', undef, undef, 'none')
exec {{ 'record':
  command => "/bin/sh -c 'echo a=${{a}} b=${{b}} v=${{facts[mozagent_data_version]}} >> {log}'",
}}
"""


PAUSE_FACT = """\
#!/bin/sh
# An executable external fact: facter runs it before Hiera reads any file.
if [ -e {armed} ]; then rm -f {armed}; touch {marker}; sleep 3; fi
echo pause_fact=1
"""


def test_a_run_never_mixes_versions_and_records_the_one_it_applied(
    sandbox: Sandbox, zk: KazooClient
) -> None:
    log = sandbox.root / "runs-seen.log"
    armed, marker = sandbox.root / "armed", sandbox.root / "facter-running"
    sandbox.manifest.write_text(SNAPSHOT_MANIFEST.format(log=log))
    fact = sandbox.state / "run/facts.d" / "pause.sh"
    fact.parent.mkdir(parents=True)
    fact.write_text(PAUSE_FACT.format(armed=armed, marker=marker))
    fact.chmod(0o755)

    def txn(value: bytes) -> int:
        t = zk.transaction()
        t.set_data(node_path(sandbox, "a"), value)
        t.set_data(app_path(sandbox, "b"), value)
        t.commit()
        return zk.exists(node_path(sandbox, "a")).mzxid

    put(zk, node_path(sandbox, "a"), b"1")
    put(zk, app_path(sandbox, "b"), b"1")
    v1 = zk.exists(app_path(sandbox, "b")).mzxid
    sandbox.start_daemon()
    wait_for(lambda: idle(sandbox), timeout=60, what="first run")
    armed.touch()
    v2 = txn(b"2")
    # The run of v2 is in facter (after the version fact, before Hiera reads
    # its files) when v3 arrives and is published.
    wait_for(marker.exists, timeout=30, what="the v2 run in facter")
    v3 = txn(b"3")
    wait_for(lambda: sandbox.layer_file("app").get("b") == 3, timeout=5, what="v3 published")
    wait_for(lambda: f"v={v3}" in text_of(log), timeout=60, what="the v3 run")
    wait_for(lambda: idle(sandbox), timeout=30, what="idle")
    assert text_of(log).splitlines() == [
        f"a=1 b=1 v={v1}",
        f"a=2 b=2 v={v2}",
        f"a=3 b=3 v={v3}",
    ]
    assert sandbox.status_doc()["last_apply"]["data_version"] == v3


# --- 4. a failed render must not lose the run --------------------------------------


@pytest.mark.parametrize("where", ["lastgood", "facts"])
def test_render_that_fails_midway_still_schedules_the_run(
    sandbox: Sandbox, zk: KazooClient, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    put(zk, app_path(sandbox, "greeting"), b"one")
    daemon = Daemon(load_config(str(sandbox.config_path)), mode="once")
    source, executor, hiera = daemon.zookeeper, daemon.executor, daemon.hiera
    assert source is not None
    source.client.start(timeout=15)
    try:
        assert source.sync() == (True, True)
        assert executor.apply()
        assert "greeting=one" in sandbox.output()
        executor.scheduler.started(time.monotonic())
        executor.scheduler.finished(time.monotonic(), True)
        assert not executor.scheduler.pending

        calls = {"n": 0}

        def disk_full_once() -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

        if where == "lastgood":
            real_save = hiera.save_lastgood

            def save() -> None:
                disk_full_once()
                real_save()

            monkeypatch.setattr(hiera, "save_lastgood", save)
        else:  # the facts file, written after the layer files
            real_write = hieradata_module.write_if_changed

            def write(path: str, *args: object, **kwargs: object) -> bool:
                if path == hiera.cfg.facts_file:
                    disk_full_once()
                return real_write(path, *args, **kwargs)  # type: ignore[arg-type]

            monkeypatch.setattr(hieradata_module, "write_if_changed", write)
        zk.set(app_path(sandbox, "greeting"), b"two")

        def failed_once() -> bool:
            try:
                source.sync()
            except OSError:
                return True
            return False

        wait_for(failed_once, timeout=10, what="the render to hit the full disk")
        if where == "facts":
            assert sandbox.layer_file("app") == {"greeting": "two"}  # written before it failed
        source.sync()  # the retry: same bytes on disk, and still a run to schedule
        assert executor.scheduler.pending
        assert executor.apply()
        assert "greeting=two" in sandbox.output()
    finally:
        source.close()


# --- 5. status must not say healthy when the host is not ---------------------------


def test_zookeeper_that_stops_answering_is_reported(own_box, own_zk: ZooKeeperServer) -> None:
    box, client = own_box
    put(client, app_path(box, "greeting"), b"before")
    box.start_daemon()
    wait_for(lambda: "greeting=before" in box.output(), what="first apply")
    assert own_zk.proc is not None
    os.kill(own_zk.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: box.status()[0] == 3, timeout=40, what="status reports ZooKeeper silent")
        doc = box.status()[1]
        assert any(e["where"] == "zookeeper" for e in doc["all_errors"]), doc["all_errors"]
        human = box.cli("status").stdout
        assert "zookeeper:" in human and "errors (" in human
    finally:
        os.kill(own_zk.proc.pid, signal.SIGCONT)
    wait_for(lambda: box.status()[0] == 0, timeout=60, what="healthy after ZooKeeper answers")


def test_stopped_daemon_is_not_reported_running(sandbox: Sandbox) -> None:
    proc = sandbox.start_daemon()
    wait_for(lambda: idle(sandbox), timeout=60, what="first apply")
    assert sandbox.status()[0] == 0
    heartbeat = sandbox.state / HEARTBEAT_FILE
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        # Time passes for a stopped daemon: its heartbeat ages (we age it
        # rather than wait, as a clock would).
        old = time.time() - 120
        os.utime(heartbeat, (old, old))
        code, doc = sandbox.status()
        assert code == 3
        assert "not making progress" in doc["all_errors"][-1]["message"]
        assert "NOT RESPONDING" in sandbox.cli("status").stdout
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_for(lambda: sandbox.status()[0] == 0, timeout=20, what="heartbeat again after SIGCONT")


def test_a_stuck_worker_stops_the_heartbeat_and_is_named(tmp_path: Path, puppet_bin: str) -> None:
    box = Sandbox(tmp_path, None, "/unused")
    box.write_config(app=None)
    now = [1000.0]
    daemon = Daemon(load_config(str(box.config_path)), clock=lambda: now[0])
    daemon.workers.add("apply")
    daemon.progress.beat("apply")
    assert daemon.healthy()
    now[0] += 200
    assert not daemon.healthy()
    errors = daemon.status.snapshot()["errors"]["agent.health"]
    assert errors[0]["where"] == "agent (apply worker)" and "stuck" in errors[0]["message"]
    daemon.progress.beat("apply")
    assert daemon.healthy()
    assert "agent.health" not in daemon.status.snapshot()["errors"]


def test_one_workers_recovery_does_not_hide_the_others_crash(tmp_path: Path) -> None:
    status = StatusStore(str(tmp_path / "status.json"), {})
    progress = Progress()
    Worker("apply", progress, status).crashed(RuntimeError("apply blew up"))
    Worker("sync", progress, status).recovered()  # a good sync a second later
    errors = status.snapshot()["errors"]
    assert "apply blew up" in errors["agent.apply"][0]["message"]
    Worker("apply", progress, status).recovered()
    assert "agent.apply" not in status.snapshot()["errors"]


# --- 6. nothing a run starts outlives it -------------------------------------------


def test_timed_out_run_leaves_no_process(sandbox: Sandbox) -> None:
    sandbox.manifest.write_text(
        "exec { 'escape': command => \"/usr/bin/setsid /bin/sh -c 'sleep 3117 "
        "</dev/null >/dev/null 2>&1 &'\" }\n"
        "exec { 'hang': command => '/bin/sleep 3118', timeout => 0, require => Exec[escape] }\n"
    )
    # Long enough for puppet to reach the hanging exec on a slow machine (a
    # bare `puppet apply` takes 2-5 s here): a timeout before it proves nothing.
    sandbox.write_config(puppet={"timeout": 15}, apply={"retry_initial": 600, "retry_max": 600})
    try:
        sandbox.start_daemon()
        wait_for(lambda: processes_with("sleep", "3117"), timeout=60, what="the escaped child")
        wait_for(lambda: (sandbox.status_doc() or {}).get("last_apply"), timeout=60, what="timeout")
        doc = sandbox.status_doc()
        assert "timed out" in doc["last_apply"]["results"][0]["message"]
        assert processes_with("sleep", "3117") == []
        assert processes_with("/bin/sleep", "3118") == []
    finally:
        kill_all("sleep", "3117")
        kill_all("/bin/sleep", "3118")


def test_successful_run_leaves_no_process(sandbox: Sandbox) -> None:
    sandbox.manifest.write_text(
        "exec { 'daemonize': command => \"/bin/sh -c 'setsid sleep 3119 "
        "</dev/null >/dev/null 2>&1 &'\" }\n"
    )
    try:
        res = sandbox.cli("daemon", "--once")
        assert res.returncode == 0, res.stderr[-2000:]
        assert processes_with("sleep", "3119") == []
    finally:
        kill_all("sleep", "3119")


def test_restart_after_kill_never_runs_two_puppets(sandbox: Sandbox) -> None:
    sandbox.manifest.write_text("exec { 'long': command => '/bin/sleep 3120', timeout => 0 }\n")
    try:
        first = sandbox.start_daemon()
        old = wait_for(lambda: processes_with("/bin/sleep", "3120"), timeout=60, what="a run")
        first.kill()
        first.wait(timeout=10)
        assert processes_with("/bin/sleep", "3120") == old  # orphaned, still running
        sandbox.start_daemon()
        seen: set[int] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = processes_with("/bin/sleep", "3120")
            assert len(now) <= 1, f"two runs at once: {now}"
            seen.update(now)
            if now and now != old:
                break
            time.sleep(0.05)
        assert not set(old) & set(processes_with("/bin/sleep", "3120")), "old run not stopped"
        assert seen - set(old), "the new daemon never started its own run"
        assert "previous_run_interrupted" in sandbox.daemon_log()
        sandbox.stop_daemons()
        assert processes_with("/bin/sleep", "3120") == []
    finally:
        kill_all("/bin/sleep", "3120")


# --- 9. run now and wait -------------------------------------------------------------


def test_apply_asks_the_daemon_and_waits_for_the_result(sandbox: Sandbox) -> None:
    res = sandbox.cli("apply")
    assert res.returncode == 3 and "no mozagent daemon is running" in res.stderr
    sandbox.start_daemon()
    wait_for(lambda: idle(sandbox), timeout=60, what="first apply")
    count = sandbox.run_count()
    res = sandbox.cli("apply", "--timeout", "120")
    assert res.returncode == 0, res.stderr
    assert "last apply: OK" in res.stdout and "site.pp" in res.stdout
    assert sandbox.run_count() == count + 1
    sandbox.manifest.write_text("file { 'broken': ensure => \n")
    res = sandbox.cli("apply", "--timeout", "120")
    assert res.returncode == 1
    assert "FAILED" in res.stdout and "could not compile" in res.stdout


def test_unit_reloads_by_asking_for_a_run() -> None:
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "mozagent.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit


# --- 12. the state dir's files are not trusted blindly -------------------------------


@pytest.mark.parametrize("content", ["[1, 2]", '{"agent": 5}', '{"errors": {"x": 3}}', "{"])
def test_damaged_status_file_does_not_stop_the_daemon(sandbox: Sandbox, content: str) -> None:
    sandbox.state.mkdir(parents=True)
    (sandbox.state / "status.json").write_text(content)
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 0, res.stderr[-2000:]
    assert sandbox.status()[0] == 0


def test_lost_lastgood_keeps_the_data_version(sandbox: Sandbox, zk: KazooClient) -> None:
    put(zk, app_path(sandbox, "greeting"), b"x")
    assert sandbox.cli("daemon", "--once").returncode == 0
    version = zk.exists(app_path(sandbox, "greeting")).mzxid
    facts = sandbox.state / "facts.d" / "mozagent.json"
    assert json.loads(facts.read_text())["mozagent_data_version"] == str(version)
    (sandbox.state / "lastgood.json").unlink()
    assert sandbox.cli("daemon", "--once").returncode == 0
    assert json.loads(facts.read_text())["mozagent_data_version"] == str(version)
    assert sandbox.status_doc()["last_apply"]["data_version"] == version


# --- 13. what a value says is what puppet sees ----------------------------------------


def test_hiera_interpolation_is_not_applied_to_stored_values(
    sandbox: Sandbox, zk: KazooClient
) -> None:
    put(zk, app_path(sandbox, "greeting"), b"100%{} and %{facts.hostname} %{literal('x')}")
    put(zk, app_path(sandbox, "port"), b"'%{lookup(\"greeting\")}'")
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 0, res.stderr[-2000:]
    assert sandbox.output().startswith(
        "greeting=100%{} and %{facts.hostname} %{literal('x')} port=%{lookup(\"greeting\")} "
    )


def test_children_of_a_key_are_reported(sandbox: Sandbox, zk: KazooClient) -> None:
    put(zk, app_path(sandbox, "greeting"), b"parent")
    put(zk, app_path(sandbox, "greeting") + "/child", b"ignored")
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 3
    errors = sandbox.status()[1]["errors"]["data"]
    assert errors[0]["where"] == app_path(sandbox, "greeting")
    assert "1 child znode(s), which are ignored" in errors[0]["message"]
    assert "greeting=parent" in sandbox.output()


# --- 14. status and logs stay quiet and machine-readable -------------------------------


def test_zookeeper_down_does_not_rewrite_status_every_second(own_box, own_zk) -> None:
    box, client = own_box
    put(client, app_path(box, "greeting"), b"x")
    box.start_daemon()
    wait_for(lambda: idle(box), timeout=60, what="first apply")
    # The warm puppet parent starts after the first run: its "warm" is a change of its own.
    wait_for(
        lambda: ((box.status_doc() or {}).get("puppet_runner") or {}).get("state") == "warm",
        timeout=60,
        what="the warm puppet parent",
    )
    own_zk.stop()
    wait_for(lambda: box.status()[0] == 3, timeout=30, what="ZooKeeper down reported")
    time.sleep(1.5)  # let the state settle (suspended → connecting attempts)
    status = box.state / "status.json"
    before = status.read_bytes()
    time.sleep(4)
    assert status.read_bytes() == before
    for line in box.daemon_log().splitlines():
        assert isinstance(json.loads(line), dict), line  # kazoo's lines too


def test_unreadable_layer_keeps_last_good_and_says_so(sandbox: Sandbox, zk: KazooClient) -> None:
    from kazoo.security import make_digest_acl

    sandbox.write_config(zookeeper={"resync_interval": 1})
    put(zk, app_path(sandbox, "greeting"), b"readable")
    sandbox.start_daemon()
    wait_for(lambda: "greeting=readable" in sandbox.output(), what="first apply")
    zk.set_acls(app_path(sandbox), [make_digest_acl("owner", "secret", all=True)])
    wait_for(
        lambda: (sandbox.status_doc() or {}).get("errors", {}).get("data"),
        what="unreadable layer reported",
    )
    err = sandbox.status()[1]["errors"]["data"][0]
    assert "lacks the read (r) permission" in err["message"], err
    assert "last good data" in err["message"]
    assert sandbox.layer_file("app") == {"greeting": "readable"}
    assert yaml.safe_load((sandbox.state / "lastgood.json").read_text())["app"]["values"] == {
        "greeting": "readable"
    }
