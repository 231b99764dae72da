"""The audit trail: every deploy, canary, order and data change says who,
when, what and why, in the same transaction as the change; secrets are never
recorded; a policy can require a reason; only admins can remove entries."""

from __future__ import annotations

import json
import time

import pytest
from kazoo.exceptions import NoAuthError
from kazoo.security import make_digest_acl

from mozagent.desired.audit import MASK, AuditEntry, Change, check_reason, parse_since
from mozagent.desired.keys import InvalidValue
from tests.roles import Fleet


def entries(fleet: Fleet, app: str = "shop") -> list[dict[str, object]]:
    code, out, err = fleet.cli("operator", "audit", app, "--json")
    assert code == 0, err
    return json.loads(out)


def test_every_change_is_recorded_with_who_what_and_why(fleet: Fleet) -> None:
    fleet.apply()
    run = fleet.cli
    assert run("operator", "data", "set", "shop", "greeting", "hi", "--reason", "launch")[0] == 0
    assert run("operator", "data", "set", "shop", "greeting", "hello")[0] == 0
    assert run("operator", "data", "set", "shop", "port", "80", "--node", "web1")[0] == 0
    assert run("operator", "data", "delete", "shop", "port", "--node", "web1")[0] == 0
    assert (
        run("deployer", "deploy", "shop", "v1", "--source", "/srv/git/shop", "--reason", "CHG-42")[
            0
        ]
        == 0
    )
    assert run("deployer", "deploy", "shop", "v0", "--node", "web2")[0] == 0
    assert run("operator", "order", "shop", "migrate", "--reason", "schema 7")[0] == 0
    got = entries(fleet)
    summary = [(e["action"], e["who"], e["node"], e["changes"], e["reason"]) for e in got]
    assert summary == [
        (
            "data.set",
            "digest:operator",
            None,
            [{"what": "greeting", "before": None, "after": "hi"}],
            "launch",
        ),
        (
            "data.set",
            "digest:operator",
            None,
            [{"what": "greeting", "before": "hi", "after": "hello"}],
            "",
        ),
        (
            "data.set",
            "digest:operator",
            "web1",
            [{"what": "port", "before": None, "after": "80"}],
            "",
        ),
        (
            "data.delete",
            "digest:operator",
            "web1",
            [{"what": "port", "before": "80", "after": None}],
            "",
        ),
        (
            "deploy",
            "digest:deployer",
            None,
            [{"what": "release", "before": None, "after": "v1 from /srv/git/shop"}],
            "CHG-42",
        ),
        (
            "canary",
            "digest:deployer",
            "web2",
            [{"what": "release", "before": None, "after": "v0 from /srv/git/shop"}],
            "",
        ),
        (
            "order",
            "digest:operator",
            None,
            [{"what": "order", "before": None, "after": "migrate on every host"}],
            "schema 7",
        ),
    ]
    assert all("@" in str(e["user"]) and abs(float(e["at"]) - time.time()) < 120 for e in got)
    # The order records whose change it is, for the agent's log.
    zk = fleet.client("admin")
    orders = zk.get_children(f"{fleet.root}/apps/shop/orders")
    order = json.loads(zk.get(f"{fleet.root}/apps/shop/orders/{orders[0]}")[0])
    assert order["by"].startswith("digest:operator ") and "@" in order["by"]
    _, out, _ = fleet.cli("deployer", "audit", "shop")
    lines = out.splitlines()
    assert len(lines) == 7
    assert "digest:deployer" in lines[4] and "deploy shop: release: (none) -> v1 from" in lines[4]
    assert lines[4].endswith("-- CHG-42")
    _, out, _ = fleet.cli("deployer", "audit", "shop", "--since", "1h")
    assert len(out.splitlines()) == 7
    _, out, _ = fleet.cli("deployer", "audit", "shop", "--since", "2099-01-01")
    assert out == "no audit entries\n"


def test_secret_values_are_never_recorded(fleet: Fleet) -> None:
    fleet.apply()
    value = "hunter2-do-not-log"
    assert fleet.cli("operator", "data", "set", "shop", "db_password", value)[0] == 0
    imported = fleet.tmp / "layer.yaml"
    imported.write_text(f"api_token: {value}x\ngreeting: hi\n")
    code, out, err = fleet.cli("operator", "data", "import", "shop", str(imported))
    assert code == 0, out + err
    got = entries(fleet)
    assert got[0]["changes"] == [{"what": "db_password", "before": None, "after": MASK}]
    assert {c["what"]: c["after"] for c in got[1]["changes"]} == {  # type: ignore[union-attr]
        "api_token": MASK,
        "db_password": None,
        "greeting": "hi",
    }
    _code, out, err = fleet.cli("operator", "audit", "shop")
    assert value not in json.dumps(got) + out + err


def test_the_entry_and_the_change_go_in_together_or_not_at_all(fleet: Fleet) -> None:
    """The fault forced: the operator may change the data but not write the
    audit trail (its ACL narrowed by hand). The change must not happen alone."""
    fleet.apply()
    admin = fleet.client("admin")
    trail = f"{fleet.root}/audit/apps/shop"
    admin.set_acls(trail, [make_digest_acl("admin", "admin-pw", all=True)])
    code, _, err = fleet.cli("operator", "data", "set", "shop", "greeting", "hi")
    assert code == 1
    assert f"refused to create {trail}/entry-" in err and "nothing written" in err
    assert admin.exists(f"{fleet.root}/apps/shop/data/greeting") is None
    code, _, err = fleet.cli("deployer", "deploy", "shop", "v1", "--source", "/srv/git/shop")
    assert code == 1 and admin.exists(f"{fleet.root}/apps/shop/release") is None
    code, _, err = fleet.cli("operator", "order", "shop", "migrate")
    assert code == 1 and admin.get_children(f"{fleet.root}/apps/shop/orders") == []
    assert admin.get_children(trail) == []


def test_only_admins_remove_entries_and_a_policy_can_require_a_reason(fleet: Fleet) -> None:
    doc = json.loads(fleet.policy_file.read_text())
    fleet.policy_file.write_text(json.dumps({**doc, "require_reason": True}))
    fleet.apply()
    code, _, err = fleet.cli("operator", "data", "set", "shop", "greeting", "hi")
    assert code == 2 and "requires a reason for every change: add --reason" in err
    assert fleet.client("admin").exists(f"{fleet.root}/apps/shop/data/greeting") is None
    code, _, err = fleet.cli("operator", "data", "set", "shop", "greeting", "hi", "--reason", "x")
    assert code == 0, err
    assert fleet.cli("operator", "data", "get", "shop", "greeting")[:2] == (0, "hi\n")
    trail = f"{fleet.root}/audit/apps/shop"
    name = fleet.client("admin").get_children(trail)[0]
    for role in ("operator", "deployer", "agent"):
        with pytest.raises(NoAuthError):
            fleet.client(role).delete(f"{trail}/{name}")
        with pytest.raises(NoAuthError):
            fleet.client(role).set(f"{trail}/{name}", b"{}")
    fleet.client("admin").delete(f"{trail}/{name}")


def test_entries_are_read_as_reports_and_shown_cleaned() -> None:
    doc = AuditEntry(
        "deploy",
        "shop",
        "/m/apps/shop/release",
        "digest:bob",
        "bob@lap",
        0.0,
        "why\x1b[31m",
        changes=(Change("release", None, "v1"),),
    ).to_doc()
    entry = AuditEntry.parse({**doc, "from_the_future": 1, "schema": 7}, "entry-1")
    assert "\x1b" not in entry.line()
    assert entry.line().startswith("1970-01-01T00:00:00Z digest:bob (bob@lap) deploy shop")
    with pytest.raises(InvalidValue, match="requires a reason"):
        check_reason("  ", required=True)
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7200
    assert parse_since("1970-01-02", 0.0) == 86400.0
    with pytest.raises(InvalidValue, match="give 30m"):
        parse_since("yesterday", 0.0)


def test_an_entry_changed_after_it_was_written_is_flagged(fleet: Fleet) -> None:
    fleet.apply()
    trail = f"{fleet.root}/audit/apps/shop"
    mine = fleet.client("operator").create(
        f"{trail}/entry-",
        b'{"action": "deploy", "who": "digest:someone-else"}',
        sequence=True,
        acl=[make_digest_acl("operator", "operator-pw", all=True)],
    )
    fleet.client("operator").set(mine, b'{"action": "deploy", "who": "digest:alice"}')
    code, out, err = fleet.cli("operator", "audit", "shop")
    assert code == 0 and "EDITED after it was written" in out, out + err
    code, out, err = fleet.cli("deployer", "audit", "shop")  # left out by that ACL
    assert code == 0 and "UNREADABLE" in out and "lacks the read (r)" in out, out + err


def test_admins_prune_old_entries_and_the_prune_is_on_the_record(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention: entries made before a time (the server's clock) go, in
    batches (two here, forced small), with one entry saying who pruned."""
    fleet.apply()
    for value in ("a", "b", "c"):
        assert fleet.cli("operator", "data", "set", "shop", "k", value)[0] == 0
    assert fleet.cli("admin", "data", "set", "k", "g", "--global")[0] == 0
    boundary = int(time.time()) + 1
    time.sleep(boundary - time.time() + 0.05)  # the next entries' ctime is after it
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(boundary))
    for value in ("d", "e"):
        assert fleet.cli("operator", "data", "set", "shop", "k", value)[0] == 0
    trail = f"{fleet.root}/audit/apps/shop"
    admin = fleet.client("admin")

    code, out, err = fleet.cli("admin", "audit", "shop", "--prune", cutoff, "--dry-run")
    assert code == 0 and "would remove 3 entries" in out and "(2 kept)" in out, out + err
    assert len(admin.get_children(trail)) == 5
    for role in ("operator", "deployer"):
        code, _, err = fleet.cli(role, "audit", "shop", "--prune", cutoff)
        assert code == 1 and "lacks the delete (d) permission" in err, err
        assert "nothing written" in err and len(admin.get_children(trail)) == 5

    monkeypatch.setattr("mozagent.cli.audit.PRUNE_BATCH", 2)
    code, out, err = fleet.cli("admin", "audit", "--all", "--prune", cutoff, "--reason", "90 days")
    assert code == 0, out + err
    assert "audit shop: removed 3 entries" in out
    assert "audit global: removed 2 entries" in out  # the global layer's and acl apply's
    assert "audit blog: no entries before" in out
    left = entries(fleet)
    assert [e["action"] for e in left] == ["data.set", "data.set", "audit.prune"]
    assert [e["changes"][0]["after"] for e in left[:2]] == ["d", "e"]
    assert left[2]["who"] == "digest:admin" and left[2]["reason"] == "90 days"
    code, out, _ = fleet.cli("admin", "audit", "shop", "--prune", cutoff)
    assert code == 0 and "no entries before" in out


def test_prune_words_are_checked_before_connecting(fleet: Fleet) -> None:
    for argv, words in (
        (("shop", "--all", "--prune", "7d"), "--all goes with --prune and without an APP"),
        (("--dry-run",), "--dry-run goes with --prune"),
        (("--prune", "soon"), "--prune 'soon': give 30m"),
        (("shop", "--prune", "7d", "--json"), "--prune takes neither"),
    ):
        code, _, err = fleet.cli("admin", "audit", *argv)
        assert code == 2 and words in err, err
