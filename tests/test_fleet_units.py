"""The pure parts of releases, orders and presence, without servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mozagent.apply.runas import NoSuchUser, resolve_user
from mozagent.config import ConfigError, parse_config
from mozagent.desired.fleet import DesiredRelease
from mozagent.desired.presence import (
    FollowedRelease,
    HostFacts,
    LastApply,
    Presence,
    ReleaseStanding,
)
from mozagent.render.snapshot import merge_layers
from mozagent.report.fleet import (
    ANOTHER,
    ANOTHER_BOOT,
    PREDECESSOR,
    STILL_RUNNING,
    Claim,
    agent_running,
    holder_text,
    presence_doc,
    process_start,
    read_boot_id,
    relation,
)
from mozagent.sources.releases import desired_of


def test_merged_data_is_node_over_app_over_global() -> None:
    merged = merge_layers(
        {
            "global": {"a": "global", "b": "global", "c": "global"},
            "app": {"a": "app", "b": "app"},
            "node": {"a": "node"},
        }
    )
    assert merged == {"a": "node", "b": "app", "c": "global"}


@pytest.mark.parametrize(
    ("raw", "word"),
    [
        (b"ref: [v1", "release"),
        (b"- a\n- b\n", "mapping"),
        (b"source: file:///x\n", "ref"),
        (b"ref: v1\nsource: file:///x\nrefs: v2\n", "refs"),
        (b"ref: -v1\nsource: file:///x\n", "-v1"),
    ],
)
def test_a_bad_release_znode_becomes_an_error_naming_it(raw: bytes, word: str) -> None:
    desired = desired_of("/r/apps/shop/release", raw, 7)
    assert desired.release is None and desired.version == 7
    assert desired.error and "/r/apps/shop/release" in desired.error and word in desired.error


def test_a_good_release_znode_and_credentials_kept_out_of_what_is_shown() -> None:
    desired = desired_of(
        "/r/apps/shop/release", b"ref: v1\nsource: https://bob:hunter2@git.example/shop.git\n", 9
    )
    assert desired.error is None and desired.release is not None
    assert desired.release.ref == "v1" and desired.release.install_script == "bin/install"
    assert "hunter2" not in str(desired.as_dict())


def test_presence_is_built_from_what_the_jobs_know() -> None:
    facts = HostFacts(
        42,
        LastApply(False, 43, 5.0, "failed"),
        ReleaseStanding(FollowedRelease("v2", "/r/apps/shop/release", 7)),
    )
    doc = presence_doc(facts, "shop", "web1", "boot-a")
    assert doc["boot_id"] == "boot-a" and doc["schema"] == 1
    assert doc["data_version"] == 42 and doc["node"] == "web1" and doc["app"] == "shop"
    assert doc["last_apply"] == {"ok": False, "data_version": 43, "ended": 5.0, "message": "failed"}
    assert doc["release"]["desired"]["ref"] == "v2"
    assert doc["release"]["installed"] is None
    assert presence_doc(HostFacts(), "shop", "web1")["last_apply"] is None
    # What the agent writes is what the fleet's tools read back.
    read = Presence.parse(json.dumps(doc).encode(), "web1", "shop")
    assert isinstance(read, Presence) and read.to_doc() == doc


def test_desired_releases_compare_by_content_and_version() -> None:
    a = desired_of("/p", b"ref: v1\nsource: s\n", 3)
    assert a == desired_of("/p", b"ref: v1\nsource: s\nby: me\n", 3)  # who wrote it is not a change
    assert a != desired_of("/p", b"ref: v1\nsource: s\n", 4)  # a new deploy of the same ref is
    assert DesiredRelease("/p", 0, None).as_dict()["ref"] is None


@pytest.mark.parametrize(
    ("section", "value", "key"),
    [
        ("releases", {"keep": 0}, "releases.keep"),
        ("releases", {"keep": True}, "releases.keep"),
        ("releases", {"timeout": 0}, "releases.timeout"),
        ("releases", {"apps": "/srv"}, "releases.apps"),
        ("releases", {"user": "../root"}, "releases.user"),
        ("orders", {"max_age": -1}, "orders.max_age"),
        ("orders", {"retention": ".nan"}, "orders.retention"),
        ("orders", {"ttl": 5}, "orders.ttl"),
        ("heat", {"poll_min": 0.01, "poll_max": 1}, "heat.poll_min"),
        ("heat", {"poll_max": 0.1}, "heat.poll_max"),
    ],
)
def test_bad_releases_and_orders_settings_are_refused(
    section: str, value: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({section: value}, "cfg.yaml")
    assert str(err.value).startswith(f"cfg.yaml: {key}:"), err.value


def test_releases_and_orders_defaults() -> None:
    cfg = parse_config({}, "cfg.yaml")
    assert cfg.releases.apps_dir == "/srv/apps" and cfg.releases.keep == 3
    assert cfg.orders.max_age == 3600 and cfg.orders.retention == 7 * 86400


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands trees to another user")
def test_handing_a_tree_to_the_app_user_never_follows_its_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("root's")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    (tree / "link").symlink_to(outside)
    (tree / "dirlink").symlink_to(tmp_path)
    user = resolve_user(None, "nosuchapp")
    user.owns(str(tree))
    assert (tree / "sub" / "f").stat().st_uid == user.uid
    assert os.lstat(tree / "link").st_uid == user.uid
    assert outside.stat().st_uid == 0 and tmp_path.stat().st_uid == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="an unprivileged agent runs app code as itself")
def test_app_code_never_runs_as_root() -> None:
    with pytest.raises(NoSuchUser, match="never runs as root"):
        resolve_user("root", "shop")
    with pytest.raises(NoSuchUser, match="does not exist"):
        resolve_user("no-such-user-here", "shop")


def test_connection_errors_are_described_in_words() -> None:
    from kazoo.exceptions import ConnectionLoss, SessionExpiredError

    from mozagent.zkclient import describe

    assert describe(ConnectionLoss(), "zk1:2181") == (
        "ZooKeeper at zk1:2181 stopped answering (the connection was lost)"
    )
    assert describe(SessionExpiredError()) == "the session with ZooKeeper expired"


# --- whose stale presence is this agent's own (issue 13, item 2: clones) ---------------------

SESSION = 0x1234


def claim(**fields: Any) -> Claim:
    return Claim(**{"session": SESSION, "boot_id": "boot-a", "pid": 99, "started": 7, **fields})


@pytest.mark.parametrize(
    ("recorded", "owner", "boot", "running", "expected"),
    [
        (claim(), SESSION, "boot-a", False, PREDECESSOR),  # kill -9, restart: replace it
        (claim(), SESSION, "boot-b", False, ANOTHER_BOOT),  # a reboot, or a clone
        (claim(), SESSION, "boot-b", True, ANOTHER_BOOT),  # a clone of a running host
        (claim(), SESSION, None, False, ANOTHER_BOOT),  # no boot id here: never ours
        (claim(boot_id=None), SESSION, "boot-a", False, ANOTHER_BOOT),  # an older record
        (claim(), SESSION, "boot-a", True, STILL_RUNNING),  # a copied state dir, same boot
        (claim(), 0x999, "boot-a", False, ANOTHER),  # a twin's session
        (None, SESSION, "boot-a", False, ANOTHER),  # nothing recorded
    ],
)
def test_only_a_stale_presence_of_this_boot_whose_agent_is_gone_is_the_predecessor_s(
    recorded: Claim | None, owner: int, boot: str | None, running: bool, expected: str
) -> None:
    assert relation(recorded, owner, boot, lambda _: running) == expected


def test_a_claim_record_with_bad_fields_is_read_on_the_safe_side() -> None:
    assert Claim.of(None) is None and Claim.of({"session": "0x1234"}) is None
    assert Claim.of({"session": True}) is None
    read = Claim.of({"session": SESSION, "boot_id": 5, "pid": "99", "host": "h"})
    assert read == Claim(SESSION, None, None, None, "h")
    assert relation(read, SESSION, "boot-a", agent_running) == ANOTHER_BOOT


def test_the_boot_id_is_read_from_its_file_and_none_without_one(tmp_path: Path) -> None:
    (tmp_path / "boot_id").write_text("0b8c-clone\n")
    assert read_boot_id(str(tmp_path / "boot_id")) == "0b8c-clone"
    assert read_boot_id(str(tmp_path / "missing")) is None
    (tmp_path / "empty").write_text("")
    assert read_boot_id(str(tmp_path / "empty")) is None
    if os.path.exists("/proc/sys/kernel/random/boot_id"):
        assert read_boot_id("/proc/sys/kernel/random/boot_id")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_the_recorded_agent_is_running_only_while_that_very_process_lives() -> None:
    code = "import sys, time; time.sleep(60)"
    agent = subprocess.Popen([sys.executable, "-c", code, "mozagent", "daemon"])
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        started = process_start(agent.pid)
        assert started is not None
        assert agent_running(Claim(SESSION, "b", agent.pid, started))
        # Its pid, but another start: a pid reused (a later agent's included).
        assert not agent_running(Claim(SESSION, "b", agent.pid, started + 1))
        # A live process that is no mozagent.
        assert not agent_running(Claim(SESSION, "b", other.pid, process_start(other.pid)))
    finally:
        for proc in (agent, other):
            proc.kill()
            proc.wait(timeout=10)
    assert not agent_running(Claim(SESSION, "b", agent.pid, started))  # gone


def test_a_clone_is_told_why_it_waits() -> None:
    from kazoo.protocol.states import ZnodeStat

    stat = ZnodeStat(*[0] * 7, SESSION, 0, 0, 0)
    text = holder_text(
        "web1", "/r/hosts/web1", stat, b"{}", ANOTHER_BOOT, claim(host="web1.example"), "boot-b"
    )
    assert text.startswith("node name web1 is held by session 0x1234, which this agent's")
    assert "pid 99 on web1.example, boot boot-a; this is boot boot-b" in text
    assert "restarted within the ZooKeeper session timeout" in text and "clone" in text
    text = holder_text("web1", "/r/hosts/web1", stat, b"{}", STILL_RUNNING, claim(), "boot-a")
    assert "pid 99, still running on this machine" in text
