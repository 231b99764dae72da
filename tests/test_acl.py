"""Who may change what, enforced by ZooKeeper itself: the policy, ``mozagent
acl apply/check``, ACLs from birth for everything the CLI and the agent
create, refusals in words; and the role table, cell by cell, against a real
server (a client of each role trying each permission on each kind of znode)."""

from __future__ import annotations

import json
import re

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoChildrenForEphemeralsError
from kazoo.security import make_digest_acl

from mozagent.desired.acl import (
    ALL,
    PERM_LETTERS,
    TABLE,
    InvalidPolicy,
    acl_for,
    grants_of,
    parse_policy,
    refusal,
    table_text,
)
from mozagent.zkauth import Digest
from mozagent.zkclient import make_client
from tests.conftest import REPO, Sandbox
from tests.roles import ROLES, Fleet, ident, policy_doc

# --- the model, pure ---------------------------------------------------------------------------


def test_acl_for_follows_the_table_and_gives_unknown_znodes_to_admins() -> None:
    policy = parse_policy(policy_doc(), "policy.yaml")
    release = acl_for(policy, "/m", "/m/apps/shop/release")
    assert release == {
        ident("admin"): 31,
        ident("deployer"): 3,
        ident("operator"): 1,
        ident("agent"): 1,
    }
    assert ident("other") not in release  # blog's operator
    assert acl_for(policy, "/m", "/m/apps/shop/zkcli-junk") == {ident("admin"): 31}
    assert acl_for(policy, "/m", "/m/apps/nosuchapp/release") == {ident("admin"): 31}
    # "all" is every identity the policy names, other apps' too: the global layer.
    assert set(acl_for(policy, "/m", "/m/global/data/ntp")) == {ident(r) for r in ROLES}


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"apps": {}}, "admins is empty"),
        ({"admins": ["digest:root"]}, "is not an identity"),
        ({"admins": [ident("a")], "apps": {"shop": {"deployer": []}}}, "unknown role 'deployer'"),
        ({"admins": [ident("a")], "apps": {"sh/op": {}}}, "app name 'sh/op' is invalid"),
        ({"admins": [ident("a")], "users": []}, "unknown key 'users'"),
        ({"admins": [ident("a")], "schema": 9}, "newer mozagent"),
        ({"admins": "digest:x"}, "is not a list"),
    ],
)
def test_a_policy_that_cannot_be_meant_is_refused_saying_why(doc: object, why: str) -> None:
    with pytest.raises(InvalidPolicy, match=re.escape(why)):
        parse_policy(doc, "policy.yaml")


def test_refusals_name_the_request_the_znode_the_permission_and_who() -> None:
    assert refusal("create", "/m/apps/shop/release", "digest user 'bob'") == (
        "ZooKeeper refused to create /m/apps/shop/release: digest user 'bob' lacks the "
        "create (c) permission on /m/apps/shop"
    )
    assert "lacks the write (w) permission on /m/x" in refusal("set", "/m/x", "u")


def test_the_readme_shows_the_table_the_code_enforces() -> None:
    readme = (REPO / "README.rst").read_text()
    shown_there = "".join(f"   {line}" for line in table_text().splitlines(True))
    assert shown_there in readme


# --- on a real server --------------------------------------------------------------------------


def populate(fleet: Fleet) -> None:
    """Before any policy, the open tree: one znode of every kind in the table
    that no command of the policy's makes (``acl apply`` makes the rest)."""
    zk = fleet.client(None)
    r = fleet.root
    paths = {
        "apps/{app}/release": f"{r}/apps/shop/release",
        "apps/{app}/data/{key}": f"{r}/apps/shop/data/greeting",
        "apps/{app}/secrets/{key}": f"{r}/apps/shop/secrets/greeting",
        "apps/{app}/canaries/{node}": f"{r}/apps/shop/canaries/web1",
        "apps/{app}/nodes/{node}/data/{key}": f"{r}/apps/shop/nodes/web1/data/greeting",
        "apps/{app}/orders/{order}/results/{node}": (
            f"{r}/apps/shop/orders/order-0000000000/results/web1"
        ),
        "global/data/{key}": f"{r}/global/data/greeting",
        "audit/global/{entry}": f"{r}/audit/global/entry-0000000000",
        "audit/apps/{app}/{entry}": f"{r}/audit/apps/shop/entry-0000000000",
    }
    for path in paths.values():
        zk.create(path, b"x", makepath=True)


NAMES = {
    "{app}": "shop",
    "{node}": "web1",
    "{key}": "greeting",
    "{order}": "order-0000000000",
    "{entry}": "entry-0000000000",
}


def concrete(pattern: str, root: str) -> str:
    """The row's znode in the tree ``populate`` and ``acl apply`` made."""
    parts = [NAMES.get(p, p) for p in pattern.split("/")] if pattern else []
    return "/".join([root, *parts])


def attempt(client: KazooClient, admin: KazooClient, path: str, letter: str) -> bool:
    """Whether ``client`` may do ``letter`` on ``path``: each tried for real."""
    try:
        if letter == "r":
            client.get(path)
        elif letter == "w":
            client.set(path, b"x")
        elif letter == "c":
            client.create(f"{path}/probe-c")
            admin.delete(f"{path}/probe-c")
        elif letter == "d":
            try:
                admin.create(f"{path}/probe-d")
            except NoChildrenForEphemeralsError:
                return admin is client  # an ephemeral has no children to delete
            try:
                client.delete(f"{path}/probe-d")
            finally:
                if admin.exists(f"{path}/probe-d"):
                    admin.delete(f"{path}/probe-d")
        elif letter == "a":
            client.set_acls(path, admin.get_acls(path)[0])
    except NoAuthError:
        return False
    except NoChildrenForEphemeralsError:
        return True  # past the ACL check: only ephemerals have no children
    return True


def test_each_role_can_do_exactly_its_cells_of_the_table(fleet: Fleet) -> None:
    populate(fleet)
    host = f"{fleet.root}/apps/shop/hosts/web1"
    # The agent identity is web1's own: the claims rows have a host to test.
    doc = json.loads(fleet.policy_file.read_text())
    doc["apps"]["shop"]["agents"] = {"web1": ident("agent")}
    fleet.policy_file.write_text(json.dumps(doc))
    fleet.apply()

    # As the agent makes it: its client gives it the policy's ACL from birth.
    agent = make_client(fleet.server.hosts, identity=Digest("agent", "agent-pw"), root=fleet.root)
    agent.start(timeout=15)
    agent.load_policy()
    agent.create(host, b"{}", ephemeral=True)
    admin = fleet.client("admin")
    wrong = []
    for pattern, grants, _ in TABLE:
        path = concrete(pattern, fleet.root)
        assert admin.exists(path), f"the test made no znode for the row {pattern!r}"
        allowed = {"admin": ALL}
        for who, perms in grants_of(grants):
            # "all": every identity in the policy, blog's operator ("other") too.
            # "own": the identity of the node in the path, here the agent's.
            named = {"all": ("deployer", "operator", "agent", "other"), "own": ("agent",)}
            for role in named.get(who, (who[:-1],)):
                allowed[role] = allowed.get(role, 0) | perms
        for role in (*ROLES, None):
            client = fleet.client(role)
            for letter, bit in PERM_LETTERS:
                may = attempt(client, admin, path, letter)
                want = bool(allowed.get(role or "anonymous", 0) & bit)
                if may != want:
                    wrong.append(f"{role or 'anonymous'} {letter} {path}: {may}, table {want}")
    agent.stop()
    agent.close()
    assert not wrong, "\n".join(wrong)


def test_apply_is_idempotent_and_check_finds_what_zkcli_made(fleet: Fleet) -> None:
    populate(fleet)
    policy = str(fleet.policy_file)
    code, out, err = fleet.cli("admin", "acl", "apply", policy)
    assert code == 0, err
    assert f"stored the policy at {fleet.root}/acl" in out
    assert f"created {fleet.root}/apps/shop/hosts" in out
    code, out, err = fleet.cli("admin", "acl", "apply", policy)
    assert code == 0 and out.startswith("changed 0 ACLs, 0 znodes created"), out + err
    code, out, err = fleet.cli("admin", "acl", "check")
    assert code == 0 and "carry the policy's ACL" in out, out + err
    # zkCli (any open client the tree still lets in: here the admin) makes one
    # world-readable znode: check lists it, exit 1; apply fixes it.
    fleet.client("admin").create(f"{fleet.root}/apps/shop/data/leak", b"pw")
    from kazoo.security import OPEN_ACL_UNSAFE

    fleet.client("admin").set_acls(f"{fleet.root}/apps/shop/data/leak", OPEN_ACL_UNSAFE)
    code, out, err = fleet.cli("operator", "acl", "check")
    assert code == 1, out + err
    assert f"{fleet.root}/apps/shop/data/leak: has world:anyone:rwcda; the policy says" in out
    assert "1 of " in out
    code, out, err = fleet.cli("admin", "acl", "apply", policy)
    assert code == 0 and "changed 1 ACLs" in out
    code, out, err = fleet.cli("admin", "acl", "check", policy)
    assert code == 0, out + err


def test_apply_refuses_a_policy_that_would_lock_its_applier_out(fleet: Fleet) -> None:
    code, _, err = fleet.cli("operator", "acl", "apply", str(fleet.policy_file))
    assert code == 2 and "do not include digest user 'operator'" in err
    code, _, err = fleet.cli(None, "acl", "apply", str(fleet.policy_file))
    assert code == 2 and "needs an admin identity" in err
    assert fleet.client(None).exists(f"{fleet.root}/acl") is None


def test_the_cli_creates_with_the_policy_acl_and_says_what_a_role_may_not(fleet: Fleet) -> None:
    fleet.apply()
    run = fleet.cli
    assert run("operator", "data", "set", "shop", "greeting", "hi")[0] == 0
    assert run("deployer", "deploy", "shop", "v1", "--source", "/srv/git/shop")[0] == 0
    assert run("operator", "data", "set", "shop", "greeting", "hi", "--node", "web1")[0] == 0
    code, _, err = run("operator", "deploy", "shop", "v2", "--source", "/srv/git/evil")
    assert code == 1
    assert (
        f"ZooKeeper refused to set {fleet.root}/apps/shop/release: digest user 'operator' "
        f"lacks the write (w) permission on {fleet.root}/apps/shop/release; nothing written"
    ) in err
    code, _, err = run("deployer", "data", "set", "shop", "greeting", "evil")
    assert code == 1 and f"write (w) permission on {fleet.root}/apps/shop/data/greeting;" in err
    code, _, err = run("deployer", "deploy", "shop", "v1", "--node", "web2")
    assert code == 0, err  # a canary: the deployer's
    code, _, err = run("agent", "order", "shop", "migrate")
    assert code == 1 and f"lacks the create (c) permission on {fleet.root}/apps/shop/orders" in err
    code, out, err = run(None, "data", "get", "shop", "greeting")
    assert code == 1 and "hi" not in out
    assert "a client with no identity" in err and "is in none of its roles" in err
    code, out, _ = run("agent", "data", "get", "shop", "greeting")
    assert (code, out) == (0, "hi\n")
    # Everything they made carries the policy's ACL from birth.
    code, out, err = run("admin", "acl", "check")
    assert code == 0, out + err
    admin = fleet.client("admin")
    acl, _ = admin.get_acls(f"{fleet.root}/apps/shop/canaries/web2")
    assert {f"{a.id.scheme}:{a.id.id}" for a in acl} == {
        ident("admin"),
        ident("deployer"),
        ident("operator"),
        ident("agent"),
    }


def test_the_agent_writes_its_presence_with_the_policy_acl_and_says_when_refused(
    fleet: Fleet, sandbox: Sandbox
) -> None:
    fleet.apply()
    assert fleet.cli("operator", "data", "set", "shop", "greeting", "from policy")[0] == 0
    zookeeper = fleet.as_agent(sandbox, "agent")
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sandbox.layer_file("app") == {"greeting": "from policy"}
    code, out, err = fleet.cli("admin", "acl", "check")
    assert code == 0, out + err
    # With blog's identity the agent of shop reads nothing and writes nothing:
    # status says which znode and which permission.
    sandbox.write_config(zookeeper={**zookeeper, "credentials_file": str(fleet.cred("other"))})
    res = sandbox.cli("daemon", "--once")
    status = json.loads(sandbox.cli("status", "--json").stdout)
    text = json.dumps(status)
    assert "lacks the read (r) permission" in text, text
    assert fleet.client("admin").exists(f"{fleet.root}/apps/shop/hosts/web1") is None


def test_a_stored_policy_that_cannot_be_used_stops_writes(fleet: Fleet) -> None:
    fleet.apply()
    fleet.client("admin").set(f"{fleet.root}/acl", b"{not json")
    code, _, err = fleet.cli("operator", "data", "set", "shop", "k", "v")
    assert code == 1 and "the ACL policy in ZooKeeper cannot be used" in err and "not JSON" in err
    assert fleet.client("admin").exists(f"{fleet.root}/apps/shop/data/k") is None


def test_policy_round_trips_through_its_document() -> None:
    policy = parse_policy(policy_doc(), "p")
    assert parse_policy(policy.to_doc(), "stored") == policy


def test_apply_replaces_a_damaged_policy_and_goes_past_what_it_cannot_fix(fleet: Fleet) -> None:
    fleet.apply()
    admin = fleet.client("admin")
    admin.set(f"{fleet.root}/acl", b"")  # half-written: every command refuses to write
    code, _, err = fleet.cli("operator", "data", "set", "shop", "greeting", "hi")
    assert code == 1 and "cannot be used" in err
    # A znode an operator planted with an ACL that leaves the admins out.
    planted = f"{fleet.root}/apps/shop/nodes/web9"
    fleet.client("operator").create(
        planted, b"", acl=[make_digest_acl("operator", "operator-pw", all=True)]
    )
    code, out, err = fleet.cli("admin", "acl", "apply", str(fleet.policy_file))
    assert code == 1, out + err
    assert "the stored policy cannot be used" in out and "stored the policy" in out
    assert f"could not set {planted}:" in out and "superuser" in out
    assert fleet.cli("operator", "data", "set", "shop", "greeting", "hi")[0] == 0
    code, out, _ = fleet.cli("admin", "acl", "check")
    assert code == 1 and "1 znodes not checked" in out, out
    code, out, _ = fleet.cli("admin", "audit", "--json")
    assert [e["action"] for e in json.loads(out)] == ["acl.apply", "acl.apply"]
