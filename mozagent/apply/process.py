"""Running one child program for an applier, and leaving nothing of it behind.

puppet (and, later, scripts and hooks) start children of their own: an
``exec`` resource, a package manager, a daemon started the wrong way. A
process group is not enough to find them all (a child can call ``setsid``), so
two nets are used together:

* the agent is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): an orphan of
  the run is re-parented to the agent, not to PID 1, so it can be found and
  reaped;
* every process of a run inherits ``MOZAGENT_RUN=<mark>`` in its environment,
  and the mark is recorded in a ledger file while the run lasts, so an agent
  restarted after ``kill -9`` finds and stops what its predecessor left running
  before it starts a run of its own (two puppets never run at once).

When a run ends (finished, timed out or aborted), every process carrying its
mark and every orphan re-parented to the agent is killed and reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mozagent.apply.runas import RunAs
from mozagent.fileio import read_json, write_json

MARK_ENV = "MOZAGENT_RUN"
ABORT_GRACE_SECONDS = 10.0
CLEANUP_SECONDS = 10.0
PR_SET_CHILD_SUBREAPER = 36


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


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: parse after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return True
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] == b"Z"


def carries_mark(pid: int, mark: str) -> bool:
    needle = f"{MARK_ENV}={mark}".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return needle in fh.read().split(b"\0")
    except OSError:
        return False


def leftovers(mark: str, spare: Sequence[int] = ()) -> list[int]:
    """Live processes of the run: those with its mark, and orphans re-parented to us."""
    me = os.getpid()
    out = []
    for pid in _pids():
        if pid == me or pid in spare or _is_zombie(pid):
            continue
        if (_subreaper and _ppid(pid) == me) or carries_mark(pid, mark):
            out.append(pid)
    return out


def _reap_children() -> None:
    """Collect exit statuses of orphans re-parented to us, so none stays a zombie."""
    if not _subreaper:
        return
    me = os.getpid()
    for pid in _pids():
        if _ppid(pid) == me and _is_zombie(pid):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def kill_leftovers(mark: str, spare: Sequence[int] = (), timeout: float = CLEANUP_SECONDS) -> int:
    """SIGKILL everything the run left, until nothing is left or ``timeout`` passes.

    Returns how many processes were killed. Loops because a dying parent can
    hand its children over to us between two scans.
    """
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        _reap_children()
        found = leftovers(mark, spare)
        if not found or time.monotonic() > deadline:
            return len(killed)
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.02)


class Ledger:
    """The run in progress, on disk, so that a restarted agent can clean up after it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def begin(self, mark: str, what: str) -> None:
        write_json(self.path, {"mark": mark, "what": what, "started": time.time()}, 0o600, False)

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
        killed = kill_leftovers(doc["mark"])
        self.end()
        return str(doc.get("what") or "?"), killed


@dataclass
class Outcome:
    """How a child program ended. ``returncode`` is None when it could not start."""

    returncode: int | None
    stopped: str | None = None  # why we stopped it (timeout, abort), if we did
    start_error: str | None = None
    tail: list[str] = field(default_factory=list)
    leftovers_killed: int = 0
    # With ``split_stderr``: the end of each stream, at most ``keep_bytes`` each.
    stdout: str = ""
    stderr: str = ""
    trimmed: bool = False


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


def run_program(
    cmd: Sequence[str],
    env: Mapping[str, str],
    timeout: float,
    cancel: threading.Event,
    ledger: Ledger | None = None,
    on_line: Callable[[str], None] | None = None,
    progress: Callable[[], None] | None = None,
    tail_lines: int = 40,
    cwd: str | None = None,
    stdin_data: str | None = None,
    split_stderr: bool = False,
    keep_bytes: int = 400 * 1024,
    run_as: RunAs | None = None,
) -> Outcome:
    """Run ``cmd`` to its end, a timeout, or ``cancel``; then clean up after it.

    stdout and stderr are merged and kept as a tail of ``tail_lines`` lines;
    with ``split_stderr`` each stream is also kept apart, its last
    ``keep_bytes`` characters (a Heat signal carries both, and errors are at
    the end). ``progress`` is called while waiting, so that a supervisor can
    tell a long run from a stuck agent. ``run_as`` drops to an unprivileged
    user (an app's install script and orders never run as root).
    """
    mark = uuid.uuid4().hex
    full_env = dict(env)
    full_env[MARK_ENV] = mark
    if ledger is not None:
        ledger.begin(mark, " ".join(cmd[:2]))
    try:
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
                stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                text=True,
                errors="replace",
                **(run_as.popen_args() if run_as is not None else {}),
            )
        except FileNotFoundError:
            return Outcome(None, start_error="not found")
        except OSError as exc:  # not executable, not a program, out of memory...
            return Outcome(None, start_error=str(exc))
        tail: deque[str] = deque(maxlen=tail_lines)
        streams = {"stdout": _Tail(keep_bytes), "stderr": _Tail(keep_bytes)}

        def pump(stream: Any, kept: _Tail) -> None:
            for raw in stream:
                kept.add(raw)
                line = raw.rstrip("\n")
                tail.append(line)
                if on_line is not None:
                    on_line(line)

        assert proc.stdout is not None
        readers = [
            threading.Thread(target=pump, args=(proc.stdout, streams["stdout"]), daemon=True)
        ]
        if split_stderr:
            assert proc.stderr is not None
            readers.append(
                threading.Thread(target=pump, args=(proc.stderr, streams["stderr"]), daemon=True)
            )
        for reader in readers:
            reader.start()
        if stdin_data is not None:
            threading.Thread(target=_feed, args=(proc, stdin_data), daemon=True).start()
        deadline = time.monotonic() + timeout  # a clock step must not cut a run short
        stopped = None
        exited = _exit_waiter(proc.pid)
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
            proc.wait()
        finally:
            if proc.poll() is None:
                _terminate(proc)
            # Its children may hold the output pipe open: kill them before
            # waiting for the reader to see the end of it.
            killed = kill_leftovers(mark, spare=())
            for reader in readers:
                reader.join(timeout=5)
        return Outcome(
            proc.returncode,
            stopped,
            None,
            list(tail),
            killed,
            streams["stdout"].text(),
            streams["stderr"].text(),
            streams["stdout"].trimmed or streams["stderr"].trimmed,
        )
    finally:
        if ledger is not None:
            ledger.end()


def _exit_waiter(pid: int) -> Callable[[float], None]:
    """A wait of at most ``seconds`` that returns as soon as ``pid`` exits."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return time.sleep
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def wait(seconds: float) -> None:
        poller.poll(seconds * 1000)

    weakref.finalize(wait, os.close, fd)
    return wait


def _feed(proc: subprocess.Popen[str], data: str) -> None:
    """Write stdin from a thread: a child that does not read it must not block us."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _terminate(proc: subprocess.Popen[str]) -> None:
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
