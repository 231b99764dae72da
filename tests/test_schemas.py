"""The documents that cross processes, read as agents and tools of other
releases would write them: reports (presence, order results, status.json)
from a newer agent are read, commands (release znode, orders) written for a
newer agent are refused, and old documents without a schema still read.
Pure: bytes in, values out; no server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mozagent.desired import convergence as cv
from mozagent.desired.fleet import DesiredRelease
from mozagent.desired.orders import InvalidOrder, OrderResult, order_doc, parse_order
from mozagent.desired.presence import HostFacts, LastApply, Presence, ReleaseStanding
from mozagent.desired.release import InvalidRelease, Release, parse_release
from mozagent.desired.status import sanitize
from mozagent.report.fleet import presence_doc

COMMIT = "1a2b3c4d5e" + "0" * 30
SOURCE = "file:///srv/git/shop"
APP_RELEASE = "/m/apps/shop/release"


def installed_v2(version: int = 7) -> dict[str, Any]:
    return {
        "desired": {"ref": "v2", "path": APP_RELEASE, "version": version},
        "installed": {"ref": "v2", "commit": COMMIT, "source": SOURCE},
        "last_install": {"ok": True, "ref": "v2", "commit": COMMIT, "version": version},
    }


def test_a_presence_from_a_newer_agent_with_extra_fields_is_read_and_judged() -> None:
    doc = {
        "schema": 2,
        "node": "web1",
        "app": "shop",
        "agent_version": "9.0",
        "data_version": 12,
        "last_apply": {"ok": True, "data_version": 12, "message": "ok", "duration": 0.4},
        "release": {**installed_v2(), "rollout": {"step": 3, "of": 5}},
        "metrics": {"runs": 1200},
        "ports": [8080, 8443],
    }
    seen = cv.judge_presence(json.dumps(doc).encode(), 77, "web1", "shop")
    assert isinstance(seen, Presence), seen
    assert seen.schema == 2 and seen.agent_version == "9.0"
    wanted = DesiredRelease(APP_RELEASE, 7, Release("v2", SOURCE))
    assert cv.data_outcome(seen, 12).state == cv.DONE
    assert cv.release_outcome(seen, wanted).state == cv.DONE
    assert cv.host_problems(seen, 12, wanted) == ()


def test_a_presence_from_before_schemas_reads_as_schema_1() -> None:
    raw = json.dumps({"node": "web1", "app": "shop", "data_version": 3}).encode()
    seen = Presence.parse(raw, "web1", "shop")
    assert isinstance(seen, Presence) and seen.schema == 1 and seen.data_version == 3


@pytest.mark.parametrize("schema", ["2", 0, -1, True, 1.5])
def test_a_presence_with_a_bad_schema_is_unreadable(schema: Any) -> None:
    raw = json.dumps({"schema": schema, "node": "web1", "app": "shop"}).encode()
    seen = Presence.parse(raw, "web1", "shop")
    assert isinstance(seen, cv.Unreadable) and "schema is not a positive integer" in seen.reason


def test_what_this_agent_writes_round_trips_through_the_readers() -> None:
    facts = HostFacts(5, LastApply(True, 5, 10.0, "ok"), ReleaseStanding())
    doc = presence_doc(facts, "shop", "web1", "boot")
    assert doc["schema"] == 1
    seen = Presence.parse(json.dumps({**doc, "updated": 11.0}).encode(), "web1", "shop")
    assert isinstance(seen, Presence)
    assert seen.last_apply == facts.last_apply and seen.updated == 11.0 and seen.boot_id == "boot"


def test_an_order_result_from_a_newer_agent_is_read() -> None:
    result = OrderResult("web1", "order-0000000007", "hello", "done", 0, "hi", 1.0, 2.0, "ok")
    doc = {**result.to_doc(), "schema": 3, "cpu_seconds": 0.2, "cgroup": {"peak": 1}}
    assert OrderResult.parse(json.loads(json.dumps(doc))) == result
    assert result.to_doc()["schema"] == 1
    old = {k: v for k, v in result.to_doc().items() if k != "schema"}
    assert OrderResult.parse(old) == result
    assert OrderResult.parse({**result.to_doc(), "schema": "x"}) is None


def test_a_release_for_a_newer_agent_is_refused_and_one_for_this_agent_is_not() -> None:
    where = "/m/apps/shop/release"
    with pytest.raises(InvalidRelease, match="schema 2, written by a newer mozagent"):
        parse_release(b"schema: 2\nref: v1\nsource: file:///srv/shop\n", where)
    ok = parse_release(b"schema: 1\nref: v1\nsource: file:///srv/shop\n", where)
    assert ok == Release("v1", "file:///srv/shop")
    # Written without the schema (agents from before schemas refuse the key).
    assert "schema" not in Release("v1", "file:///srv/shop").to_doc()
    with pytest.raises(InvalidRelease, match="unknown key"):
        parse_release(b"ref: v1\nsource: file:///srv/shop\nrollout: canary\n", where)


def test_an_order_for_a_newer_agent_is_refused() -> None:
    where = "/m/apps/shop/orders/order-0000000001"
    doc = order_doc("hello", "ops@laptop", 5.0, None)
    assert "schema" not in doc
    assert parse_order("order-0000000001", json.dumps(doc).encode(), 5.0, where).command == "hello"
    newer = json.dumps({**doc, "schema": 2}).encode()
    with pytest.raises(InvalidOrder, match="written by a newer mozagent"):
        parse_order("order-0000000001", newer, 5.0, where)


def test_status_from_a_newer_agent_keeps_what_it_knows() -> None:
    doc = {
        "schema": 4,
        "agent": {"pid": 1, "version": "9"},
        "last_apply": {"ok": True},
        "console": {"url": "http://127.0.0.1:1"},
        "errors": {},
    }
    read = sanitize(doc)
    assert read is not None and read["last_apply"] == {"ok": True}
    assert read["console"] == {"url": "http://127.0.0.1:1"} and read["errors"] == {}
    damaged = sanitize({**doc, "schema": "four"})
    assert (
        damaged is not None
        and "'schema' is a str" in damaged["errors"]["status_file"][0]["message"]
    )
