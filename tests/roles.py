"""A ZooKeeper root under a role policy, and a client of each role: the
fixture of the ACL and audit tests (``fleet`` in conftest)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from mozagent.cli import main
from mozagent.desired.acl import digest_id
from mozagent.zkauth import CREDENTIALS_ENV
from mozagent_dev.testing import ZooKeeperServer

ROLES = ("admin", "deployer", "operator", "agent", "other")


def ident(user: str) -> str:
    return digest_id(user, f"{user}-pw")


def policy_doc() -> dict[str, object]:
    return {
        "admins": [ident("admin")],
        "apps": {
            "shop": {
                "deployers": [ident("deployer")],
                "operators": [ident("operator")],
                "agents": [ident("agent")],
            },
            # Another app's roles must get nothing of shop's.
            "blog": {"operators": [ident("other")]},
        },
    }


class Fleet:
    """One ZooKeeper root with a policy applied, and a client per role."""

    def __init__(self, server: ZooKeeperServer, root: str, tmp: Path) -> None:
        self.server, self.root, self.tmp = server, root, tmp
        self.clients: dict[str, KazooClient] = {}
        self.capsys: pytest.CaptureFixture[str]
        self.monkeypatch: pytest.MonkeyPatch
        self.policy_file = tmp / "policy.yaml"
        self.policy_file.write_text(json.dumps(policy_doc()))

    def cred(self, role: str) -> Path:
        path = self.tmp / f"{role}.cred"
        path.write_text(f"{role}:{role}-pw\n")
        path.chmod(0o600)
        return path

    def client(self, role: str | None) -> KazooClient:
        key = role or "anonymous"
        if key not in self.clients:
            auth = [("digest", f"{role}:{role}-pw")] if role else None
            c = KazooClient(hosts=self.server.hosts, timeout=10, auth_data=auth)
            c.start(timeout=15)
            self.clients[key] = c
        return self.clients[key]

    def cli(self, role: str | None, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        """``mozagent ARGV`` as ``role`` (None: no identity): exit code, stdout, stderr."""
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        if role:
            self.monkeypatch.setenv(CREDENTIALS_ENV, str(self.cred(role)))
        else:
            self.monkeypatch.delenv(CREDENTIALS_ENV, raising=False)
        self.capsys.readouterr()
        try:
            code = main([*argv, "--zookeeper", self.server.hosts, "--root", self.root])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def apply(self) -> None:
        code, out, err = self.cli("admin", "acl", "apply", str(self.policy_file))
        assert code == 0, out + err

    def as_agent(self, sandbox: Any, role: str) -> dict[str, Any]:
        """The sandbox's agent configured on this root with ``role``'s identity;
        returns its zookeeper section."""
        sandbox.zk_root = self.root
        zookeeper = {
            **sandbox.config()["zookeeper"],
            "root": self.root,
            "credentials_file": str(self.cred(role)),
        }
        sandbox.write_config(zookeeper=zookeeper)
        return zookeeper

    def close(self) -> None:
        for c in self.clients.values():
            c.stop()
            c.close()
