"""TLS to a real ZooKeeper's secureClientPort (Netty, client certificates
required, ``X509AuthenticationProvider``), for the CLI and the agent: it
works, verified; a wrong CA, a certificate for another name and a
plain-text port each fail with words saying so; a TLS setup never falls
back to plain text, and a plain client cannot use the TLS port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import ACL, Id, Permissions, make_digest_acl

from mozagent.cli import main
from mozagent.zkauth import TLS_ENV
from mozagent_dev.pki import Pair, Pki
from mozagent_dev.testing import ZooKeeperServer
from tests.conftest import Sandbox


class Tls:
    def __init__(self, root: Path) -> None:
        self.pki = Pki(root / "pki")
        self.other = Pki(root / "other", "other-ca")  # trusted by nobody
        self.server = self.pki.issue("server", "/CN=zk", "IP:127.0.0.1,DNS:localhost")
        self.elsewhere = self.pki.issue("elsewhere", "/CN=zk2", "DNS:zk.example")
        self.web1 = self.pki.issue("web1", "/CN=web1")
        self.web2 = self.pki.issue("web2", "/CN=web2")
        self.expired = self.pki.issue("expired", "/CN=zk", "IP:127.0.0.1", days=-1)
        self.web1_expired = self.pki.issue("web1-expired", "/CN=web1", days=-1)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return Tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tls: Tls) -> Iterator[ZooKeeperServer]:
    with ZooKeeperServer(tls=(tls.server.both, tls.pki.ca)) as zk:
        admin = KazooClient(hosts=zk.hosts, timeout=10)  # the plain port, to set the scene
        admin.start(timeout=15)
        # Readable by the certificate CN=web1 only (and an admin digest).
        only_web1 = [
            ACL(Permissions.READ, Id("x509", "CN=web1")),
            make_digest_acl("admin", "pw", all=True),
        ]
        for path in ("/tls/apps/shop/data", "/tls/apps/shop/data/greeting"):
            admin.create(path, b"over tls\n" if path.endswith("greeting") else b"", makepath=True)
        for path in ("/tls/apps/shop/data", "/tls/apps/shop/data/greeting"):
            admin.set_acls(path, only_web1)
        admin.stop()
        admin.close()
        yield zk


def cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    hosts: str,
    ca: Path,
    pair: Pair | None,
) -> tuple[int, str, str]:
    monkeypatch.setenv(TLS_ENV["ca"], str(ca))
    for key, value in (("cert", pair.cert if pair else None), ("key", pair.key if pair else None)):
        if value is None:
            monkeypatch.delenv(TLS_ENV[key], raising=False)
        else:
            monkeypatch.setenv(TLS_ENV[key], str(value))
    argv = ["data", "get", "shop", "greeting", "--zookeeper", hosts, "--root", "/tls"]
    code = main([*argv, "--timeout", "4"])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_reads_over_verified_tls_as_its_certificate(
    tls: Tls,
    server: ZooKeeperServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(monkeypatch, capsys, server.tls_hosts, tls.pki.ca, tls.web1) == (0, "over tls\n", "")
    code, out, err = cli(monkeypatch, capsys, server.tls_hosts, tls.pki.ca, tls.web2)
    assert code == 1 and out == "" and "web2.pem lacks the read (r) permission" in err, err


def test_a_wrong_ca_a_wrong_name_and_a_plain_port_each_say_so(
    tls: Tls,
    server: ZooKeeperServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(monkeypatch, capsys, server.tls_hosts, tls.other.ca, tls.web1)
    assert code == 1 and out == ""
    assert "certificate was refused: unable to get local issuer certificate" in err, err
    # TLS asked for, the plain port given: no fallback to plain text.
    code, out, err = cli(monkeypatch, capsys, server.hosts, tls.pki.ca, tls.web1)
    assert code == 1 and out == "" and "no TLS there" in err, err
    with ZooKeeperServer(tls=(tls.elsewhere.both, tls.pki.ca)) as other:
        code, out, err = cli(monkeypatch, capsys, other.tls_hosts, tls.pki.ca, tls.web1)
    assert code == 1 and "certificate was refused: IP address mismatch" in err, err


def test_an_expired_certificate_on_either_side_says_so(
    tls: Tls,
    server: ZooKeeperServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with ZooKeeperServer(tls=(tls.expired.both, tls.pki.ca)) as stale:
        code, out, err = cli(monkeypatch, capsys, stale.tls_hosts, tls.pki.ca, tls.web1)
    assert code == 1 and out == ""
    assert "certificate was refused: certificate has expired" in err, err
    # Our own certificate expired: the server refuses the handshake, and the
    # command says that it did, not only that nothing answered.
    code, out, err = cli(monkeypatch, capsys, server.tls_hosts, tls.pki.ca, tls.web1_expired)
    assert code == 1 and out == ""
    assert "the server refused this client's certificate:" in err, err
    assert f"{tls.web1_expired.cert} expired on" in err, err


def test_a_plain_client_cannot_use_the_tls_port(server: ZooKeeperServer) -> None:
    plain = KazooClient(hosts=server.tls_hosts, timeout=2)
    with pytest.raises(KazooTimeoutError):
        plain.start(timeout=3)
    plain.stop()
    plain.close()


def test_a_key_others_can_read_is_refused_before_connecting(
    tls: Tls,
    server: ZooKeeperServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls.web2.key.chmod(0o644)
    try:
        code, _, err = cli(monkeypatch, capsys, server.tls_hosts, tls.pki.ca, tls.web2)
    finally:
        tls.web2.key.chmod(0o600)
    assert code == 2 and f"chmod 600 {tls.web2.key}" in err, err


def test_the_agent_renders_data_read_over_tls(
    tls: Tls, server: ZooKeeperServer, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in TLS_ENV.values():
        monkeypatch.delenv(env, raising=False)
    zookeeper = {
        **sandbox.config()["zookeeper"],
        "hosts": server.tls_hosts,
        "root": "/tls",
        "tls_ca": str(tls.pki.ca),
        "tls_cert": str(tls.web1.cert),
        "tls_key": str(tls.web1.key),
    }
    sandbox.write_config(zookeeper=zookeeper)
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sandbox.layer_file("app") == {"greeting": "over tls"}
    # The same agent told to trust another CA does not connect, and says why.
    sandbox.write_config(zookeeper={**zookeeper, "tls_ca": str(tls.other.ca)})
    res = sandbox.cli("daemon", "--once")
    assert res.returncode != 0
    _, doc = sandbox.status()
    problems = " ".join(e["message"] for e in doc["all_errors"])
    assert "certificate was refused: unable to get local issuer certificate" in problems, doc
