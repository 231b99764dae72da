"""Orders (issue 9): named commands from an app's procfile, run at most once per host.

No ZooKeeper here: an order is the bytes and ctime of a znode, and the host side
is a real release dir, real /bin/sh, real users and a real state dir. In CI the
tests run as root, so commands run as the app's user (``nobody`` here): the
release lives in a world-traversable temp dir owned by that user, as the agent
leaves a release.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mozagent.apply.orders import DAMAGED, INTERRUPTED, OrderBook, OrderRunner
from mozagent.apply.process import ChildRunner, Ledger
from mozagent.apply.runas import RunAs, resolve_user
from mozagent.desired.orders import (
    MAX_OUTPUT_BYTES,
    InvalidOrder,
    Order,
    OrderResult,
    decide,
    order_seq,
    parse_order,
    parse_procfile,
)
from mozagent_dev.testing import wait_until
from tests.poison import POISON

REPO = Path(__file__).resolve().parent.parent
APP = "shop"
NODE = "web1"

PROCFILE = """\
# what operators may run on every host of the shop
hello: ./bin/hello.sh first-arg
fail: echo about to fail; echo on stderr >&2; exit 3
touch: echo ran >> "$MOZAGENT_RELEASE_DIR/ran"
slow: sleep 30 & sleep 30
noisy: ./bin/noisy.sh
"""

HELLO = """\
#!/bin/sh
echo "args=$*"
echo "pwd=$(pwd)"
echo "user=$(id -un) uid=$(id -u)"
for v in MOZAGENT_APP MOZAGENT_NODE MOZAGENT_ORDER MOZAGENT_RELEASE_DIR HOME USER AGENT_SECRET; do
  eval "echo $v=\\${$v-unset}"
done
"""

NOISY = """\
#!/bin/sh
i=0
while [ $i -lt 3000 ]; do echo "line $i: ééééééééééééééééééééééééééééé"; i=$((i+1)); done
echo "THE END" >&2
"""


@pytest.fixture
def run_as() -> RunAs:
    return resolve_user(None, "nosuchapp")


@pytest.fixture
def release(run_as: RunAs) -> Iterator[Path]:
    """``<base>/releases/r1`` with ``current`` pointing at it, readable by the app user."""
    base = Path(tempfile.mkdtemp(prefix="mozagent-orders-"))
    os.chmod(base, 0o755)
    rel = base / "releases" / "r1"
    (rel / "bin").mkdir(parents=True)
    os.chmod(base / "releases", 0o755)
    (rel / "bin" / "commands.procfile").write_text(PROCFILE)
    for name, text in (("hello.sh", HELLO), ("noisy.sh", NOISY)):
        (rel / "bin" / name).write_text(text)
        os.chmod(rel / "bin" / name, 0o755)
    (base / "current").symlink_to(rel)
    run_as.owns(str(rel))
    yield base / "current"
    for pid in order_processes(None, base / "current"):  # what a failed test left running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base)


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "state")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def runner(
    state: str, run_as: RunAs, timeout: float = 20.0, clock: Callable[[], float] = time.time
) -> OrderRunner:
    return OrderRunner(
        OrderBook(state, clock),
        APP,
        NODE,
        run_as,
        ChildRunner(threading.Event(), Ledger(os.path.join(state, "orders-running.json"))),
        timeout,
    )


def order_processes(name: str | None, release: Path) -> list[int]:
    """Live processes started for order ``name`` (any, if None) in this test's
    ``release``: other tests may run an order of the same name at once."""
    marks = {f"MOZAGENT_RELEASE_DIR={os.path.realpath(release)}".encode()}
    if name is not None:
        marks.add(f"MOZAGENT_ORDER={name}".encode())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            status = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        zombie = status[status.rfind(b")") + 2 : status.rfind(b")") + 3] == b"Z"
        if marks <= set(environ.split(b"\0")) and not zombie:
            found.append(int(pid))
    return found


def order(command: str, seq: int = 3, nodes: tuple[str, ...] | None = None) -> Order:
    now = time.time()
    return Order(f"order-{seq:010d}", command, "ops@laptop", now, nodes, now)


def znode(doc: object) -> bytes:
    return json.dumps(doc).encode()


def where(seq: int = 3) -> str:
    return f"/mozagent/apps/{APP}/orders/order-{seq:010d}"


# -- running ---------------------------------------------------------------


def test_a_command_runs_in_the_release_as_the_app_user_with_a_clean_env(
    release: Path, state: str, run_as: RunAs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_SECRET", "do-not-leak")
    result = runner(state, run_as).run(order("hello"), str(release))
    real = os.path.realpath(release)
    assert (result.state, result.returncode) == ("done", 0), result
    lines = result.output.splitlines()
    assert "args=first-arg" in lines
    assert f"pwd={real}" in lines
    assert f"user={run_as.name} uid={run_as.uid}" in lines
    assert f"USER={run_as.name}" in lines and f"HOME={run_as.home}" in lines
    assert "MOZAGENT_APP=shop" in lines and "MOZAGENT_NODE=web1" in lines
    assert "MOZAGENT_ORDER=order-0000000003" in lines
    # Resolved once: `current` moving during the order cannot change where it runs.
    assert f"MOZAGENT_RELEASE_DIR={real}" in lines
    assert "AGENT_SECRET=unset" in lines
    assert result.started is not None and result.ended is not None
    assert result.started <= result.ended
    # What the publisher will send, and what survives a restart.
    assert [r.to_doc() for r in OrderBook(state).unpublished()] == [result.to_doc()]
    assert json.loads(json.dumps(result.to_doc()))["node"] == NODE


def test_a_non_zero_exit_fails_with_its_code_and_output(
    release: Path, state: str, run_as: RunAs
) -> None:
    result = runner(state, run_as).run(order("fail"), str(release))
    assert (result.state, result.returncode) == ("failed", 3)
    assert "exited with status 3" in result.message
    assert "about to fail" in result.output and "on stderr" in result.output


def test_an_unknown_command_is_refused_and_nothing_runs(
    release: Path, state: str, run_as: RunAs
) -> None:
    (release / "bin" / "commands.procfile").write_text(PROCFILE + "rm: touch ran\n")
    result = runner(state, run_as).run(order("deploy-all"), str(release))
    assert result.state == "refused" and result.returncode is None
    assert "no command 'deploy-all'" in result.message
    assert "fail, hello, noisy, rm, slow, touch" in result.message
    assert not (release / "ran").exists()


def test_without_its_user_an_order_fails_and_nothing_runs_but_is_still_judged(
    release: Path, state: str, run_as: RunAs
) -> None:
    (release / "bin" / "commands.procfile").write_text(PROCFILE + "rm: touch ran\n")
    no_user = runner(state, "user 'shop' does not exist on this host")  # type: ignore[arg-type]
    result = no_user.run(order("rm"), str(release))
    assert result.state == "failed" and "user 'shop' does not exist" in result.message
    assert not (release / "ran").exists()
    # Still judged as usual: another node's order is not answered, this node's
    # fails for want of its user, a bad command is still refused.
    created = no_user.book.joined() + 1

    def handle(seq: int, nodes: list[str]) -> OrderResult | None:
        raw = znode({"command": "rm", "nodes": nodes})
        return no_user.handle(f"order-{seq:010d}", raw, created, where(seq), str(release), 600)

    assert handle(8, ["elsewhere"]) is None
    mine = handle(9, [NODE])
    assert mine is not None and mine.state == "failed" and "does not exist" in mine.message
    assert no_user.run(order("nope", seq=4), str(release)).state == "refused"


def test_duplicate_and_empty_commands_are_refused_with_their_line_numbers(
    release: Path, state: str, run_as: RunAs
) -> None:
    (release / "bin" / "commands.procfile").write_text(
        PROCFILE + "touch: echo second >> ran\nblank:\n"
    )
    r = runner(state, run_as)
    dup = r.run(order("touch", 1), str(release))
    assert dup.state == "refused"
    assert "bin/commands.procfile:7" in dup.message and "first at line 4" in dup.message
    empty = r.run(order("blank", 2), str(release))
    assert empty.state == "refused" and ":8: command 'blank' has no command line" in empty.message
    assert not (release / "ran").exists()
    assert r.run(order("hello", 3), str(release)).state == "done"  # the rest still works


def test_a_missing_or_strange_procfile_refuses_saying_so(
    release: Path, state: str, run_as: RunAs, tmp_path: Path
) -> None:
    procfile = release / "bin" / "commands.procfile"
    r = runner(state, run_as)
    procfile.unlink()
    missing = r.run(order("hello", 1), str(release))
    assert missing.state == "refused" and "does not exist" in missing.message
    # The app's user could point it at a root-only file: its lines must not come back.
    secret = tmp_path / "secret"
    secret.write_text("hello: echo root secret\n")
    procfile.symlink_to(secret)
    link = r.run(order("hello", 2), str(release))
    assert link.state == "refused" and "root secret" not in link.message + link.output
    procfile.unlink()
    os.mkfifo(procfile)  # would block a plain open() and read() forever
    fifo = r.run(order("hello", 3), str(release))
    assert fifo.state == "refused" and "not a regular file" in fifo.message
    procfile.unlink()
    procfile.write_text("x: y\n" * 20000)
    big = r.run(order("x", 4), str(release))
    assert big.state == "refused" and "KiB" in big.message


def test_no_current_release_fails(state: str, run_as: RunAs, tmp_path: Path) -> None:
    r = runner(state, run_as)
    assert r.run(order("hello", 1), None).state == "failed"
    gone = r.run(order("hello", 2), str(tmp_path / "nothing"))
    assert gone.state == "failed" and "no current release of shop" in gone.message


def test_a_timeout_fails_saying_so_and_leaves_nothing_running(
    release: Path, state: str, run_as: RunAs
) -> None:
    started = time.monotonic()
    result = runner(state, run_as, timeout=0.5).run(order("slow"), str(release))
    assert time.monotonic() - started < 15
    assert result.state == "failed" and "timed out after 0.5 s" in result.message
    assert order_processes(result.order, release) == [], "processes outlived the order"


def test_output_keeps_its_end_within_8_kib_and_says_it_was_trimmed(
    release: Path, state: str, run_as: RunAs
) -> None:
    result = runner(state, run_as).run(order("noisy"), str(release))
    assert result.state == "done"
    assert len(result.output.encode("utf-8")) <= MAX_OUTPUT_BYTES
    assert result.output.startswith("[mozagent: output trimmed")
    assert result.output.rstrip().endswith("THE END")
    assert "line 2999: éé" in result.output and "line 0:" not in result.output
    assert "\ufffd" not in result.output  # multi-byte characters are not cut in half


# -- at most once ------------------------------------------------------------


def test_an_order_runs_at_most_once_even_for_a_new_agent_on_the_same_state(
    release: Path, state: str, run_as: RunAs
) -> None:
    r = runner(state, run_as)
    r.book.recover()  # the agent's first start comes before the order
    raw, created = znode({"command": "touch", "by": "ops@laptop", "at": time.time()}), time.time()
    first = r.handle("order-0000000009", raw, created, where(9), str(release), 600)
    assert first is not None and first.state == "done"
    again = runner(state, run_as)  # the agent restarted: a fresh book on the same dir
    assert again.book.seen("order-0000000009")
    assert again.handle("order-0000000009", raw, created, where(9), str(release), 600) is None
    same = again.run(parse_order("order-0000000009", raw, created, where(9)), str(release))
    assert same.to_doc() == first.to_doc()
    assert (release / "ran").read_text() == "ran\n"


def test_an_agent_killed_mid_order_marks_it_failed_at_restart_and_never_reruns_it(
    release: Path, state: str, run_as: RunAs
) -> None:
    child = f"""
import sys, threading
sys.path.insert(0, {str(REPO)!r})
from mozagent.apply.orders import OrderBook, OrderRunner
from mozagent.apply.process import ChildRunner, Ledger
from mozagent.apply.runas import resolve_user
from mozagent.desired.orders import Order
book = OrderBook({state!r})
r = OrderRunner(book, "shop", "web1", resolve_user(None, "nosuchapp"),
                ChildRunner(threading.Event(), Ledger({state!r} + "/orders-running.json")), 60)
r.run(Order("order-0000000004", "slow", "ops", 0.0, None, 0.0), {str(release)!r})
"""
    agent = subprocess.Popen([sys.executable, "-c", child])
    try:
        book = OrderBook(state)
        wait_until(
            lambda: order_processes("order-0000000004", release), 20, "the order's processes"
        )
        assert book.get("order-0000000004").state == "running"  # type: ignore[union-attr]
        os.kill(agent.pid, signal.SIGKILL)
    finally:
        agent.kill()  # already dead unless the test failed before killing it
        agent.wait(timeout=10)
    # What the daemon does at start: stop what was left, then settle the records.
    what, killed = Ledger(os.path.join(state, "orders-running.json")).recover()
    assert what is not None and killed >= 1
    assert order_processes("order-0000000004", release) == []
    recovered = OrderBook(state).recover()
    assert [(r.order, r.state, r.message) for r in recovered] == [
        ("order-0000000004", "failed", INTERRUPTED)
    ]
    r = runner(state, run_as)
    raw = znode({"command": "slow"})
    assert r.handle("order-0000000004", raw, time.time(), where(4), str(release), 600) is None
    assert r.book.get("order-0000000004").state == "failed"  # type: ignore[union-attr]
    assert OrderBook(state).recover() == []  # once settled, a restart changes nothing


# -- which orders a host answers ---------------------------------------------------


def test_decide_targets_nodes_and_expires_old_orders_and_history() -> None:
    joined, now = 1000.0, 5000.0

    def at(created: float, nodes: tuple[str, ...] | None = None) -> Order:
        return Order("order-0000000001", "hello", "ops", created, nodes, created)

    assert decide(at(4900), NODE, now, joined, 600) == "run"
    assert decide(at(4900, ("web1", "web2")), NODE, now, joined, 600) == "run"
    assert decide(at(4900, ("web2",)), NODE, now, joined, 600) == "skip"
    assert decide(at(4400), NODE, now, joined, 600) == "run"  # exactly max_age old
    assert decide(at(4399), NODE, now, joined, 600) == "expired"
    assert decide(at(999), NODE, now, joined, 10**9) == "expired"  # before the host joined
    assert decide(at(100, ("web2",)), NODE, now, joined, 600) == "skip"


def test_handle_expires_history_ignores_other_nodes_and_answers_malformed_orders_once(
    release: Path, state: str, run_as: RunAs
) -> None:
    clock = Clock(1000.0)
    r = runner(state, run_as, clock=clock)
    r.book.recover()  # the first start: the host joined at 1000
    now = clock.now = 5000.0
    touch = znode({"command": "touch"})
    old = r.handle("order-0000000001", touch, 900, where(1), str(release), 10**6)
    assert old is not None and old.state == "expired" and "before this host first" in old.message
    late = r.handle("order-0000000002", touch, 4000, where(2), str(release), 600)
    assert late is not None and late.state == "expired"
    assert "1000 s old, over max_age (600 s)" in late.message
    other = znode({"command": "touch", "nodes": ["web2"]})
    assert r.handle("order-0000000003", other, now, where(3), str(release), 600) is None
    assert not r.book.seen("order-0000000003")  # no result at all for another node's order
    bad = r.handle("order-0000000004", b"{oops", now, where(4), str(release), 600)
    assert bad is not None and bad.state == "refused" and where(4) in bad.message
    assert r.handle("order-0000000004", b"{oops", now, where(4), str(release), 600) is None
    assert r.handle("lock-0000000005", touch, now, where(5), str(release), 600) is None
    assert not (release / "ran").exists()
    mine = znode({"command": "touch", "nodes": ["web2", "web1"]})
    ran = r.handle("order-0000000006", mine, 4900, where(6), str(release), 600)
    assert ran is not None and ran.state == "done"
    assert [x.order for x in r.book.unpublished()] == [
        "order-0000000001",
        "order-0000000002",
        "order-0000000004",
        "order-0000000006",
    ]


def test_a_stopping_agent_leaves_new_orders_for_its_next_start(
    release: Path, state: str, run_as: RunAs
) -> None:
    r = runner(state, run_as)
    r.cancel.set()
    raw = znode({"command": "touch"})
    assert r.handle("order-0000000001", raw, time.time(), where(1), str(release), 600) is None
    assert not r.book.seen("order-0000000001")


# -- parsing ---------------------------------------------------------------


def test_a_good_order_parses_with_defaults_for_what_zkcli_users_leave_out() -> None:
    full = parse_order(
        "order-0000000003",
        znode({"command": "migrate", "by": "ann@box", "at": 12.5, "nodes": ["web1"]}),
        20.0,
        where(),
    )
    assert full == Order("order-0000000003", "migrate", "ann@box", 12.5, ("web1",), 20.0)
    bare = parse_order("order-0000000003", b"command: migrate\n", 20.0, where())
    assert (bare.by, bare.at, bare.nodes) == ("", 20.0, None)
    assert order_seq("order-0000000042") == 42


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{not json", "not valid YAML at line 1"),
        (b"\xff\xfe", "not UTF-8"),
        (b"", "not empty"),
        (b"[1, 2]", "not a list"),
        (b'"migrate"', "not a str"),
        (b"{}", "'command' must be"),
        (b'{"command": 5}', "'command' must be"),
        (b'{"command": "rm -rf /"}', "is not a command name"),
        (b'{"command": "x", "node": ["web1"]}', "unknown field(s) 'node'"),
        (b'{"command": "x", "nodes": "web1"}', "'nodes' must be a list"),
        (b'{"command": "x", "nodes": []}', "empty list"),
        (b'{"command": "x", "nodes": ["../etc"]}', "node name '../etc' is invalid"),
        (b'{"command": "x", "nodes": [1]}', "not a node name"),
        (b'{"command": "x", "at": "yesterday"}', "'at' must be"),
        (b'{"command": "x", "at": true}', "'at' must be"),
        (b'{"command": "x", "at": .nan}', "'at' must be"),
        (b'{"command": "x", "by": ["a"]}', "'by' must be"),
    ]
    + [(raw, why) for _, raw, why in POISON],
)
def test_a_malformed_order_is_an_invalid_order_naming_its_znode(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidOrder) as err:
        parse_order("order-0000000003", raw, 1.0, where())
    assert str(err.value).startswith(where() + ": ")
    assert why in str(err.value)


@pytest.mark.parametrize("name", ["order-", "order-12a", "lock-0000000001", "order-../x", ""])
def test_names_that_are_not_orders_are_refused(name: str) -> None:
    with pytest.raises(InvalidOrder, match="is not an order name"):
        order_seq(name)


def test_procfile_lines_comments_bad_lines_and_duplicates() -> None:
    proc = parse_procfile(
        "# comment\n\nweb: gunicorn app:wsgi --bind :80\n  migrate :  ./manage.py migrate  \n"
        "just words\n-bad: x\nsp ace: y\nweb: other\nclear_cache.v2: redis-cli FLUSHALL\n",
        "bin/commands.procfile",
    )
    assert proc.commands == {
        "migrate": "./manage.py migrate",
        "clear_cache.v2": "redis-cli FLUSHALL",
    }
    assert [p.split(": ")[0] for p in proc.problems] == [
        "bin/commands.procfile:5",
        "bin/commands.procfile:6",
        "bin/commands.procfile:7",
        "bin/commands.procfile:8",
    ]
    assert "declared again (first at line 3)" in proc.problems[3]
    assert proc.why_not("web", "bin/commands.procfile") == proc.problems[3]
    assert proc.why_not("migrate", "bin/commands.procfile") is None


# -- the book --------------------------------------------------------------------


def result(seq: int, state: str = "done") -> OrderResult:
    return OrderResult(NODE, f"order-{seq:010d}", "hello", state, 0, "ok", 1.0, 2.0, "exited")


def test_joined_is_recorded_once(state: str) -> None:
    clock = Clock(100.0)
    assert OrderBook(state, clock).joined() == 100.0
    clock.now = 900.0
    assert OrderBook(state, clock).joined() == 100.0


def test_a_result_recorded_while_running_was_published_is_still_published(state: str) -> None:
    book = OrderBook(state)
    book.record(result(1, "running"))
    book.record(result(1, "done"))  # the runner finished while the publisher sent "running"
    book.mark_published("order-0000000001", "running")
    assert [r.state for r in book.unpublished()] == ["done"]
    book.mark_published("order-0000000001", "done")
    assert book.unpublished() == []
    assert OrderBook(state).get("order-0000000001") == result(1, "done")


def test_prune_forgets_old_published_records_and_never_reruns_their_orders(
    release: Path, state: str, run_as: RunAs
) -> None:
    clock = Clock(time.time())
    book = OrderBook(state, clock)
    book.record(result(1), created=clock.now - 5000)
    book.mark_published("order-0000000001", "done")
    book.record(result(2), created=clock.now - 5000)  # not published yet: kept
    book.record(result(3), created=clock.now - 10)
    book.mark_published("order-0000000003", "done")
    book.record(result(4, "running"), created=clock.now - 5000)
    book.mark_published("order-0000000004", "running")
    assert book.prune(3600) == 1
    assert not book.seen("order-0000000001")
    assert all(book.seen(f"order-{n:010d}") for n in (2, 3, 4))
    assert book.prune(3600) == 0
    # The pruned order is still in ZooKeeper: a restarted agent must not run it.
    r = OrderRunner(OrderBook(state, clock), APP, NODE, run_as, ChildRunner(threading.Event()), 20)
    raw = znode({"command": "touch"})
    assert r.handle("order-0000000001", raw, clock.now - 5000, where(1), str(release), 1e9) is None
    assert not (release / "ran").exists()


def test_damaged_files_crash_nothing_and_are_settled_as_failed(
    release: Path, state: str, run_as: RunAs
) -> None:
    book = OrderBook(state)
    book.record(result(1))
    orders = Path(state) / "orders"
    (orders / "order-0000000002.json").write_bytes(b'{"result": {"state": "do')
    (orders / "order-0000000003.json").write_text(json.dumps({"result": {"state": "done"}}))
    (orders / "book.json").write_text("[]")
    (orders / "notes.json").write_text("{}")
    fresh = OrderBook(state)
    assert fresh.joined() > 0  # a damaged book starts over (only expires more, never reruns)
    assert [r.order for r in fresh.unpublished()] == ["order-0000000001"]
    assert fresh.seen("order-0000000002") and fresh.get("order-0000000002") is None
    assert fresh.prune(0) == 0
    r = runner(state, run_as)
    raw = znode({"command": "touch"})
    assert r.handle("order-0000000002", raw, time.time(), where(2), str(release), 600) is None
    damaged = r.run(parse_order("order-0000000003", raw, time.time(), where(3)), str(release))
    assert damaged.state == "failed" and not (release / "ran").exists()
    settled = fresh.recover()
    assert [(x.order, x.state, x.message) for x in settled] == [
        ("order-0000000002", "failed", DAMAGED),
        ("order-0000000003", "failed", DAMAGED),
    ]
    assert [x.order for x in fresh.unpublished()] == [
        "order-0000000001",
        "order-0000000002",
        "order-0000000003",
    ]


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        "done",
        {},
        {**result(1).to_doc(), "state": "weird"},
        {**result(1).to_doc(), "returncode": "0"},
        {**result(1).to_doc(), "returncode": True},
        {**result(1).to_doc(), "started": "now"},
        {**result(1).to_doc(), "order": "../../etc/passwd"},
        {k: v for k, v in result(1).to_doc().items() if k != "output"},
    ],
)
def test_a_damaged_result_document_reads_as_none(doc: object) -> None:
    assert OrderResult.parse(doc) is None


def test_a_result_round_trips() -> None:
    assert OrderResult.parse(json.loads(json.dumps(result(7).to_doc()))) == result(7)
