"""``group: zookeeper`` deployments: a Heat deployment's inputs written into
an app's data layer by the agent that gets it, as the operator CLI writes
(same rules and bounds, the policy's ACLs, an audit entry in the same
transaction). The rules are pure (``desired/heatdata``); the writes run
against a real ZooKeeper under the role policy of tests/roles.py, through the
applier the daemon uses. The real-Heat stack is in test_realheat.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss

from mozagent.apply.zkdata import ZooKeeperDataApplier
from mozagent.desired.deployments import Deployment, SignalTarget
from mozagent.desired.heatdata import HeatDataError, data_of, digest, parse_target, plan
from mozagent.zkacl import PolicyTransaction
from mozagent.zkauth import Digest
from mozagent.zkclient import make_client
from tests.roles import Fleet

# --- the rules -------------------------------------------------------------------------------


def test_the_config_names_a_layer() -> None:
    assert parse_target("{app: shop, layer: app}", "/m").path == "/m/apps/shop/data"
    assert parse_target({"app": "shop"}, "/m").label == "app shop"
    node = parse_target('{"app": "shop", "node": "web1"}', "/m")
    assert (node.layer, node.path) == ("node", "/m/apps/shop/nodes/web1/data")
    assert parse_target("layer: global", "/m").path == "/m/global/data"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("", "must name a layer"),
        ("[shop]", "must name a layer"),
        ("{app: shop, layer: secrets}", "layer must be one of global, app, node"),
        ("{app: ../x}", "config: app"),
        ("{layer: app}", "needs the config's app"),
        ("{app: shop, layer: global}", "takes no app or node"),
        ("{app: shop, colour: blue}", "unknown config field colour"),
        ("{app: shop, node: web1, layer: app}", "a node goes with layer: node"),
        ("a: &x [*x]", "not YAML"),
    ],
)
def test_a_config_that_names_no_usable_layer_says_what_is_wrong(config: str, words: str) -> None:
    with pytest.raises(HeatDataError, match=words.replace("(", r"\(")):
        parse_target(config, "/m")


def test_inputs_are_data_but_heats_own_are_not() -> None:
    inputs = {"db_host": "db1", "workers": 4, "deploy_server_id": "x", "deploy_action": "CREATE"}
    assert data_of(inputs) == {"db_host": b"db1\n", "workers": b"4\n"}
    with pytest.raises(HeatDataError, match="input 'DB Host'"):
        data_of({"DB Host": 1})
    with pytest.raises(HeatDataError, match="over the 1 MiB limit"):
        data_of({"blob": "x" * (1024 * 1024 + 1)})
    with pytest.raises(HeatDataError, match="over the 1000 keys"):
        data_of({f"k{i}": i for i in range(1001)})


def test_the_plan_writes_what_changed_and_removes_only_what_it_wrote() -> None:
    current = {"a": (b"1\n", 3), "b": (b"old\n", 1), "mine": (b"x\n", 0), "theirs": (b"y\n", 2)}
    wanted = {"a": b"1\n", "b": b"new\n", "c": b"3\n"}
    owned = {"mine": digest(b"x\n"), "theirs": digest(b"what I wrote\n")}
    p = plan(current, wanted, owned)
    assert (p.creates, p.sets, p.deletes) == ({"c": b"3\n"}, {"b": (b"new\n", 1)}, {"mine": 0})
    assert (p.unchanged, p.kept) == (["a"], ["theirs"])
    assert "left theirs: changed in ZooKeeper since" in p.summary("app shop")
    assert plan(current, {"a": b"1"}, {}).empty  # the same value, spelt otherwise


# --- against a real ZooKeeper -------------------------------------------------------------------


def dep(inputs: dict[str, Any], action: str = "CREATE", config: Any = None) -> Deployment:
    return Deployment(
        id="d-1",
        name="shop_data",
        group="zookeeper",
        config=config if config is not None else {"app": "shop", "layer": "app"},
        action=action,
        inputs={**inputs, "deploy_server_id": "srv", "deploy_action": action},
        outputs=({"name": "data_version"},),
        options={},
        target=SignalTarget("NO_SIGNAL"),
    )


class Writer:
    """The applier on a session as ``role``, as the daemon wires it."""

    def __init__(self, fleet: Fleet, role: str, state: Path) -> None:
        self.fleet = fleet
        self.client = make_client(
            fleet.server.hosts, identity=Digest(role, f"{role}-pw"), root=fleet.root
        )
        self.client.start(timeout=15)
        self.applier = ZooKeeperDataApplier(str(state), lambda: self.client, fleet.root, 10.0)

    def run(self, d: Deployment) -> Any:
        return self.applier.run(d, "/nonexistent/outputs")

    def close(self) -> None:
        self.client.stop()
        self.client.close()


@pytest.fixture
def writers(fleet: Fleet, tmp_path: Path) -> Iterator[dict[str, Writer]]:
    fleet.apply()
    made = {role: Writer(fleet, role, tmp_path / role) for role in ("operator", "agent")}
    yield made
    for w in made.values():
        w.close()


def layer(zk: KazooClient, fleet: Fleet) -> dict[str, bytes]:
    path = f"{fleet.root}/apps/shop/data"
    return {n: zk.get(f"{path}/{n}")[0] for n in zk.get_children(path)}


def entries(zk: KazooClient, fleet: Fleet) -> list[dict[str, Any]]:
    path = f"{fleet.root}/audit/apps/shop"
    return [json.loads(zk.get(f"{path}/{n}")[0]) for n in sorted(zk.get_children(path))]


def test_a_deployment_writes_its_inputs_once_and_its_delete_removes_them(
    fleet: Fleet, writers: dict[str, Writer]
) -> None:
    admin = fleet.client("admin")
    code, _, err = fleet.cli("operator", "data", "set", "shop", "theme", "dark")
    assert code == 0, err
    w = writers["operator"]
    res = w.run(dep({"db_host": "db1", "workers": 4}))
    assert res.status_code == 0, res.stderr
    assert "created db_host, workers" in res.stdout
    assert layer(admin, fleet) == {"db_host": b"db1\n", "workers": b"4\n", "theme": b"dark\n"}
    version = res.outputs["data_version"]
    assert version == max(
        admin.exists(f"{fleet.root}/apps/shop/data/{k}").mzxid
        for k in ["db_host", "workers", "theme"]
    )
    trail = entries(admin, fleet)
    assert trail[-1]["action"] == "heat.data" and trail[-1]["who"] == "digest:operator"
    assert trail[-1]["reason"] == "heat deployment shop_data (d-1) CREATE"
    # The same inputs again (Heat re-sends on a stack update): nothing written.
    again = w.run(dep({"db_host": "db1", "workers": 4}, "UPDATE"))
    assert again.status_code == 0 and "nothing to write" in again.stdout
    assert again.outputs["data_version"] == version and len(entries(admin, fleet)) == len(trail)
    # An update that drops a key removes it; one an operator changed since stays.
    code, _, err = fleet.cli("operator", "data", "set", "shop", "workers", "8")
    assert code == 0, err
    upd = w.run(dep({"db_host": "db2"}, "UPDATE"))
    assert upd.status_code == 0, upd.stderr
    assert layer(admin, fleet) == {"db_host": b"db2\n", "workers": b"8\n", "theme": b"dark\n"}
    assert "left workers: changed in ZooKeeper since" in upd.stdout
    gone = w.run(dep({"db_host": "db2"}, "DELETE"))
    assert gone.status_code == 0, gone.stderr
    assert layer(admin, fleet) == {"workers": b"8\n", "theme": b"dark\n"}
    assert entries(admin, fleet)[-1]["action"] == "heat.data.delete"


def test_an_identity_the_policy_does_not_let_write_fails_the_deployment_clearly(
    fleet: Fleet, writers: dict[str, Writer]
) -> None:
    res = writers["agent"].run(dep({"db_host": "db1"}))
    assert res.status_code == 1
    assert "refused" in res.stderr and "digest:agent" in res.stderr, res.stderr
    assert f"write {fleet.root}/apps/shop/data; nothing written" in res.stderr
    assert not fleet.client("admin").exists(f"{fleet.root}/apps/shop/data/db_host")


def test_bad_inputs_fail_the_deployment_naming_the_input(
    fleet: Fleet, writers: dict[str, Writer]
) -> None:
    res = writers["operator"].run(dep({"Bad Key": 1, "fine": 2}))
    assert res.status_code == 1 and "input 'Bad Key'" in res.stderr
    assert "nothing written" in res.stderr
    assert not fleet.client("admin").exists(f"{fleet.root}/apps/shop/data/fine")


def test_a_commit_whose_answer_is_lost_is_written_once(
    fleet: Fleet, writers: dict[str, Writer], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = PolicyTransaction.commit_async
    lost: list[int] = []

    def commit_async(txn: PolicyTransaction) -> Any:
        if not lost:
            lost.append(1)
            real(txn).get(timeout=10)  # applied by the server; its answer never arrives
            out = txn.client.handler.async_result()
            out.set_exception(ConnectionLoss("forced by the test"))
            return out
        return real(txn)

    monkeypatch.setattr(PolicyTransaction, "commit_async", commit_async)
    admin = fleet.client("admin")
    res = writers["operator"].run(dep({"db_host": "db1"}))
    assert lost and res.status_code == 0, res.stderr
    assert layer(admin, fleet) == {"db_host": b"db1\n"}
    assert [e["action"] for e in entries(admin, fleet)].count("heat.data") == 1
    assert res.outputs["data_version"] == admin.exists(f"{fleet.root}/apps/shop/data/db_host").mzxid
