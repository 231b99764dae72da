"""Keeping every process of a run together, so that all of it can be stopped.

A run's program can start children that leave its process group, its session
and its environment (``setsid``, ``env -i``, a double fork, a chain of
processes each starting the next and exiting at once). Nothing of that may
outlive the run. Two ways of holding a run, behind one small interface:

* ``CgroupContainment``: each run gets a cgroup v2 directory of its own under
  the agent's cgroup (the unit has ``Delegate=yes``). The child joins it
  before it runs a single instruction of the program, a process cannot leave
  it without root writing to the cgroup tree, and ``cgroup.kill`` stops all of
  it in one step, forks in flight included. This is the strong way.
* ``SweepContainment``: where no writable cgroup v2 is mounted (a container,
  an old kernel), the processes carrying the run's ``MOZAGENT_RUN`` mark and
  the orphans re-parented to the agent (a child subreaper) are found in
  ``/proc``, stopped with SIGSTOP first (a stopped process cannot fork), then
  killed. A process that drops the mark and is quick enough can slip between
  two scans; when anything is still alive at the deadline the run fails and
  says so.

Either way a run whose processes could not all be stopped is a failed run,
with the reason, never a success.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MARK_ENV = "MOZAGENT_RUN"
CLEANUP_SECONDS = 10.0
PR_SET_CHILD_SUBREAPER = 36
RUN_CGROUP_PREFIX = "mozagent-run-"
# Where the agent itself moves when it enables a controller for its runs
# (cgroup v2 lets no process stay in a group whose children get controllers).
AGENT_CGROUP = "mozagent-agent"
# At most this many processes (threads included) in one run: a fork bomb in an
# install script stops there instead of at the host's pid_max. A puppet run
# that installs packages uses a few dozen.
RUN_PIDS_MAX = 4096

_subreaper = False


def become_subreaper() -> bool:
    """Ask Linux to re-parent our descendants' orphans to us; False where unsupported.

    Only the daemon (and ``daemon --once``) does this: they have no children but
    their runs, so any other child of theirs is an orphan of a run. A process
    that did not ask (a test runner with servers of its own) never has its
    children touched.
    """
    global _subreaper
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _subreaper = False
    return _subreaper


# --- /proc ----------------------------------------------------------------------


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return []
    # The command name may hold spaces and parentheses: parse after the last ')'.
    return data[data.rfind(b")") + 2 :].split()


def _ppid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def _state(pid: int) -> bytes:
    """One letter (R, S, T, Z...), or b"" when the process is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else b""


def carries_mark(pid: int, mark: str) -> bool:
    needle = f"{MARK_ENV}={mark}".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return needle in fh.read().split(b"\0")
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Running or stopped: not a zombie, not gone."""
    return _state(pid) not in (b"Z", b"X", b"")


def leftovers(mark: str) -> list[int]:
    """Live processes of the run: those with its mark, and orphans re-parented to us."""
    me = os.getpid()
    out = []
    for pid in _pids():
        if pid == me or not _alive(pid):
            continue
        if (_subreaper and _ppid(pid) == me and pid not in _own_children) or carries_mark(
            pid, mark
        ):
            out.append(pid)
    return out


def marked_only(mark: str, find: Callable[[str], list[int]] = leftovers) -> list[int]:
    """``find``'s processes that carry ``mark`` (not the orphans it also counts)."""
    return [pid for pid in find(mark) if carries_mark(pid, mark)]


def orphans() -> list[int]:
    """Our children that we did not start: orphans of runs re-parented to us.

    Read from ``/proc/self/task/*/children``, a few small files, so a sweep can
    look again every few microseconds: a chain of processes that fork and
    exit lands here one generation at a time.
    """
    if not _subreaper:
        return []
    out: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as fh:
                out.extend(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            continue
    return [pid for pid in out if pid not in _own_children]


def kill_orphans(kill: Callable[[int, int], None], seconds: float = 2.0) -> int:
    """SIGKILL orphans as fast as they are re-parented to us, until none is alive
    or ``seconds`` pass.

    Killed before they are reaped: a child's pid is not free for reuse until we
    collect it, so a kill by pid cannot reach another process.
    """
    killed = 0
    deadline = time.monotonic() + seconds
    stopped: set[int] = set()
    while time.monotonic() < deadline:
        live = [pid for pid in orphans() if _alive(pid)]
        # Stopped first, as the sweep does: a chain that forks and exits
        # outruns kills one generation at a time, but a stopped process
        # forks nothing more; what it forked before shows up here in turn.
        new = [pid for pid in live if pid not in stopped]
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGSTOP)
            stopped.add(pid)
        if new:
            continue
        for pid in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
            killed += 1
        reap_orphans()
        if not live:
            break
    return killed


# --- reaping ---------------------------------------------------------------------

# Children we started ourselves (the child runner's Popen): their exit status belongs
# to subprocess, so the reaper must never collect it.
_own_children: set[int] = set()


def own_child(pid: int) -> None:
    _own_children.add(pid)


def disown_child(pid: int) -> None:
    _own_children.discard(pid)


def reap_orphans(limit: int = 10_000) -> int:
    """Collect exited orphans re-parented to us, without a scan of /proc.

    Called often while a run lasts (every wake of its wait loop), so a run
    whose children fork and exit in a loop never fills the process table with
    zombies. ``waitid(WNOWAIT)`` names a waitable child without collecting it;
    when that is one of ours (left for subprocess), our children's list
    (``orphans``, a few small files) is read instead.
    """
    if not _subreaper:
        return 0
    reaped = 0
    while reaped < limit:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None:
            return reaped
        if info.si_pid in _own_children:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, os.WNOHANG)
        reaped += 1
    for pid in orphans():
        if _state(pid) == b"Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
                reaped += 1
    return reaped


# --- the interface ------------------------------------------------------------------


@dataclass
class Cleanup:
    """What stopping a run's processes did. ``error`` set means some are still alive."""

    killed: int = 0
    left: list[int] = field(default_factory=list)
    error: str | None = None


Kill = Callable[[int, int], None]


class RunGroup(ABC):
    """The processes of one run."""

    def __init__(self, mark: str) -> None:
        self.mark = mark

    def preexec(self) -> Callable[[], None] | None:
        """What the child runs between fork and exec to join the group, if anything."""
        return None

    def join_fd(self) -> int | None:
        """A file whose write of ``0`` puts the writer in the group, for a child
        forked by another process (the warm puppet runner), if the group has one."""
        return None

    def record(self) -> dict[str, Any]:
        """What the ledger keeps, for a restarted agent to find the group."""
        return {"mark": self.mark}

    @abstractmethod
    def clean(self, timeout: float = CLEANUP_SECONDS) -> Cleanup:
        """Stop everything of the run that is still alive; bounded by ``timeout``."""


class Containment(ABC):
    """How this agent holds its runs; chosen once, at start."""

    name: str

    @abstractmethod
    def open(self, mark: str) -> RunGroup: ...

    @abstractmethod
    def recover(self, record: dict[str, Any]) -> int:
        """Kill what a previous agent's run (its ledger ``record``) left; how many."""


# --- the fallback: /proc sweeps ---------------------------------------------------


def _send(pid: int, sig: int) -> None:
    os.kill(pid, sig)


def _checked_kill(mark: str, kill: Kill) -> Kill:
    """A kill by pid that cannot reach a process that merely reused the pid.

    A process of the run found in /proc may exit, and its pid be taken by an
    unrelated process, before the signal goes out (a fork loop wraps
    ``pid_max`` fast). A pidfd holds one process; the mark (or being our
    child) is checked again through it before the signal is sent.
    """
    if kill is not _send:
        return kill  # an injected kill (tests) is called as it is

    def send(pid: int, sig: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return  # gone (or no pidfds: then we do not guess)
        try:
            if carries_mark(pid, mark) or (_subreaper and _ppid(pid) == os.getpid()):
                signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)

    return send


def sweep(
    mark: str,
    timeout: float = CLEANUP_SECONDS,
    kill: Kill = _send,
    clock: Callable[[], float] = time.monotonic,
    find: Callable[[str], list[int]] = leftovers,
    orphans_too: bool = True,
) -> Cleanup:
    """SIGSTOP every process of the run found, scanning again while new ones turn
    up, then SIGKILL them all; repeated until nothing is left or ``timeout`` passes.

    Stopping first is what catches a chain of processes that fork and exit:
    a stopped process starts nothing more, so each scan leaves fewer to find.
    The stopping half is bounded too, so a process that never stops (one in
    uninterruptible sleep) is still sent SIGKILL. Without ``orphans_too``,
    only the mark's processes: for a sweep while another run may be going on
    (the warm puppet parent's), whose orphans are that run's to clean up.
    """
    kill = _checked_kill(mark, kill)
    killed: set[int] = set()
    stopped: set[int] = set()
    start = clock()
    deadline, stop_until = start + timeout, start + timeout / 2
    found: list[int] = []
    killed_orphans = 0
    if not orphans_too:
        find = functools.partial(marked_only, find=find)
    while True:
        orphans_now = kill_orphans(kill) if orphans_too else 0
        killed_orphans += orphans_now
        found = find(mark)
        if not found and not orphans_now:  # a whole look found nothing alive
            return Cleanup(len(killed) + killed_orphans)
        if clock() > deadline:
            break
        if not found:
            continue  # orphans were killed: what they had started is ours now
        new = [pid for pid in found if pid not in stopped]
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGSTOP)
            stopped.add(pid)
        if new and clock() < stop_until:
            continue  # they may have started others before they stopped: look again
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.01)
    if not found:  # only orphans, and they kept coming
        return Cleanup(
            len(killed) + killed_orphans,
            [],
            f"processes re-parented to the agent kept appearing for {timeout:g} s",
        )
    return Cleanup(
        len(killed),
        found,
        f"{len(found)} process(es) of the run could not be stopped within {timeout:g} s "
        f"(pids {', '.join(map(str, found[:10]))})",
    )


class _SweptRun(RunGroup):
    def __init__(self, mark: str, kill: Kill) -> None:
        super().__init__(mark)
        self._kill = kill

    def clean(self, timeout: float = CLEANUP_SECONDS) -> Cleanup:
        return sweep(self.mark, timeout, self._kill)


class SweepContainment(Containment):
    name = "processes"

    def __init__(self, kill: Kill = _send) -> None:
        self._kill = kill

    def open(self, mark: str) -> RunGroup:
        return _SweptRun(mark, self._kill)

    def recover(self, record: dict[str, Any]) -> int:
        return sweep(str(record.get("mark") or ""), kill=self._kill).killed


# --- the strong way: a cgroup v2 directory per run -------------------------------


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup``, or ``.../unified`` on hybrid hosts)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            return before.split(" ")[4]
    return None


def own_cgroup(path: str = "/proc/self/cgroup") -> str | None:
    """This process's cgroup v2 path (the ``0::`` line), e.g. ``/system.slice/x.service``."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


def _populated(directory: str) -> bool:
    for line in _read(os.path.join(directory, "cgroup.events")).splitlines():
        if line.startswith("populated "):
            return line.split()[1] != "0"
    return os.path.isdir(directory) and bool(_procs(directory))


def _procs(directory: str) -> list[int]:
    return [int(p) for p in _read(os.path.join(directory, "cgroup.procs")).split() if p.isdigit()]


def kill_cgroup(
    directory: str, timeout: float = CLEANUP_SECONDS, clock: Callable[[], float] = time.monotonic
) -> Cleanup:
    """Kill everything in a run's cgroup, wait until it is empty, remove it."""
    if not os.path.isdir(directory):
        return Cleanup()
    killed = len(_procs(directory))
    deadline = clock() + timeout
    while True:
        if os.path.exists(os.path.join(directory, "cgroup.kill")):
            with contextlib.suppress(OSError):
                _write(os.path.join(directory, "cgroup.kill"), "1")
        else:  # before Linux 5.14: freeze, kill each, thaw (SIGKILL reaches frozen tasks)
            with contextlib.suppress(OSError):
                _write(os.path.join(directory, "cgroup.freeze"), "1")
            for pid in _procs(directory):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                _write(os.path.join(directory, "cgroup.freeze"), "0")
        reap_orphans()
        if not _populated(directory):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY or clock() > deadline:
                    return Cleanup(killed, [], f"cannot remove the run's cgroup {directory}: {exc}")
                time.sleep(0.01)
                continue
            return Cleanup(killed)
        if clock() > deadline:
            left = _procs(directory)
            return Cleanup(
                killed,
                left,
                f"{len(left)} process(es) in the run's cgroup {directory} could not be "
                f"stopped within {timeout:g} s",
            )
        time.sleep(0.01)


class _CgroupRun(RunGroup):
    def __init__(self, mark: str, directory: str, pids_max: int | None = None) -> None:
        super().__init__(mark)
        self.directory = directory
        os.mkdir(directory, 0o755)
        try:
            if pids_max is not None:
                _write(os.path.join(directory, "pids.max"), str(pids_max))
            # Opened by us (root), written by the child after it dropped to the
            # app's user: the kernel judges a cgroup.procs write by the
            # credentials of whoever opened the file.
            self._procs_fd: int | None = os.open(
                os.path.join(directory, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC
            )
        except OSError:
            os.rmdir(directory)
            raise

    def preexec(self) -> Callable[[], None] | None:
        fd = self._procs_fd
        if fd is None:
            return None

        def join() -> None:
            # Runs in the child between fork and exec: one system call, nothing
            # that could take a lock another thread held at the fork. "0" is
            # the writing process itself.
            os.write(fd, b"0")

        return join

    def join_fd(self) -> int | None:
        return self._procs_fd

    def record(self) -> dict[str, Any]:
        return {"mark": self.mark, "cgroup": self.directory}

    def clean(self, timeout: float = CLEANUP_SECONDS) -> Cleanup:
        self.close()
        started = time.monotonic()
        done = kill_cgroup(self.directory, timeout)
        # A second net for what left the cgroup (only root can move a process
        # out) and for orphans re-parented to us.
        rest = sweep(self.mark, max(timeout - (time.monotonic() - started), 0.5))
        return Cleanup(done.killed + rest.killed, done.left + rest.left, done.error or rest.error)

    def close(self) -> None:
        if self._procs_fd is not None:
            os.close(self._procs_fd)
            self._procs_fd = None


class CgroupContainment(Containment):
    name = "cgroup"

    def __init__(self, parent: str, pids_max: int | None = None) -> None:
        self.parent = parent
        self.pids_max = pids_max

    def open(self, mark: str) -> RunGroup:
        return _CgroupRun(mark, os.path.join(self.parent, RUN_CGROUP_PREFIX + mark), self.pids_max)

    def recover(self, record: dict[str, Any]) -> int:
        directory = record.get("cgroup")
        killed = 0
        if isinstance(directory, str) and self._ours(directory):
            killed += kill_cgroup(directory).killed
        return killed + sweep(str(record.get("mark") or "")).killed

    def _ours(self, directory: str) -> bool:
        return os.path.dirname(directory) == self.parent and os.path.basename(directory).startswith(
            RUN_CGROUP_PREFIX
        )


def cgroup_parent() -> tuple[str | None, str]:
    """The directory run cgroups go in, or None and why there is none."""
    mount = cgroup2_mount()
    if mount is None:
        return None, "no cgroup v2 file system is mounted"
    own = own_cgroup()
    if own is None:
        return None, "this process is in no cgroup v2 group"
    parent = os.path.normpath(mount + "/" + own.lstrip("/"))
    try:
        probe = _CgroupRun("probe", os.path.join(parent, f"{RUN_CGROUP_PREFIX}probe-{os.getpid()}"))
    except OSError as exc:
        return None, f"cannot create a cgroup under {parent}: {exc.strerror or exc}"
    try:
        why = _probe_join(probe)
    finally:
        probe.clean(timeout=2.0)
    return (None, why) if why else (parent, "")


def _probe_join(probe: RunGroup) -> str:
    """Can a child that dropped to another user join a cgroup through our fd?

    That is how every run joins its cgroup (an app's install script and orders
    run as its user). Linux judges a ``cgroup.procs`` write by the opener's
    credentials since 5.16; an older kernel refuses it, and then each run
    would fail to start: better to know at start and use sweeps.
    """
    import subprocess  # here: only the daemon's start pays for it

    drop: dict[str, Any] = (
        {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    )
    try:
        subprocess.run(["/bin/true"], preexec_fn=probe.preexec(), check=True, timeout=10, **drop)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"a child cannot join a cgroup after dropping privileges ({exc})"
    return ""


def choose(mode: str) -> tuple[Containment, str]:
    """The containment for ``mode`` (auto, cgroup, processes), and a note for the log.

    Raises RuntimeError when ``cgroup`` is required and not usable.
    """
    if mode == "processes":
        return SweepContainment(), "process sweeps (configured)"
    parent, why = cgroup_parent()
    if parent is None:
        if mode == "cgroup":
            raise RuntimeError(f"containment is cgroup, but {why}")
        return SweepContainment(), f"process sweeps ({why})"
    unlimited = enable_pids(parent)
    if unlimited:
        return CgroupContainment(parent), f"a cgroup per run under {parent} ({unlimited})"
    return (
        CgroupContainment(parent, RUN_PIDS_MAX),
        f"a cgroup per run under {parent} (pids.max {RUN_PIDS_MAX})",
    )


def enable_pids(parent: str) -> str:
    """Give run cgroups the pids controller; "" when done, else why there is no limit.

    Under systemd (``Delegate=yes``) the agent is alone in its unit's cgroup:
    it moves into a leaf of its own first, as cgroup v2 requires. Anywhere
    else it shares its group with other processes and leaves it as it is.
    """
    if "pids" not in _read(os.path.join(parent, "cgroup.controllers")).split():
        return "no process limit: the pids controller is not delegated to the agent"
    if "pids" in _read(os.path.join(parent, "cgroup.subtree_control")).split():
        return ""
    procs = _procs(parent)
    if procs and procs != [os.getpid()]:
        return "no process limit: the agent shares its cgroup with other processes"
    try:
        if procs:
            leaf = os.path.join(parent, AGENT_CGROUP)
            os.makedirs(leaf, exist_ok=True)
            _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        _write(os.path.join(parent, "cgroup.subtree_control"), "+pids")
    except OSError as exc:
        return f"no process limit: cannot enable the pids controller ({exc.strerror or exc})"
    return ""


_default: Containment = SweepContainment()


def set_default(containment: Containment) -> None:
    """The daemon's choice, for runs started without one (process-wide, like the subreaper)."""
    global _default
    _default = containment


def default() -> Containment:
    return _default
