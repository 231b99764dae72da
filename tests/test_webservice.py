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
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mozagent_dev import webservice
from mozagent_dev.heatstub import HeatStub
from mozagent_dev.testing import ZooKeeperServer
from tests.conftest import wait_for
from tests.webhost import WebHost, free_port, web_host

pytestmark = pytest.mark.webservice

APACHE_LOG = Path("/var/log/apache2/error.log")
GRACEFUL = "SIGUSR1 received.  Doing graceful restart"


@pytest.fixture(scope="module")
def stub() -> Iterator[HeatStub]:
    heat = HeatStub().start()
    heat.set_metadata({"deployments": []})
    yield heat
    heat.stop()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory,
    zk_server: ZooKeeperServer,
    puppet_bin: str,
    stub: HeatStub,
) -> Iterator[WebHost]:
    root = tmp_path_factory.mktemp("webservice")
    occ = {"collectors": ["request"], "request": {"metadata_url": f"{stub.url}/metadata"}}
    with web_host(root, zk_server.hosts, occ, free_port()) as host:
        stub.set_metadata(webservice.heat_metadata(stub.url, port=host.port))
        wait_for(
            lambda: stub.signals_for("vhost_deployment-1"),
            timeout=300,
            interval=0.5,
            what="the vhost deployment's signal",
        )
        host.deploy("v1")
        wait_for(lambda: webservice.get(host.url + "health")[0] == 200, timeout=30, what="the page")
        yield host


def _gracefuls() -> int:
    try:
        return APACHE_LOG.read_text(errors="replace").count(GRACEFUL)
    except FileNotFoundError:
        return 0


def test_the_stack_completes_and_its_url_answers_with_the_value_from_zookeeper(
    service: WebHost, stub: HeatStub
) -> None:
    for dep in ("database_deployment-1", "vhost_deployment-1"):
        (signal,) = stub.signals_for(dep)
        assert signal["deploy_status_code"] == 0, signal
    (vhost,) = stub.signals_for("vhost_deployment-1")
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
    service: WebHost,
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
    service: WebHost,
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


def test_an_order_runs_a_command_of_the_procfile(service: WebHost) -> None:
    service.cli("order", "webapp", "migrate", "--wait", "--timeout", "120")
    out = service.cli("order", "status", "webapp").stdout
    assert "no migration to apply (schema 2)" in out, out
    out = service.cli("order", "webapp", "version", "--wait", "--timeout", "120").stdout
    assert "done (rc 0)" in out, out


def test_a_front_end_given_a_bad_parameter_fails_the_run_with_puppets_message(
    service: WebHost,
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


def test_a_release_whose_install_script_fails_is_not_served(service: WebHost) -> None:
    res = service.deploy("v3-broken", ok=False, install_fails=True)
    assert res.returncode != 0 and "FAILED" in res.stdout, res.stdout
    assert service.page()["release"] == "v2", "the old release keeps answering"
    service.deploy("v4")
    assert service.page()["release"] == "v4"
