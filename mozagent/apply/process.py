"""Running one child program for an applier, and leaving nothing of it behind.

puppet, scripts, hooks, git, install scripts and orders start children of
their own: an ``exec`` resource, a package manager, a daemon started the wrong
way, a chain of processes that each start the next. Every run is held by the
agent's containment (``apply/contain.py``: a cgroup per run where the kernel
offers one, /proc sweeps of the run's ``MOZAGENT_RUN`` mark and of the orphans
re-parented to the agent elsewhere). While the run lasts, exited orphans are
reaped at every wake of its wait loop, so a fork loop cannot fill the process
table with zombies; when it ends (finished, timed out or aborted), everything
of it still alive is killed, and a run whose processes could not all be
stopped is a failed run, with the reason (``ChildExit.cleanup_error``).

Every applier runs its children through one ``ChildRunner`` (the agent's
cancel event, the ledger, the heartbeat) and judges them by one ``ChildExit``:
how a child ended (exit status, signal, timeout, abort, a program that could
not start) is described here once, and each applier only words it for its
reader (a Heat signal, an order result, an install log).

The run in progress is recorded in a ledger file (its mark and cgroup), so an
agent restarted after ``kill -9`` stops what its predecessor left running
before it starts a run of its own (two puppets never run at once).
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import subprocess
import threading
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import structlog

from mozagent.apply import contain
from mozagent.apply.contain import MARK_ENV, Containment, RunGroup
from mozagent.apply.runas import RunAs
from mozagent.fileio import read_json, write_json

__all__ = [
    "MARK_ENV",
    "ChildApplier",
    "ChildExit",
    "ChildRunner",
    "ChildSpec",
    "LaunchFailed",
    "Launched",
    "Launcher",
    "Ledger",
    "signal_name",
]

ABORT_GRACE_SECONDS = 10.0

log = structlog.get_logger("mozagent")


class Ledger:
    """The run in progress, on disk, so that a restarted agent can clean up after
    it; and how runs are held (the daemon's containment, chosen at start)."""

    def __init__(self, path: str, containment: Containment | None = None) -> None:
        self.path = path
        self._containment = containment

    @property
    def containment(self) -> Containment:
        return self._containment or contain.default()

    def begin(self, group: RunGroup, what: str, also: str | None = None) -> None:
        """``also``: a second mark the run's processes may carry (the warm
        runner's, which a child it forks shows in /proc instead of the run's)."""
        record = {**group.record(), "what": what, "started": time.time()}
        if also:
            record["also"] = also
        write_json(self.path, record, 0o600, False)

    def end(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def recover(self) -> tuple[str | None, int]:
        """Kill what a previous agent's run left running; (what it was, how many killed)."""
        try:
            doc = read_json(self.path)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("mark"), str):
            self.end()
            return None, 0
        killed = self.containment.recover(doc)
        if isinstance(doc.get("also"), str) and doc["also"]:
            killed += contain.sweep(doc["also"]).killed
        self.end()
        return str(doc.get("what") or "?"), killed


@dataclass
class ChildExit:
    """How a child program ended. ``returncode`` is None when it could not start
    (``start_error`` says why: "not found" for a missing program)."""

    returncode: int | None
    stopped: str | None = None  # why we stopped it (timeout, abort), if we did
    start_error: str | None = None
    # Set when some process of the run could not be stopped: the run failed.
    cleanup_error: str | None = None
    tail: list[str] = field(default_factory=list)
    leftovers_killed: int = 0
    # With ``split_stderr``: the end of each stream, at most ``keep_bytes`` each.
    stdout: str = ""
    stderr: str = ""
    trimmed: bool = False
    # Set when a launcher other than exec (the warm puppet runner) failed the
    # run before or while it ran: the caller may run it again the plain way.
    runner_failed: str | None = None
    # CPU seconds the run used, its own children's included (the run budget).
    cpu_s: float = 0.0

    @property
    def code(self) -> int | None:
        """The exit status as a shell shows it: 128 + N for a child killed by
        signal N, so an operator reads it as in a terminal."""
        if self.returncode is None:
            return None
        return self.returncode if self.returncode >= 0 else 128 - self.returncode

    @property
    def ok(self) -> bool:
        """Exited 0 by itself, and nothing of the run was left alive."""
        return self.returncode == 0 and not self.stopped and not self.cleanup_error

    def how(self, timeout: float) -> str:
        """How it ended, worded to follow the program's name ("the install
        script timed out after 4 s and was killed")."""
        if self.returncode is None:
            return f"could not start: {self.start_error}"
        if self.stopped == "timeout":
            return f"timed out after {timeout:g} s and was killed"
        if self.stopped == "aborted":
            return "was stopped: the agent is shutting down"
        if self.returncode < 0:
            return f"was killed by {signal_name(-self.returncode)}"
        return f"exited with status {self.returncode}"

    def failure(self, timeout: float) -> str | None:
        """Why the run counts as failed, None if it did not: a run that exited
        by itself but left processes that could not be stopped failed too."""
        if self.ok:
            return None
        if self.returncode is not None and not self.stopped and self.cleanup_error:
            return f"{self.how(timeout)}, but {self.cleanup_error}"
        return self.how(timeout)

    def leftovers(self) -> str:
        """The processes the run left behind and the agent killed, as a note."""
        if not self.leftovers_killed:
            return ""
        return f"{self.leftovers_killed} process(es) it left behind were killed"


def signal_name(number: int) -> str:
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class ChildSpec:
    """What to start: the program, its environment, where, as whom."""

    cmd: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None = None
    stdin_data: str | None = None
    split_stderr: bool = False
    run_as: RunAs | None = None


class LaunchFailed(Exception):
    """A launcher could not start the run; nothing of it is running."""


class Launched(ABC):
    """A run started by another process on the agent's behalf (a warm runner's
    fork): what the supervision loop needs of a child it did not fork itself,
    shaped like ``subprocess.Popen``."""

    pid: int
    stdout: IO[str]
    stderr: IO[str] | None
    stdin: None = None
    returncode: int | None = None
    # Why the run's end cannot be known (the launcher died during it).
    lost: str | None = None

    @abstractmethod
    def poll(self) -> int | None: ...

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int:
        """The exit status; ``subprocess.TimeoutExpired`` after ``timeout``."""

    @abstractmethod
    def exit_fd(self) -> int:
        """A file descriptor that becomes readable when the run's end is known."""

    def cpu_seconds(self) -> float:
        """CPU seconds the run used, known once it ended: the agent never waits
        for it, so its own rusage does not count it."""
        return 0.0


class Launcher(ABC):
    """Another way to start a run than fork and exec: ``launch`` starts the
    spec in ``group`` (its join fd, its mark in the environment) or raises
    LaunchFailed."""

    mark: str | None = None  # what its own processes carry (for the ledger)

    @abstractmethod
    def launch(self, spec: ChildSpec, group: RunGroup) -> Launched: ...


class ChildRunner:
    """How the agent runs any child: stopped by ``cancel`` (the agent is
    stopping), recorded in ``ledger`` (a restarted agent cleans up after it),
    beating ``progress`` while it waits (a long run is not a stuck agent).
    One per agent, handed to every applier."""

    def __init__(
        self,
        cancel: threading.Event,
        ledger: Ledger | None = None,
        progress: Callable[[], None] | None = None,
    ) -> None:
        self.cancel = cancel
        self.ledger = ledger
        self.progress = progress

    def run(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str],
        timeout: float,
        *,
        on_line: Callable[[str], None] | None = None,
        tail_lines: int = 40,
        cwd: str | None = None,
        stdin_data: str | None = None,
        split_stderr: bool = False,
        keep_bytes: int = 400 * 1024,
        run_as: RunAs | None = None,
        launcher: Launcher | None = None,
    ) -> ChildExit:
        """Run ``cmd`` to its end, ``timeout`` or the cancel; then clean up after it.

        stdout and stderr are merged and kept as a tail of ``tail_lines``
        lines; with ``split_stderr`` each stream is also kept apart, its last
        ``keep_bytes`` characters (a Heat signal carries both, and errors are
        at the end). ``run_as`` drops to an unprivileged user (an app's
        install script and orders never run as root). ``launcher``: started
        by it instead of exec'd here (everything else holds the same).
        """
        ledger = self.ledger
        mark = uuid.uuid4().hex
        full_env = dict(env)
        full_env[MARK_ENV] = mark
        group = _open_group(ledger, mark)
        try:
            if ledger is not None:
                ledger.begin(group, " ".join(cmd[:2]), launcher.mark if launcher else None)
        except OSError as exc:  # a full disk: nothing may start that cannot be found again
            group.clean()
            return ChildExit(None, start_error=f"cannot record the run in {ledger.path}: {exc}")
        spec = ChildSpec(cmd, full_env, cwd, stdin_data, split_stderr, run_as)
        try:
            watch = _Watch(timeout, self.cancel, on_line, self.progress, tail_lines, keep_bytes)
            return _supervise(spec, launcher, group, watch)
        finally:
            if ledger is not None:
                ledger.end()


class ChildApplier:
    """The shape the appliers that run one child per job share (script and
    hook deployments, the install script, orders): the agent's runner and
    their own time limit, so a new applier is its job's wording and nothing
    of how children are run."""

    def __init__(self, runner: ChildRunner, timeout: float) -> None:
        self.runner = runner
        self.timeout = timeout

    @property
    def cancel(self) -> threading.Event:
        return self.runner.cancel

    def child(self, cmd: Sequence[str], env: Mapping[str, str], **options: Any) -> ChildExit:
        return self.runner.run(cmd, env, self.timeout, **options)


class _Tail:
    """The last ``limit`` characters of a stream, and whether more came before."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: deque[str] = deque()
        self.size = 0
        self.trimmed = False

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        while self.size > self.limit and self.parts:
            extra = self.size - self.limit
            head = self.parts[0]
            if len(head) <= extra:
                self.parts.popleft()
                self.size -= len(head)
            else:
                self.parts[0] = head[extra:]
                self.size -= extra
            self.trimmed = True

    def text(self) -> str:
        body = "".join(self.parts)
        if self.trimmed:
            return (
                f"[mozagent: output trimmed: only its last {self.limit} characters kept]\n" + body
            )
        return body


def _open_group(ledger: Ledger | None, mark: str) -> RunGroup:
    containment = ledger.containment if ledger is not None else contain.default()
    try:
        return containment.open(mark)
    except OSError as exc:
        # The cgroup tree refused this one run (it worked at start): hold it
        # with sweeps rather than not at all, and say so.
        log.warning("run_cgroup_unavailable", error=str(exc), fallback="process sweeps")
        return contain.SweepContainment().open(mark)


@dataclass(frozen=True)
class _Watch:
    """How a started child is followed: its time, the agent's cancel, its output."""

    timeout: float
    cancel: threading.Event
    on_line: Callable[[str], None] | None
    progress: Callable[[], None] | None
    tail_lines: int
    keep_bytes: int
    # The agent's children's CPU when the run began (an exec'd run's share).
    cpu_before: float = field(default_factory=lambda: _children_cpu())


def _supervise(
    spec: ChildSpec, launcher: Launcher | None, group: RunGroup, watch: _Watch
) -> ChildExit:
    cmd, split_stderr, stdin_data = spec.cmd, spec.split_stderr, spec.stdin_data

    def start(join: Callable[[], None] | None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
            stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
            env=spec.env,
            cwd=spec.cwd,
            start_new_session=True,
            text=True,
            errors="replace",
            preexec_fn=join,
            **(spec.run_as.popen_args() if spec.run_as is not None else {}),
        )

    proc: subprocess.Popen[str] | Launched
    if launcher is not None:
        try:
            proc = launcher.launch(spec, group)
        except LaunchFailed as exc:
            group.clean()
            return ChildExit(None, start_error=str(exc), runner_failed=str(exc))
    else:
        try:
            proc, group = _exec(spec, group, start)
        except FileNotFoundError:
            group.clean()
            return ChildExit(None, start_error="not found")
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # not executable, not a program, out of memory, a NUL byte in an
            # argument or the environment, the cgroup refused the child...
            group.clean()
            return ChildExit(None, start_error=str(exc) or type(exc).__name__)
        contain.own_child(proc.pid)
    return _follow(proc, spec, group, watch)


def _exec(
    spec: ChildSpec,
    group: RunGroup,
    start: Callable[[Callable[[], None] | None], subprocess.Popen[str]],
) -> tuple[subprocess.Popen[str], RunGroup]:
    """Fork and exec the child into the run's group; the group that holds it."""
    join = group.preexec()
    try:
        return start(join), group
    except subprocess.SubprocessError as exc:
        if join is None:
            raise
        # The child could not join the run's cgroup (the probe at start
        # passed, so the cgroup tree changed since): hold this run with
        # sweeps rather than not run it.
        log.warning("run_cgroup_join_failed", error=str(exc), fallback="process sweeps")
        group.clean()
        group = contain.SweepContainment().open(group.mark)
        return start(None), group


def _follow(
    proc: subprocess.Popen[str] | Launched, spec: ChildSpec, group: RunGroup, watch: _Watch
) -> ChildExit:
    """Wait for a started child: its output, its deadline, the cancel; then clean up."""
    cmd, split_stderr, stdin_data = spec.cmd, spec.split_stderr, spec.stdin_data
    on_line, progress, cancel = watch.on_line, watch.progress, watch.cancel
    tail: deque[str] = deque(maxlen=watch.tail_lines)
    streams = {"stdout": _Tail(watch.keep_bytes), "stderr": _Tail(watch.keep_bytes)}

    def pump(stream: Any, kept: _Tail) -> None:
        for raw in stream:
            kept.add(raw)
            line = raw.rstrip("\n")
            tail.append(line)
            if on_line is not None:
                on_line(line)

    assert proc.stdout is not None
    readers = [threading.Thread(target=pump, args=(proc.stdout, streams["stdout"]), daemon=True)]
    if split_stderr:
        assert proc.stderr is not None
        readers.append(
            threading.Thread(target=pump, args=(proc.stderr, streams["stderr"]), daemon=True)
        )
    for reader in readers:
        reader.start()
    if stdin_data is not None:
        threading.Thread(target=_feed, args=(proc, stdin_data), daemon=True).start()
    deadline = time.monotonic() + watch.timeout  # a clock step must not cut a run short
    stopped = None
    exited = _exit_waiter(proc)
    try:
        while proc.poll() is None:
            if progress is not None:
                progress()
            if cancel.is_set():
                stopped = "aborted"
            elif time.monotonic() >= deadline:
                stopped = "timeout"
            if stopped:
                _terminate(proc)
                break
            # Wakes the moment the child exits (a pidfd), else after 50 ms
            # to check cancel and the deadline: polling alone cost a Heat
            # signal up to 50 ms after puppet was done.
            exited(0.05)
            contain.reap_orphans()
        proc.wait()
    finally:
        if proc.poll() is None:
            _terminate(proc)
        if not isinstance(proc, Launched):
            contain.disown_child(proc.pid)
        # Its children may hold the output pipe open: kill them before
        # waiting for the reader to see the end of it.
        cleanup = group.clean()
        for reader in readers:
            reader.join(timeout=5)
    if cleanup.error:
        log.error("run_not_cleaned_up", command=" ".join(cmd[:2]), error=cleanup.error)
    if isinstance(proc, Launched):
        cpu_s = proc.cpu_seconds()
    else:
        cpu_s = max(_children_cpu() - watch.cpu_before, 0.0)
    return ChildExit(
        proc.returncode,
        stopped,
        None,
        cleanup.error,
        list(tail),
        cleanup.killed,
        streams["stdout"].text(),
        streams["stderr"].text(),
        streams["stdout"].trimmed or streams["stderr"].trimmed,
        runner_failed=proc.lost if isinstance(proc, Launched) else None,
        cpu_s=round(cpu_s, 3),
    )


def _children_cpu() -> float:
    """CPU seconds of every child the agent has waited for (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _exit_waiter(proc: subprocess.Popen[str] | Launched) -> Callable[[float], None]:
    """A wait of at most ``seconds`` that returns as soon as the child exits
    (its pidfd; a launched run's own descriptor)."""
    if isinstance(proc, Launched):
        fd, owned = proc.exit_fd(), False
    else:
        try:
            fd, owned = os.pidfd_open(proc.pid), True
        except (AttributeError, OSError):
            return time.sleep
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def wait(seconds: float) -> None:
        poller.poll(seconds * 1000)

    if owned:
        weakref.finalize(wait, os.close, fd)
    return wait


def _feed(proc: subprocess.Popen[str] | Launched, data: str) -> None:
    """Write stdin from a thread: a child that does not read it must not block us."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _terminate(proc: subprocess.Popen[str] | Launched) -> None:
    """SIGTERM the program's process group, then SIGKILL after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=ABORT_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()
