"""Heat SoftwareDeployments end to end: os-collect-config's collectors (real, as a
library), real ``puppet apply``, real scripts and hooks, signals to a local
server that follows Heat's instance-facing contract (``mozagent_dev/heatstub.py``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mozagent_dev.heatstub import HeatStub, inputs
from mozagent_dev.testing import free_port, text_of
from tests.conftest import Sandbox, wait_for

PUPPET_CONFIG = """\
file {{ '{out}':
  content => "port=${{facts['port']}} hiera=${{lookup('port')}} flag=${{facts['flag']}} \
list=${{join(lookup('hosts'), '+')}} json=${{lookup('settings')['a']}} \
pw=${{facts['deploy_password']}}\\n",
}}
file {{ "${{heat_outputs_path}}.result":
  content => "written-by-puppet",
}}
"""

SCRIPT_CONFIG = """#!/bin/sh
echo "script got port=$port hosts=$hosts settings=$settings flag=$flag"
echo "to stderr" >&2
printf 'done:%s' "$port" > "$heat_outputs_path.result"
env > {env_dump}
"""


@contextmanager
def running_stub() -> Iterator[HeatStub]:
    server = HeatStub().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stub() -> Iterator[HeatStub]:
    with running_stub() as server:
        yield server


class HeatBox:
    def __init__(self, box: Sandbox, stub: HeatStub) -> None:
        self.box = box
        self.stub = stub
        self.local = box.root / "cfn-init-data"
        self.hooks = box.root / "hooks"
        self.hooks.mkdir()
        self.local.write_text(
            json.dumps(
                {
                    "os-collect-config": {
                        "collectors": ["request", "local"],
                        "request": {"metadata_url": f"{stub.url}/metadata"},
                    }
                }
            )
        )
        self.heat_settings = {
            "heat_local_paths": [str(self.local)],
            "local_paths": [str(box.root / "local-data")],
            "os_collect_config_conf": str(box.root / "no-such.conf"),
            "hook_dirs": [str(self.hooks)],
            "poll_min": 0.2,
            "poll_max": 0.5,
            "retry_max": 1,
            "signal_retry_max": 1,
            "timeout": 60,
        }
        self.write()

    def write(self, **overrides: Any) -> None:
        self.box.write_config(
            **{"app": None, "zookeeper": None, "puppet": {"manifests": []}, **overrides},
            heat=self.heat_settings,
        )

    def deployment(
        self, dep_id: str, group: str, config: Any, transport: str = "TEMP_URL_SIGNAL", **kw: Any
    ) -> dict[str, Any]:
        extra = kw.pop("extra", {})
        return {
            "id": dep_id,
            "name": kw.pop("name", f"cfg-{dep_id}"),
            "group": group,
            "config": config,
            "creation_time": "2026-11-25T00:00:00Z",
            "inputs": inputs(transport, self.stub.url, dep_id, kw.pop("action", "CREATE"), **extra),
            "outputs": kw.pop("outputs", [{"name": "result"}]),
            "options": kw.pop("options", {}),
        }


@contextmanager
def heat_box(tmp_path: Path, stub: HeatStub) -> Iterator[HeatBox]:
    """A sandboxed agent polling ``stub``; its daemons stopped at the end."""
    box = Sandbox(tmp_path, None, "/unused")
    try:
        yield HeatBox(box, stub)
    finally:
        box.stop_daemons()


@pytest.fixture
def heat(tmp_path: Path, stub: HeatStub, puppet_bin: str) -> Iterator[HeatBox]:
    with heat_box(tmp_path, stub) as hb:
        yield hb


TYPED = {
    "port": ("Number", 8080),
    "flag": ("Boolean", True),
    "hosts": ("CommaDelimitedList", "a,b"),
    "settings": ("Json", {"a": 1}),
}


def test_puppet_script_and_unknown_group_are_run_and_signalled_once(heat: HeatBox) -> None:
    box, stub = heat.box, heat.stub
    out = box.root / "puppet-out.txt"
    env_dump = box.root / "script-env.txt"
    stub.set_metadata(
        {
            "deployments": [
                heat.deployment("d-puppet", "puppet", PUPPET_CONFIG.format(out=out), extra=TYPED),
                heat.deployment(
                    "d-script",
                    "script",
                    SCRIPT_CONFIG.format(env_dump=env_dump),
                    "CFN_SIGNAL",
                    extra=TYPED,
                ),
                heat.deployment("d-unknown", "salt", "whatever"),
            ]
        }
    )
    proc = box.start_daemon()
    wait_for(lambda: len(stub.signals) == 3, timeout=90, what="three signals")
    assert [s[1] for s in stub.signals] == ["d-puppet", "d-script", "d-unknown"]

    puppet = stub.signals_for("d-puppet")[0]
    assert puppet["deploy_status_code"] == 0, puppet
    assert puppet["result"] == "written-by-puppet"
    # Typed inputs stay typed, as facts and as Hiera data; credentials are not facts.
    assert out.read_text() == "port=8080 hiera=8080 flag=true list=a+b json=1 pw=\n"

    script = stub.signals_for("d-script")[0]
    assert stub.signals[1][0] == "POST"  # CFN_SIGNAL
    assert script["deploy_status_code"] == 0
    assert 'port=8080 hosts=["a", "b"] settings={"a": 1} flag=true' in script["deploy_stdout"]
    assert script["deploy_stderr"].strip() == "to stderr"
    assert script["result"] == "done:8080"
    env = env_dump.read_text()
    assert "s3cr3t" not in env and "deploy_signal_id" not in env and "MOZAGENT_CONFIG" not in env

    unknown = stub.signals_for("d-unknown")[0]
    assert unknown["deploy_status_code"] != 0
    assert "no applier for group 'salt'" in unknown["deploy_stderr"]

    code, doc = box.status()
    states = {d["id"]: (d["state"], d["signal"]["state"]) for d in doc["deployments"]}
    assert states == {
        "d-puppet": ("done", "sent"),
        "d-script": ("done", "sent"),
        "d-unknown": ("failed", "sent"),
    }
    assert code == 1  # a deployment failed
    assert "deployments:" in box.cli("status").stdout

    # More polls, then a restart: nothing runs or signals again.
    time.sleep(2)
    assert len(stub.signals) == 3
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    box.start_daemon()
    wait_for(
        lambda: (box.status_doc() or {}).get("heat", {}).get("in_use") == "request",
        timeout=30,
        what="polling again",
    )
    time.sleep(2)
    assert len(stub.signals) == 3


def test_credentials_reach_only_the_0600_state(heat: HeatBox) -> None:
    box, stub = heat.box, heat.stub
    out = box.root / "puppet-out.txt"
    dead = heat.deployment("c-dead", "script", "#!/bin/sh\n", "CFN_SIGNAL")
    for item in dead["inputs"]:
        if item["name"] == "deploy_signal_id":  # nobody listens there: errors quote the URL
            item["value"] = f"http://127.0.0.1:{free_port()}/cfn/c-dead?signature=s3cr3t-dead"
    deps = [
        heat.deployment("c-puppet", "puppet", PUPPET_CONFIG.format(out=out), extra=TYPED),
        heat.deployment("c-script", "script", SCRIPT_CONFIG.format(env_dump=box.root / "e")),
        dead,
    ]
    for dep in deps:
        dep["inputs"].append({"name": "deploy_password", "value": "hunter2-password"})
        dep["inputs"].append({"name": "deploy_auth_url", "value": "http://127.0.0.1:1/v3"})
    stub.set_metadata({"deployments": deps})
    box.start_daemon()
    wait_for(lambda: len(stub.signals) == 2, timeout=90, what="two signals")
    wait_for(
        lambda: (box.status_doc() or {}).get("errors", {}).get("signals"),
        timeout=60,
        what="the dead signal reported",
    )
    assert "ConnectionError" in box.status_doc()["errors"]["signals"][0]["message"]
    status_text = box.cli("status").stdout + box.cli("status", "--json").stdout
    secrets = ("hunter2-password", "s3cr3t")
    assert not any(s in status_text for s in secrets)
    assert not any(s in box.daemon_log() for s in secrets)
    holders = []
    for root, _, files in os.walk(box.root):
        for name in files:
            path = Path(root) / name
            data = path.read_bytes() if path.is_file() else b""
            if any(s.encode() in data for s in secrets):
                holders.append(path)
                assert oct(path.stat().st_mode & 0o777) == "0o600", path
    # Only the cached metadata and the unsent signal hold them; sent ones drop it.
    names = {p.relative_to(box.root).as_posix() for p in holders}
    assert names <= {
        "state/heat/metadata/request.json",
        "state/heat/signals/c-dead.json",
    }, names


def test_signals_survive_a_failing_server(heat: HeatBox) -> None:
    box, stub = heat.box, heat.stub
    stub.fail_signals = 4
    stub.set_metadata({"deployments": [heat.deployment("r-1", "script", "#!/bin/sh\necho hi\n")]})
    box.start_daemon()
    wait_for(lambda: stub.signals_for("r-1"), timeout=90, what="signal after failures")
    assert stub.failed == 4
    assert len(stub.signals_for("r-1")) == 1
    wait_for(
        lambda: (
            (box.status_doc() or {}).get("deployments", [{}])[0].get("signal", {}).get("state")
            == "sent"
        ),
        what="sent in status",
    )


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (json.dumps({"deployments": "nope"}).encode(), "is not a list"),
        (json.dumps({"deployments": [{"name": "x"}]}).encode(), "has no id"),
    ],
)
def test_bad_metadata_is_reported_and_the_daemon_lives(
    heat: HeatBox, metadata: bytes, why: str | None
) -> None:
    box, stub = heat.box, heat.stub
    stub.set_raw(metadata)
    proc = box.start_daemon()

    def errors() -> list[dict[str, str]]:
        return (box.status_doc() or {}).get("errors", {}).get("heat", [])

    wait_for(errors, timeout=30, what="metadata problem reported")
    if why:
        assert any(why in e["message"] for e in errors()), errors()
    assert proc.poll() is None
    # Good metadata later is used.
    stub.set_metadata({"deployments": [heat.deployment("g-1", "script", "#!/bin/sh\n")]})
    wait_for(lambda: stub.signals_for("g-1"), timeout=60, what="good deployment signalled")


def test_duplicate_ids_missing_keys_and_noisy_outputs(heat: HeatBox) -> None:
    box, stub = heat.box, heat.stub
    noisy = "#!/bin/sh\nhead -c 5242880 /dev/zero | tr '\\0' x\necho THE-END\nexit 3\n"
    dup = heat.deployment("dup", "script", "#!/bin/sh\necho first\n")
    nogroup = heat.deployment("nogroup", "script", "#!/bin/sh\n")
    del nogroup["group"]
    stub.set_metadata(
        {
            "deployments": [
                dup,
                heat.deployment("dup", "script", "#!/bin/sh\necho second\n"),
                nogroup,
                heat.deployment("noisy", "script", noisy),
                heat.deployment("badhook", "badhook", {"x": 1}),
            ]
        }
    )
    (heat.hooks / "badhook").write_text("#!/bin/sh\necho this is not json\n")
    (heat.hooks / "badhook").chmod(0o755)
    box.start_daemon()
    wait_for(lambda: len(stub.signals) == 4, timeout=90, what="four signals")
    assert "first" in stub.signals_for("dup")[0]["deploy_stdout"]
    assert "has no group" in stub.signals_for("nogroup")[0]["deploy_stderr"]
    body = stub.signals_for("noisy")[0]
    assert body["deploy_status_code"] == 3
    assert body["deploy_stdout"].rstrip().endswith("THE-END")
    assert "trimmed" in body["deploy_stdout"][:200]
    assert len(json.dumps(body)) < 1_000_000
    bad = stub.signals_for("badhook")[0]
    assert bad["deploy_status_code"] != 0 and "did not print a JSON object" in bad["deploy_stderr"]
    errors = box.status_doc()["errors"]["heat"]
    assert any("duplicate id" in e["message"] for e in errors)


def test_missing_puppet_fails_the_deployment(heat: HeatBox) -> None:
    box, stub = heat.box, heat.stub
    heat.write(puppet={"manifests": [], "binary": str(box.root / "no-puppet")})
    stub.set_metadata({"deployments": [heat.deployment("np", "puppet", "notice('x')")]})
    box.start_daemon()
    wait_for(lambda: stub.signals_for("np"), timeout=60, what="signal")
    body = stub.signals_for("np")[0]
    assert body["deploy_status_code"] != 0
    assert "not found" in body["deploy_stderr"]


def test_heat_puppet_config_is_reapplied_when_data_changes(
    tmp_path: Path, stub: HeatStub, zk_server, zk, zk_root: str, puppet_bin: str
) -> None:
    box = Sandbox(tmp_path, zk_server.hosts, zk_root)
    hb = HeatBox(box, stub)
    hb.write(app="shop", zookeeper=box.config()["zookeeper"])
    out = box.root / "zk-driven.txt"
    zk.create(f"{zk_root}/apps/shop/data/greeting", b"one", makepath=True)
    manifest = f"file {{ '{out}': content => \"${{lookup('greeting')}} ${{facts['port']}}\\n\" }}\n"
    stub.set_metadata(
        {"deployments": [hb.deployment("z-1", "puppet", manifest, extra={"port": ("Number", 1)})]}
    )
    try:
        box.start_daemon()
        wait_for(lambda: stub.signals_for("z-1"), timeout=90, what="deployment signalled")
        assert text_of(out) == "one 1\n"
        zk.set(f"{zk_root}/apps/shop/data/greeting", b"two")
        wait_for(lambda: text_of(out) == "two 1\n", timeout=60, what="re-applied on data change")
        assert len(stub.signals) == 1  # no new signal
    finally:
        box.stop_daemons()


def test_kill_at_every_step_still_signals_each_deployment_as_its_run_ended(
    heat: HeatBox,
) -> None:
    box, stub = heat.box, heat.stub
    marker = box.root / "slow-runs"
    slow = f"#!/bin/sh\necho run >> {marker}\nsleep 3\necho slow-done\n"
    stub.set_metadata(
        {
            "deployments": [
                heat.deployment("k-slow", "script", slow),
                heat.deployment("k-quick", "script", "#!/bin/sh\necho quick\nexit 4\n"),
                heat.deployment("k-send", "script", "#!/bin/sh\necho sent-late\n"),
            ]
        }
    )
    # During a run (and so before the next one's): kill -9, restart.
    first = box.start_daemon()
    wait_for(lambda: text_of(marker), timeout=60, what="the slow run to start")
    first.kill()
    first.wait(timeout=10)
    assert stub.signals == []
    # After the runs, before the signals reach Heat: the server refuses them.
    stub.fail_signals = 10_000
    second = box.start_daemon()
    wait_for(lambda: stub.failed >= 3, timeout=90, what="signals tried and refused")
    second.kill()
    second.wait(timeout=10)
    assert text_of(marker).count("run") == 2  # the interrupted run ran again
    # During a send: the server sits on the request while the agent dies.
    stub.fail_signals = 0
    stub.delay_signals = 2.0
    third = box.start_daemon()
    wait_for(lambda: stub.received > stub.failed, timeout=60, what="a send under way")
    third.kill()
    third.wait(timeout=10)
    stub.delay_signals = 0.0
    box.start_daemon()
    wait_for(
        lambda: all(stub.signals_for(d) for d in ("k-slow", "k-quick", "k-send")),
        timeout=90,
        what="every deployment signalled",
    )
    assert text_of(marker).count("run") == 2  # never a third time
    for dep_id, code in (("k-slow", 0), ("k-quick", 4), ("k-send", 0)):
        bodies = stub.signals_for(dep_id)
        # At most the one cut short by the kill is repeated; Heat ignores repeats.
        assert len(bodies) <= 2 and all(b == bodies[0] for b in bodies), bodies
        assert bodies[0]["deploy_status_code"] == code
    assert "slow-done" in stub.signals_for("k-slow")[0]["deploy_stdout"]
    wait_for(
        lambda: all(
            d["signal"]["state"] == "sent" for d in (box.status_doc() or {}).get("deployments", [])
        ),
        what="all sent in status",
    )


def test_etc_os_collect_config_conf_is_honoured(heat: HeatBox) -> None:
    """A host set up for the old chain keeps working: its os-collect-config.conf
    names the collector and its settings, with no os-collect-config section in
    the local metadata."""
    box, stub = heat.box, heat.stub
    heat.local.write_text("{}")
    conf = box.root / "os-collect-config.conf"
    conf.write_text(
        f"[DEFAULT]\ncollectors = request\n\n[request]\nmetadata_url = {stub.url}/metadata\n"
    )
    heat.heat_settings["os_collect_config_conf"] = str(conf)
    heat.write()
    stub.set_metadata({"deployments": [heat.deployment("conf-1", "script", "#!/bin/sh\n")]})
    box.start_daemon()
    wait_for(lambda: stub.signals_for("conf-1"), timeout=60, what="signal via the conf file")


def test_idle_polling_does_not_rewrite_status(heat: HeatBox) -> None:
    """Polling every 0.2 to 0.5 s must not mean a status.json write every poll."""
    box, stub = heat.box, heat.stub
    stub.set_metadata({"deployments": [heat.deployment("i-1", "script", "#!/bin/sh\n")]})
    box.start_daemon()
    wait_for(lambda: stub.signals_for("i-1"), timeout=60, what="signal")
    status = box.state / "status.json"
    wait_for(lambda: time.time() % 30 < 20, timeout=30, what="away from a 30 s boundary")
    time.sleep(1)
    before = status.read_bytes()
    time.sleep(4)
    assert status.read_bytes() == before


def test_a_change_in_the_same_second_as_the_last_fetch_is_seen(heat: HeatBox) -> None:
    """Swift's Last-Modified has whole seconds: a second write in the second of
    the one just fetched keeps it. The deployment it adds must still run."""
    box, stub = heat.box, heat.stub
    box.start_daemon()
    for attempt in range(5):
        first, second = f"s{attempt}-a", f"s{attempt}-b"
        a = heat.deployment(first, "script", "#!/bin/sh\n")
        b = heat.deployment(second, "script", "#!/bin/sh\n")
        wait_for(lambda: time.time() % 1 < 0.05, timeout=3, what="the start of a second")
        modified = stub.set_metadata({"deployments": [a]}, bump=False)
        wait_for(
            lambda m=modified: any(lm == m for _, lm in stub.served), timeout=5, what="fetched"
        )
        if stub.set_metadata({"deployments": [a, b]}, bump=False) == modified:
            break  # both writes in one second: the case under test
    else:
        pytest.skip("could not make two writes within one second")
    wait_for(lambda: stub.signals_for(second), timeout=30, what="the second write's deployment")


def test_one_value_heat_gives_for_a_multi_valued_collector_setting_is_a_list(
    tmp_path: Path,
) -> None:
    """Heat's os_collect_config names cfn's ``path`` as one string; the option is
    multi-valued, and as a string the collector would read its characters as
    paths (found against a real Heat, tests/test_realheat.py)."""
    from oslo_config import cfg

    from mozagent.sources.collectors import Collectors

    collectors = Collectors(str(tmp_path), None)
    settings = {
        "metadata_url": "http://127.0.0.1:1/v1/",
        "stack_name": "s",
        "path": "server.Metadata",
        "access_key_id": "a",
        "secret_access_key": "b",
    }
    assert collectors.configure("cfn", settings) == []
    assert list(cfg.CONF.cfn.path) == ["server.Metadata"]
