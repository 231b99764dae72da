"""A host of the reference service for the tests: the machine's real Apache
(mod_wsgi) and MariaDB behind the front ends of ``examples/mozpuppet``, the
init stand-in that starts them outside the agent's runs, the app's user, and
a mozagent daemon polling a Heat (the stand-in or the real one) for the
stack of ``examples/heat/webapp.yaml``. ``tests/test_webservice.py`` and the
real-Heat tests stand the service up through it; ``bench/webservice.py`` too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mozagent_dev import webservice
from tests.conftest import Sandbox, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_user() -> None:
    """The app's user, with Apache's user in its group (the image's job)."""
    if subprocess.run(["id", "webapp"], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "webapp"],
            check=True,
        )  # fmt: skip
    subprocess.run(["usermod", "-a", "-G", "webapp", "www-data"], check=True)


def needs_the_service() -> None:
    if os.geteuid() != 0:
        pytest.skip("the service manages the machine's Apache and MariaDB: needs root")
    if lacking := webservice.missing():
        pytest.fail(f"not installed: {', '.join(lacking)} (tools/install-deps installs them)")


class WebHost:
    """The running host: its agent, its app's repository, its URL."""

    def __init__(self, box: Sandbox, repo: webservice.AppRepo, port: int) -> None:
        self.box, self.repo, self.port = box, repo, port
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


@contextlib.contextmanager
def web_host(
    root: Path, zk_hosts: str, occ: dict[str, Any], port: int, **heat: Any
) -> Iterator[WebHost]:
    """A host whose agent polls the Heat ``occ`` names (a server's
    os_collect_config) and serves the app on ``port``; everything stopped,
    the app's database dropped, at the end."""
    needs_the_service()
    app_user()
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
    (root / "agent").mkdir()
    box = Sandbox(root / "agent", zk_hosts, f"/ws-{os.getpid()}-{port}")
    try:
        wait_for(sock.exists, timeout=30, what="the init stand-in")
        local = root / "cfn-init-data"
        local.write_text(json.dumps({"os-collect-config": occ}))
        box.write_config(
            app="webapp",
            puppet={
                "manifests": [str(tree / "manifests" / "site.pp")],
                "modulepath": [str(tree / "site"), str(tree / "modules")],
                "timeout": 300,
            },
            releases={"apps_dir": str(apps), "user": "webapp"},
            heat={
                "heat_local_paths": [str(local)],
                "local_paths": [str(root / "local-data")],
                "os_collect_config_conf": str(root / "none.conf"),
                **heat,
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
        yield WebHost(box, webservice.AppRepo(root / "webapp.git"), port)
    finally:
        box.stop_daemons()
        if initd.poll() is None:
            subprocess.run(["mysql", "-e", "DROP DATABASE IF EXISTS webapp"], check=False)
            initd.terminate()  # it stops the Apache and MariaDB it started
            initd.wait(timeout=120)
        subprocess.run(["rm", "-rf", str(apps)], check=False)
