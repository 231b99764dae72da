"""ZooKeeper identities: the credentials file's checks, and digest auth
against the real ZooKeeper for the agent (``daemon --once``) and the CLI
(``data get``), on a tree only those identities may read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl

from mozagent.cli import main
from mozagent.config import ConfigError
from mozagent.zkauth import CREDENTIALS_ENV, CredentialsError, parse_credentials, read_credentials
from mozagent_dev.testing import ZooKeeperServer
from tests.conftest import Sandbox

PASSWORD = "s3cr3t-pw-7f1c"


def credentials(path: Path, text: str = f"agent:{PASSWORD}\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_good_file_gives_the_identity_and_hides_the_password(tmp_path: Path) -> None:
    digest = read_credentials(str(credentials(tmp_path / "zk.cred")))
    assert (digest.user, digest.password) == ("agent", PASSWORD)
    assert PASSWORD not in repr(digest)
    assert digest.auth_data() == [("digest", f"agent:{PASSWORD}")]
    assert issubclass(CredentialsError, ConfigError)  # the agent does not start; exit 2


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("agent\n", "must be user:password"),
        (":pw\n", "must be user:password"),
        ("agent:\n", "must be user:password"),
        ("agent:pw\nother:pw\n", "one line"),
        ("ag ent:pw", "white space"),
    ],
)
def test_what_is_not_one_user_password_line_is_refused(text: str, why: str) -> None:
    with pytest.raises(CredentialsError, match=why):
        parse_credentials(text, "/etc/mozagent/zk.cred")


def test_a_file_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = credentials(tmp_path / "zk.cred", mode=0o644)
    with pytest.raises(CredentialsError, match=f"mode 0644 .* chmod 600 {path}"):
        read_credentials(str(path))
    credentials(path, mode=0o620)
    with pytest.raises(CredentialsError, match="mode 0620"):
        read_credentials(str(path))


def test_links_other_files_and_other_owners_are_refused(tmp_path: Path) -> None:
    real = credentials(tmp_path / "real.cred")
    link = tmp_path / "link.cred"
    link.symlink_to(real)
    with pytest.raises(CredentialsError, match="symbolic link"):
        read_credentials(str(link))
    fifo = tmp_path / "fifo.cred"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(CredentialsError, match="not a regular file"):
        read_credentials(str(fifo))  # and the open did not block
    with pytest.raises(CredentialsError, match="no such credentials file"):
        read_credentials(str(tmp_path / "missing"))
    big = credentials(tmp_path / "big.cred", "agent:" + "x" * 5000)
    with pytest.raises(CredentialsError, match="over 4096 bytes"):
        read_credentials(str(big))
    if os.geteuid() == 0:
        os.chown(real, 65534, 65534)
        with pytest.raises(CredentialsError, match="owned by uid 65534"):
            read_credentials(str(real))


@pytest.fixture
def protected(zk: KazooClient, zk_root: str) -> str:
    """App data that only the digest identities 'agent' (read) and 'admin'
    (everything) may touch: anyone else gets nothing, not even a read."""
    admin = make_digest_acl("admin", "admin-pw", all=True)
    agent = make_digest_acl("agent", PASSWORD, read=True)
    path = f"{zk_root}/apps/shop/data/greeting"
    zk.create(path, b"hello from acl\n", makepath=True)
    for node in (path, f"{zk_root}/apps/shop/data"):
        zk.set_acls(node, [admin, agent])
    return path


def test_the_cli_reads_what_its_identity_may_and_nothing_without_one(
    protected: str,
    zk_server: ZooKeeperServer,
    zk_root: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["data", "get", "shop", "greeting", "--zookeeper", zk_server.hosts, "--root", zk_root]
    monkeypatch.delenv(CREDENTIALS_ENV, raising=False)
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "hello from acl" not in out
    assert f"ZooKeeper refused to read {protected}: a client with no identity lacks" in err
    assert f"the read (r) permission on {protected}" in err
    assert "(name one with $MOZAGENT_ZOOKEEPER_CREDENTIALS)" in err
    monkeypatch.setenv(CREDENTIALS_ENV, str(credentials(tmp_path / "cli.cred")))
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "hello from acl\n" and PASSWORD not in out + err
    credentials(tmp_path / "cli.cred", mode=0o640)
    assert main(argv) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_the_agent_renders_data_only_its_identity_may_read(
    protected: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    cred = credentials(tmp_path / "agent.cred")
    zookeeper = {**sandbox.config()["zookeeper"], "credentials_file": str(cred)}
    sandbox.write_config(zookeeper=zookeeper)
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sandbox.layer_file("app") == {"greeting": "hello from acl"}
    assert sandbox.output().startswith("greeting=hello from acl ")
    written = "".join(
        p.read_text(errors="replace") for p in sandbox.state.rglob("*") if p.is_file()
    )
    assert PASSWORD not in written + res.stdout + res.stderr
    cred.chmod(0o644)  # a file others can read: the agent refuses to start
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 2 and "chmod 600" in res.stderr, res.stderr
