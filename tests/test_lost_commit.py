"""A commit whose answer is lost (ConnectionLoss in a leader election or a
partition) is neither doubled nor dropped: the CLI finds out whether it went
in before it sends it again.

The fault is forced at the one place it matters, the commit, on a real
ZooKeeper: the transaction either reaches the server and its answer is then
lost, or it is lost before it is sent. Which of the two happens in a real
election is luck; here each is made to happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss

from mozagent.cli import main
from mozagent.zkacl import PolicyTransaction
from mozagent_dev.testing import ZooKeeperServer


class LosingCommits:
    """Makes the next ``count`` commits fail with ConnectionLoss, either after
    the server applied them (``applied``) or before they were sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.plan: list[bool] = []
        self.sent = 0
        real = PolicyTransaction.commit

        def commit(txn: PolicyTransaction) -> Any:
            self.sent += 1
            if not self.plan:
                return real(txn)
            applied = self.plan.pop(0)
            if applied:
                real(txn)
            raise ConnectionLoss("the answer was lost (forced by the test)")

        monkeypatch.setattr(PolicyTransaction, "commit", commit)

    def lose(self, *applied: bool) -> None:
        self.plan = list(applied)


@pytest.fixture
def losing(monkeypatch: pytest.MonkeyPatch) -> Iterator[LosingCommits]:
    yield LosingCommits(monkeypatch)


def run(zk_server: ZooKeeperServer, root: str, *argv: str) -> int:
    try:
        return main([*argv, "--zookeeper", zk_server.hosts, "--root", root])
    except SystemExit as exc:
        return int(exc.code or 0)


def orders(zk: KazooClient, root: str) -> list[str]:
    return sorted(zk.get_children(f"{root}/apps/shop/orders"))


def audit_entries(zk: KazooClient, root: str) -> int:
    return len(zk.get_children(f"{root}/audit/apps/shop"))


@pytest.mark.parametrize("applied", [True, False], ids=["answer-lost", "request-lost"])
def test_an_order_whose_commit_answer_is_lost_exists_exactly_once(
    zk_server: ZooKeeperServer,
    zk: KazooClient,
    zk_root: str,
    losing: LosingCommits,
    capsys: pytest.CaptureFixture[str],
    applied: bool,
) -> None:
    losing.lose(applied)
    assert run(zk_server, zk_root, "order", "shop", "migrate") == 0
    out = capsys.readouterr().out
    names = orders(zk, zk_root)
    assert len(names) == 1, names
    # The name printed is the order that exists: `order status NAME` works.
    assert names[0] in out
    assert audit_entries(zk, zk_root) == 1
    assert losing.sent == (1 if applied else 2)


@pytest.mark.parametrize("applied", [True, False], ids=["answer-lost", "request-lost"])
def test_a_data_set_whose_answer_is_lost_is_written_once_and_said_so(
    zk_server: ZooKeeperServer,
    zk: KazooClient,
    zk_root: str,
    losing: LosingCommits,
    capsys: pytest.CaptureFixture[str],
    applied: bool,
) -> None:
    assert run(zk_server, zk_root, "data", "set", "shop", "greeting", "one") == 0
    path = f"{zk_root}/apps/shop/data/greeting"
    version = zk.get(path)[1].version
    losing.lose(applied)
    assert run(zk_server, zk_root, "data", "set", "shop", "greeting", "two") == 0
    assert "set greeting" in capsys.readouterr().out
    data, stat = zk.get(path)
    assert data == b"two\n"
    assert stat.version == version + 1
    assert audit_entries(zk, zk_root) == 2


def test_a_change_whose_answer_is_lost_every_time_fails_saying_it_may_be_written(
    zk_server: ZooKeeperServer,
    zk: KazooClient,
    zk_root: str,
    losing: LosingCommits,
    capsys: pytest.CaptureFixture[str],
) -> None:
    losing.lose(*[False] * 10)
    assert run(zk_server, zk_root, "order", "shop", "migrate") == 1
    err = capsys.readouterr().err
    assert "ConnectionLoss" in err or "connection" in err.lower(), err
    assert "may or may not have been made" in err, err
    assert not zk.exists(f"{zk_root}/apps/shop/orders") or orders(zk, zk_root) == []


def test_behind_a_chroot_a_lost_answer_is_still_found_and_not_sent_again(
    zk_server: ZooKeeperServer,
    zk: KazooClient,
    zk_root: str,
    losing: LosingCommits,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A chroot in the hosts string: the operations' paths carry it, the
    lookup's requests add it again; looked for in the wrong place, the order
    would be sent twice."""
    chroot = f"{zk_root}-chroot"
    zk.ensure_path(chroot)
    losing.lose(True)
    argv = ["order", "shop", "migrate", "--zookeeper", f"{zk_server.hosts}{chroot}"]
    assert main([*argv, "--root", "/moz"]) == 0
    names = zk.get_children(f"{chroot}/moz/apps/shop/orders")
    assert len(names) == 1, names
    assert names[0] in capsys.readouterr().out
    assert losing.sent == 1
