"""Nothing an install, an order or a puppet run starts outlives it, whatever it
does with its environment; zombies never pile up; a run that could not be
cleaned up is a failure; a NUL in a procfile is a refused line; a full disk
never kills the daemon (issue "fleet hardening", items 1, 7 and 8).

End to end against real agents (daemon processes), the real ZooKeeper and real
git, for both ways of holding a run: a cgroup per run (``auto`` where cgroup v2
is writable, as on these machines) and the /proc-sweep fallback
(``processes``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mozagent.apply import contain
from mozagent.apply.contain import Cleanup, Containment, RunGroup, SweepContainment, sweep
from mozagent.apply.orders import judge
from mozagent.apply.process import ChildExit, ChildRunner, Ledger
from mozagent.apply.script import heat_result
from mozagent.desired.orders import InvalidOrder, parse_order, parse_procfile
from mozagent.fileio import disk_full, free_space
from mozagent.report.status import all_errors
from tests.conftest import wait_for
from tests.test_fleet import (  # noqa: F401 (fleet is a fixture)
    Fleet,
    acted_on,
    fleet,
    installed_commit,
    push_order,
    result_of,
)

# A chain of processes, each starting the next in a new session with an empty
# environment (no MOZAGENT_RUN mark) and exiting at once: the leftover sweep of
# old could not keep up with it. Each generation logs a line; a stop file ends
# it, so a test that fails never leaves it running.
CHAIN = (
    "gen='[ -e {stop} ] && exit 0; echo g >> {log}; "
    '(env -i /usr/bin/setsid /bin/sh -c "$0" "$0" &) ; exit 0\'\n'
    '(env -i /usr/bin/setsid /bin/sh -c "$gen" "$gen" &)\n'
)
# Run by the install script (whose parent is the agent) after the chain has run
# a while: how many exited children the agent has not collected.
COUNT_ZOMBIES = (
    'z=0; for s in /proc/[0-9]*/stat; do read -r l < "$s" 2>/dev/null || continue; '
    'set -- ${{l##*) }}; [ "$1" = Z ] && [ "$2" = "$PPID" ] && z=$((z+1)); done; '
    "echo $z > {zombies}\n"
)


def lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def still_growing(path: Path, seconds: float = 1.5) -> bool:
    before = lines(path)
    time.sleep(seconds)
    return lines(path) > before


@pytest.fixture
def chain(fleet: Fleet) -> Iterator[dict[str, Path]]:  # noqa: F811
    paths = {"stop": fleet.repo.marks / "stop", "log": fleet.repo.marks / "chain.log"}
    paths["zombies"] = fleet.repo.marks / "zombies"
    yield paths
    paths["stop"].touch()  # ends a chain that escaped, whatever the test found
    time.sleep(0.3)


def run_cgroups(parent: str | None) -> set[str]:
    if parent is None:
        return set()
    return {n for n in os.listdir(parent) if n.startswith(contain.RUN_CGROUP_PREFIX)}


def chain_shell(paths: dict[str, Path]) -> str:
    return CHAIN.format(stop=paths["stop"], log=paths["log"])


@pytest.mark.parametrize("containment", ["auto", "processes"])
def test_a_chain_started_by_an_install_script_ends_with_the_install(
    fleet: Fleet,  # noqa: F811
    chain: dict[str, Path],
    containment: str,
) -> None:
    earlier = run_cgroups(contain.cgroup_parent()[0])  # another suite's, killed: not ours
    script = chain_shell(chain) + "sleep 3\n" + COUNT_ZOMBIES.format(zombies=chain["zombies"])
    v1 = fleet.repo.release("v1", slow=script)
    box = fleet.agent("web1", apply={"containment": containment})
    fleet.start()
    version = fleet.set_release("v1")
    done = wait_for(acted_on(fleet, "web1", version), 90, what="the install to end")
    assert done["ok"] is True, done
    assert installed_commit(fleet, "web1")() == v1
    generations = lines(chain["log"])
    assert generations > 10, "the chain never ran: the test proves nothing"
    assert not still_growing(chain["log"]), "the chain outlived the install"
    # Exited children were collected while the install ran: unreaped, each
    # generation leaves two zombies with the agent.
    zombies = int(chain["zombies"].read_text())
    assert zombies * 4 < generations, (zombies, generations)
    code, doc = box.status()
    assert code == 0, doc["errors"]
    held = doc["agent"]["containment"]
    if containment == "processes":
        assert held.startswith("process sweeps"), held
    elif os.environ.get("CI") == "true" or contain.cgroup_parent()[0] is not None:
        assert held.startswith("a cgroup per run"), held  # the strong way is what ran
    if held.startswith("a cgroup per run"):
        parent = held.split(" under ", 1)[1].split(" (", 1)[0]  # "... under DIR (limit)"
        assert run_cgroups(parent) <= earlier, "a run's cgroup was left behind"


@pytest.mark.parametrize("containment", ["auto", "processes"])
def test_a_chain_started_by_an_order_ends_with_the_order(
    fleet: Fleet,  # noqa: F811
    chain: dict[str, Path],
    containment: str,
) -> None:
    one_line = "; ".join(chain_shell(chain).splitlines())
    fleet.repo.release("v1", commands=f"chain: {one_line}; sleep 2\n")
    fleet.agent("web1", apply={"containment": containment})
    fleet.start()
    fleet.set_release("v1")
    wait_for(lambda: installed_commit(fleet, "web1")(), 90, what="v1 installed")
    order = push_order(fleet, "chain")
    res = wait_for(lambda: result_of(fleet, order, "web1"), 60, what="the order's result")
    assert res["state"] == "done", res
    assert lines(chain["log"]) > 10, "the chain never ran: the test proves nothing"
    assert not still_growing(chain["log"]), "the chain outlived the order"


def test_a_nul_byte_in_the_procfile_refuses_that_command_and_the_others_run(
    fleet: Fleet,  # noqa: F811
) -> None:
    fleet.repo.release("v1", commands="nul: echo before\0after\n")
    box = fleet.agent("web1")
    fleet.start()
    fleet.set_release("v1")
    wait_for(lambda: installed_commit(fleet, "web1")(), 90, what="v1 installed")
    bad = push_order(fleet, "nul")
    res = wait_for(lambda: result_of(fleet, bad, "web1"), 60, what="the refusal")
    assert res["state"] == "refused" and "NUL byte" in res["message"], res
    good = push_order(fleet, "hello")
    res = wait_for(lambda: result_of(fleet, good, "web1"), 60, what="the next order")
    assert res["state"] == "done", res
    assert box.daemons[0].poll() is None
    assert "running" not in json.dumps((box.status_doc() or {}).get("orders"))


# --- a full disk --------------------------------------------------------------------


@pytest.fixture
def small_disk(fleet: Fleet) -> Iterator[Path]:  # noqa: F811
    mount = fleet.root / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a small tmpfs: {made.stderr}")
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr}")
    try:
        yield mount
    finally:
        fleet.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Fill the file system ``path`` is on, as root (what the app's user cannot take)."""
    with open(path, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()


def test_a_full_disk_never_kills_the_daemon_and_it_recovers(
    fleet: Fleet,  # noqa: F811
    small_disk: Path,
) -> None:
    v1 = fleet.repo.release("v1")
    # v2's install script fills the disk, then fails.
    fleet.repo.release(
        "v2", slow='dd if=/dev/zero of="$MOZAGENT_RELEASE_DIR/big" bs=64k 2>/dev/null; exit 1'
    )
    v3 = fleet.repo.release("v3")
    box = fleet.agent(
        "web1",
        state_dir=str(small_disk / "state"),
        releases={"apps_dir": str(small_disk / "apps")},
    )
    box.state = small_disk / "state"
    fleet.start()
    fleet.set_release("v1")
    wait_for(lambda: installed_commit(fleet, "web1")() == v1, 90, what="v1 installed")
    version = fleet.set_release("v2")
    failed = wait_for(acted_on(fleet, "web1", version), 90, what="the v2 install to fail")
    assert failed["ok"] is False and "the disk is full" in failed["message"], failed
    releases = small_disk / "apps" / "shop" / "releases"
    assert sorted(n for n in os.listdir(releases) if not n.endswith(".json")) == [v1]
    # Now the disk is full of something the agent cannot remove.
    fill(small_disk / "filler")
    fleet.zk.ensure_path(f"{fleet.zk_root}/apps/shop/data")
    fleet.zk.create(f"{fleet.zk_root}/apps/shop/data/colour", b"blue")  # a run, status writes
    time.sleep(4)
    assert box.daemons[0].poll() is None, "the daemon died on the full disk"
    code, doc = box.status()
    assert code == 3, doc
    assert any(e["where"] == "disk" and "is full" in e["message"] for e in doc["all_errors"]), doc
    assert fleet.presence("web1") is not None  # the presence worker is alive
    # Space returns: the agent writes its status again and carries on.
    os.unlink(small_disk / "filler")
    fleet.set_release("v3")
    wait_for(lambda: installed_commit(fleet, "web1")() == v3, 90, what="v3 installed")
    wait_for(lambda: box.status()[0] == 0, 30, what="a healthy status")
    assert not [e for e in box.daemon_log().splitlines() if "Traceback" in e]


# --- the judgement of a run that could not be cleaned up ------------------------------


class Stubborn(Containment):
    """Our own containment, made to fail: a run whose processes stay alive."""

    name = "stubborn"

    def open(self, mark: str) -> RunGroup:
        class Group(RunGroup):
            def clean(self, timeout: float = 10.0) -> Cleanup:
                return Cleanup(0, [4242], "1 process(es) of the run could not be stopped")

        return Group(mark)

    def recover(self, record: dict[str, object]) -> int:
        return 0


def run_stubborn(tmp_path: Path) -> ChildExit:
    ledger = Ledger(str(tmp_path / "running.json"), Stubborn())
    return ChildRunner(threading.Event(), ledger).run(["/bin/true"], {}, 10)


def test_a_run_that_could_not_be_cleaned_up_is_a_failure(tmp_path: Path) -> None:
    out = run_stubborn(tmp_path)
    assert out.returncode == 0 and out.cleanup_error
    _, state, message = judge(out, 10)
    assert state == "failed" and "could not be stopped" in message
    heat = heat_result(out, "script", 10, {})
    assert heat.status_code == 1 and "could not be stopped" in heat.stderr


def test_the_sweep_reports_what_it_could_not_stop() -> None:
    # Marked as a process of run "no-mark" is: the kill checks the mark again.
    proc = subprocess.Popen(["sleep", "3121"], env={**os.environ, "MOZAGENT_RUN": "no-mark"})
    try:
        result = sweep(
            "no-mark", timeout=0.3, kill=lambda pid, sig: None, find=lambda mark: [proc.pid]
        )
        assert result.error and str(proc.pid) in result.error and result.left == [proc.pid]
        # With a real kill the same process is gone.
        again = sweep("no-mark", timeout=5, find=lambda m: [proc.pid] * (proc.poll() is None))
        assert again.error is None and again.killed == 1
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def test_a_start_failure_is_a_result_not_a_crash(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "running.json"), SweepContainment())
    out = ChildRunner(threading.Event(), ledger).run(["/bin/echo", "a\0b"], {}, 10)
    assert out.returncode is None and "null" in (out.start_error or "")
    assert judge(out, 10)[1] == "failed"
    assert not (tmp_path / "running.json").exists()


def test_procfile_and_order_command_names_are_bounded() -> None:
    procfile = parse_procfile(f"{'x' * 65}: true\nok: true\nnul: a\0b\n", "bin/commands.procfile")
    assert list(procfile.commands) == ["ok"]
    assert "NUL" in (procfile.why_not("nul", "bin/commands.procfile") or "")
    assert any("at most 64" in p for p in procfile.problems)
    with pytest.raises(InvalidOrder, match="at most 64"):
        parse_order("order-0000000001", json.dumps({"command": "y" * 65}).encode(), 0.0, "here")


class RefusesJoin(Containment):
    """Our own containment, made to fail the way an old kernel does: the child
    cannot join the run's cgroup."""

    name = "refuses"

    def open(self, mark: str) -> RunGroup:
        class Group(RunGroup):
            def preexec(self) -> Callable[[], None]:
                def join() -> None:
                    raise PermissionError("cgroup.procs: permission denied")

                return join

            def clean(self, timeout: float = 10.0) -> Cleanup:
                return Cleanup()

        return Group(mark)

    def recover(self, record: dict[str, object]) -> int:
        return 0


def test_a_run_that_cannot_join_its_cgroup_runs_held_by_sweeps(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "running.json"), RefusesJoin())
    out = ChildRunner(threading.Event(), ledger).run(["/bin/echo", "ran"], {}, 10)
    assert out.returncode == 0 and out.tail == ["ran"], out


def test_a_file_system_without_inode_counts_is_not_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.statvfs(tmp_path)
    fake = os.statvfs_result(
        (real.f_bsize, real.f_frsize, real.f_blocks, real.f_bfree, real.f_bavail, 0, 0, 0, 0, 255)
    )  # btrfs and vfat report 0 inodes of 0
    monkeypatch.setattr("mozagent.fileio.os.statvfs", lambda path: fake)
    assert free_space(str(tmp_path)) == (real.f_bavail * real.f_frsize, None)
    assert not disk_full(str(tmp_path))
    doc = {"state_dir_space": {"path": str(tmp_path), "bytes": 10**9, "inodes": None}}
    assert not [e for e in all_errors(doc) if e["where"] == "disk"]
    doc["state_dir_space"]["inodes"] = 0
    assert [e for e in all_errors(doc) if e["where"] == "disk"]


def test_a_sweep_never_kills_a_process_that_only_reused_a_pid() -> None:
    """A pid found in /proc may belong to another process by the time the
    signal goes out: the kill checks the run's mark through a pidfd first."""
    stranger = subprocess.Popen(["sleep", "3122"])  # no mark: not the run's
    try:
        result = sweep("the-run", timeout=0.3, find=lambda mark: [stranger.pid])
        assert stranger.poll() is None, "an unrelated process was killed"
        assert result.error and result.left == [stranger.pid]
    finally:
        stranger.kill()
        stranger.wait()
