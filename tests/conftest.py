"""Fixtures: a real ZooKeeper server, real puppet, and an agent sandbox in a temp dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

from mozagent_dev.testing import ZooKeeperServer, text_of, wait_until, zookeeper_available
from tests.roles import Fleet

REPO = Path(__file__).resolve().parent.parent


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    return wait_until(predicate, timeout, what, interval)


@pytest.fixture(scope="session")
def zk_server() -> Iterator[ZooKeeperServer]:
    if not zookeeper_available():
        pytest.fail("ZooKeeper is not installed (apt-get install zookeeper): the tests need it")
    server = ZooKeeperServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def zk_root() -> str:
    """A root of its own for each test, so tests sharing the server never see each other."""
    return f"/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def zk(zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    client = KazooClient(hosts=zk_server.hosts, timeout=10)
    client.start(timeout=15)
    yield client
    client.stop()
    client.close()


@pytest.fixture(scope="session")
def puppet_bin() -> str:
    path = shutil.which("puppet")
    if path is None:
        pytest.fail("puppet is not installed (apt-get install puppet): the tests need it")
    return path


MANIFEST = """\
file {{ '{out}':
  content => "greeting=${{lookup('greeting', undef, undef, 'none')}} \
port=${{lookup('port', undef, undef, 'none')}} \
app=${{facts['mozagent_app']}} node=${{facts['mozagent_node']}}\\n",
}}
exec {{ 'count-runs':
  command => "/bin/sh -c 'echo run >> {runs}'",
}}
"""


class Sandbox:
    """An agent with every path in a temp dir: config, manifest, state, puppet vardir."""

    def __init__(self, root: Path, hosts: str | None, zk_root: str) -> None:
        self.root = root
        self.hosts = hosts
        self.zk_root = zk_root
        self.out = root / "out.txt"
        self.runs = root / "runs.log"
        self.state = root / "state"
        self.manifest = root / "site.pp"
        self.manifest.write_text(MANIFEST.format(out=self.out, runs=self.runs))
        self.config_path = root / "mozagent.yaml"
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.write_config()

    def config(self, **overrides: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "app": "shop",
            "node": "web1",
            "state_dir": str(self.state),
            "puppet": {
                "manifests": [str(self.manifest)],
                "extra_args": ["--vardir", str(self.root / "puppetvar")],
                "timeout": 120,
            },
            "apply": {"min_wait": 0.3, "max_wait": 3.0, "retry_initial": 2, "retry_max": 4},
            "log": {"level": "debug", "format": "json"},
        }
        if self.hosts is not None:
            doc["zookeeper"] = {
                "hosts": self.hosts,
                "root": self.zk_root,
                "session_timeout": 4,
                "connect_timeout": 5,
                "retry_initial": 0.2,
                "retry_max": 1,
            }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            elif value is None:
                doc.pop(key, None)
            else:
                doc[key] = value
        return doc

    def write_config(self, **overrides: Any) -> Path:
        self.config_path.write_text(yaml.safe_dump(self.config(**overrides)))
        return self.config_path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, MOZAGENT_CONFIG=str(self.config_path))
        return subprocess.run(
            [sys.executable, "-m", "mozagent", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=self.root,
        )

    def start_daemon(self) -> subprocess.Popen[bytes]:
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "mozagent", "daemon", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        log.close()
        self.daemons.append(proc)
        wait_for(
            lambda: (
                self.status_doc() is not None
                and (self.status_doc() or {}).get("agent", {}).get("pid") == proc.pid
            ),
            what="the daemon to write its status",
        )
        return proc

    def stop_daemons(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    def status_doc(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def status(self) -> tuple[int, dict[str, Any]]:
        res = self.cli("status", "--json")
        return res.returncode, json.loads(res.stdout)

    def layer_file(self, layer: str) -> dict[str, Any]:
        path = self.state / "hieradata" / f"{layer}.yaml"
        return yaml.safe_load(path.read_text()) or {}

    def run_count(self) -> int:
        return len(text_of(self.runs).splitlines())

    def output(self) -> str:
        return text_of(self.out)

    def daemon_log(self) -> str:
        return text_of(self.root / "daemon.log")


@pytest.fixture
def sandbox(
    tmp_path: Path, zk_server: ZooKeeperServer, zk_root: str, puppet_bin: str
) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path, zk_server.hosts, zk_root)
    yield box
    box.stop_daemons()


@pytest.fixture
def fleet(
    zk_server: ZooKeeperServer,
    zk_root: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Fleet]:
    f = Fleet(zk_server, zk_root, tmp_path)
    f.capsys, f.monkeypatch = capsys, monkeypatch
    yield f
    f.close()
