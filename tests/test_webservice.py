"""The blueprint's reference service, end to end, on the machine's real Apache
(with mod_wsgi) and MariaDB: the stack of ``examples/heat/webapp.yaml``
(served by the Heat stand-in) applies the front ends of ``examples/mozpuppet``
(its Puppetfile resolved by librarian-puppet), the sample app
(``examples/webapp``, in a git repository of its own) is installed by its
install script, and its page answers with the app's data from ZooKeeper.

One service stands for the whole module, as it does on a host: the tests run
in order on it (a release, then data, then another release...), each
checking what a user of the platform sees. Apache and MariaDB listen on
127.0.0.1 only; the init stand-in that started them stops them at the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mozagent_dev import webservice
from mozagent_dev.heatstub import HeatStub
from mozagent_dev.testing import ZooKeeperServer
from tests.conftest import Sandbox, wait_for

pytestmark = pytest.mark.webservice

APACHE_LOG = Path("/var/log/apache2/error.log")
GRACEFUL = "SIGUSR1 received.  Doing graceful restart"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app_user() -> None:
    """The app's user, with Apache's user in its group (the image's job)."""
    if subprocess.run(["id", "webapp"], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "webapp"],
            check=True,
        )  # fmt: skip
    subprocess.run(["usermod", "-a", "-G", "webapp", "www-data"], check=True)


class Service:
    """The running service: its agent, its Heat, its app's repository, its URL."""

    def __init__(self, box: Sandbox, stub: HeatStub, repo: webservice.AppRepo, port: int) -> None:
        self.box, self.stub, self.repo, self.port = box, stub, repo, port
        self.url = f"http://127.0.0.1:{port}/"

    def page(self) -> dict[str, Any]:
        status, body = webservice.get(self.url)
        assert status == 200, (status, body[:500])
        return json.loads(body)

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        res = self.box.cli(*args, timeout=400)
        if ok:
            assert res.returncode == 0, res.stdout + res.stderr
        return res

    def deploy(self, tag: str, ok: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        self.repo.release(tag, **kw)
        return self.cli(
            "deploy", "webapp", tag, "--source", self.repo.url, "--wait", "--timeout", "300", ok=ok
        )

    def result(self, name: str) -> dict[str, Any]:
        doc = self.box.status_doc() or {}
        return next(r for r in doc["last_apply"]["results"] if r["name"] == name)


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, zk_server: ZooKeeperServer, puppet_bin: str
) -> Iterator[Service]:
    if os.geteuid() != 0:
        pytest.skip("the service manages the machine's Apache and MariaDB: needs root")
    if lacking := webservice.missing():
        pytest.fail(f"not installed: {', '.join(lacking)} (tools/install-deps installs them)")
    _app_user()
    root = tmp_path_factory.mktemp("webservice")
    tree = webservice.resolve_tree(root / "mozpuppet")
    # The app's user must reach its release dir: not under pytest's 0700 tmp.
    apps = Path(tempfile.mkdtemp(prefix="mozagent-webservice-apps."))
    apps.chmod(0o755)
    sock = root / "initd.sock"
    with open(root / "initd.log", "ab") as log:
        initd = subprocess.Popen(
            [sys.executable, str(webservice.CHECKOUT / "mozagent_dev" / "initd.py"),
             "serve", str(sock), "apache2", "mariadb"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    stub = HeatStub().start()
    port = _free_port()
    (root / "agent").mkdir()
    box = Sandbox(root / "agent", zk_server.hosts, f"/ws-{os.getpid()}")
    try:
        wait_for(sock.exists, timeout=30, what="the init stand-in")
        heat = root / "heat"
        heat.mkdir()
        (heat / "cfn-init-data").write_text(
            json.dumps(
                {
                    "os-collect-config": {
                        "collectors": ["request"],
                        "request": {"metadata_url": f"{stub.url}/metadata"},
                    }
                }
            )
        )
        stub.set_metadata({"deployments": []})
        box.write_config(
            app="webapp",
            puppet={
                "manifests": [str(tree / "manifests" / "site.pp")],
                "modulepath": [str(tree / "site"), str(tree / "modules")],
                "timeout": 300,
            },
            releases={"apps_dir": str(apps), "user": "webapp"},
            heat={
                "heat_local_paths": [str(heat / "cfn-init-data")],
                "local_paths": [str(heat / "local-data")],
                "os_collect_config_conf": str(heat / "none.conf"),
            },
        )
        control = f"{sys.executable} {webservice.CHECKOUT}/mozagent_dev/initd.py call {sock}"
        node = {
            "mozpuppet::apache::apps_dir": str(apps),
            "mozpuppet::apache::service_control": control,
            "mozpuppet::mysql::service_control": control,
            "mozpuppet::apache::listen_ip": "127.0.0.1",
            "mozpuppet::mysql::bind_address": "127.0.0.1",
        }
        (root / "node.yaml").write_text(json.dumps(node))
        (root / "app.yaml").write_text(json.dumps({"webapp::env": {"GREETING": "from zk"}}))
        for args in (["webapp", str(root / "app.yaml")],
                     ["webapp", "--node", "web1", str(root / "node.yaml")]):  # fmt: skip
            res = box.cli("data", "import", *args)
            assert res.returncode == 0, res.stderr
        box.start_daemon()
        stub.set_metadata(webservice.heat_metadata(stub.url, port=port))
        wait_for(
            lambda: stub.signals_for("vhost_deployment-1"),
            timeout=300,
            interval=0.5,
            what="the vhost deployment's signal",
        )
        svc = Service(box, stub, webservice.AppRepo(root / "webapp.git"), port)
        svc.deploy("v1")
        wait_for(lambda: webservice.get(svc.url + "health")[0] == 200, timeout=30, what="the page")
        yield svc
    finally:
        box.stop_daemons()
        stub.stop()
        if initd.poll() is None:
            subprocess.run(["mysql", "-e", "DROP DATABASE IF EXISTS webapp"], check=False)
            initd.terminate()  # it stops the Apache and MariaDB it started
            initd.wait(timeout=120)
        subprocess.run(["rm", "-rf", str(apps)], check=False)


def _gracefuls() -> int:
    try:
        return APACHE_LOG.read_text(errors="replace").count(GRACEFUL)
    except FileNotFoundError:
        return 0


def test_the_stack_completes_and_its_url_answers_with_the_value_from_zookeeper(
    service: Service,
) -> None:
    for dep in ("database_deployment-1", "vhost_deployment-1"):
        (signal,) = service.stub.signals_for(dep)
        assert signal["deploy_status_code"] == 0, signal
    (vhost,) = service.stub.signals_for("vhost_deployment-1")
    assert vhost["url"] == service.url
    page = service.page()
    assert page["greeting"] == "from zk" and page["release"] == "v1", page
    assert page["schema"] == 2, "the install script migrated the database"
    # Only loopback: the vhost's Listen and MariaDB's TCP port.
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    for line in listening.splitlines():
        local = line.split()[3]
        if local.endswith((f":{service.port}", ":3306")):
            assert local.startswith("127.0.0.1:"), line


def test_a_data_change_reaches_the_page_and_apache_reloads_only_when_its_config_changed(
    service: Service,
) -> None:
    before = _gracefuls()
    service.cli("data", "set", "webapp", "webapp::unrelated", "1", "--wait", "--timeout", "300")
    assert _gracefuls() == before, "a change the vhost does not use restarted Apache"
    assert service.page()["greeting"] == "from zk"
    service.cli(
        "data", "set", "webapp", "webapp::env", '{"GREETING": "changed, through puppet"}',
        "--wait", "--timeout", "300",
    )  # fmt: skip
    assert service.page()["greeting"] == "changed, through puppet"
    assert _gracefuls() == before + 1, "the vhost changed: one graceful restart"
    assert (
        'SetEnv GREETING "changed, through puppet"'
        in Path("/etc/apache2/sites-enabled/25-webapp.test.conf").read_text()
    )


def test_a_new_release_is_served_without_a_failed_request_while_it_switches(
    service: Service,
) -> None:
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        deadline = time.monotonic() + 400  # bounded even if the test fails
        while not stop.is_set() and time.monotonic() < deadline:
            status, body = webservice.get(service.url, timeout=30)
            release = json.loads(body)["release"] if status == 200 else body[:200]
            seen.append((status, release))

    client = threading.Thread(target=hammer, daemon=True)
    client.start()
    try:
        wait_for(lambda: len(seen) >= 5, timeout=30, what="requests before the switch")
        service.deploy("v2")
        count = len(seen)
        wait_for(lambda: len(seen) >= count + 20, timeout=60, what="requests after the switch")
    finally:
        stop.set()
        client.join(timeout=60)
    failed = [s for s in seen if s[0] != 200]
    releases = [r for _, r in seen]
    assert not failed, f"{len(failed)} of {len(seen)} requests failed: {failed[:5]}"
    assert releases[0] == "v1" and releases[-1] == "v2", releases
    switched = releases.index("v2")
    assert set(releases[switched:]) == {"v2"}, "once served, the new release stays"
    print(f"release switch: {len(seen)} requests, {len(failed)} failed")


def test_an_order_runs_a_command_of_the_procfile(service: Service) -> None:
    service.cli("order", "webapp", "migrate", "--wait", "--timeout", "120")
    out = service.cli("order", "status", "webapp").stdout
    assert "no migration to apply (schema 2)" in out, out
    out = service.cli("order", "webapp", "version", "--wait", "--timeout", "120").stdout
    assert "done (rc 0)" in out, out


def test_a_front_end_given_a_bad_parameter_fails_the_run_with_puppets_message(
    service: Service,
) -> None:
    res = service.cli(
        "data", "set", "webapp", "webapp::env", '{"not a name": "x"}',
        "--wait", "--timeout", "300", ok=False,
    )  # fmt: skip
    assert res.returncode != 0 and "FAILED" in res.stdout, res.stdout
    vhost = service.result("heat:vhost_deployment")
    assert not vhost["ok"], vhost
    tail = "\n".join(vhost["output_tail"])
    assert re.search(r"parameter 'env' .*expects a match for Pattern", tail), tail
    assert "expects a match for Pattern" in service.cli("status", ok=False).stdout
    # The last good config keeps serving.
    assert service.page()["greeting"] == "changed, through puppet"
    service.cli(
        "data", "set", "webapp", "webapp::env", '{"GREETING": "fixed"}',
        "--wait", "--timeout", "300",
    )  # fmt: skip
    assert service.page()["greeting"] == "fixed"


def test_a_release_whose_install_script_fails_is_not_served(service: Service) -> None:
    res = service.deploy("v3-broken", ok=False, install_fails=True)
    assert res.returncode != 0 and "FAILED" in res.stdout, res.stdout
    assert service.page()["release"] == "v2", "the old release keeps answering"
    service.deploy("v4")
    assert service.page()["release"] == "v4"
