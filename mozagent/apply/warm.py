"""Puppet runs forked from a warm parent (``warm_runner.rb``) instead of exec'd.

A bare ``puppet apply`` spends most of its time before puppet does anything:
Ruby, loading puppet, settings, facter. ``WarmPuppet`` keeps one Ruby process
that has done all of that and forks it once per run, so a run pays only for
its own work. It is a ``Launcher`` of the agent's child runner: the run gets
the argv, environment, output pipes and run group an exec'd puppet would, and
everything the runner promises (one run at a time, timeout, abort, nothing
left running, the ledger) holds the same; only who forks differs.

The parent is never reused stale: before a run, what it loaded (its Ruby
files, the puppet binary and interpreter, this module's runner) and the run's
modulepath are compared with what they were, and a change restarts it. It is
also retired after ``warm_max_runs`` runs or past ``warm_max_rss_mib``, and it
exits by itself after ``warm_idle_exit`` seconds without a run, so an idle
host does not carry it. A parent that cannot start, hangs in its warm-up or
dies raises ``LaunchFailed``: the caller runs that one run the plain way, says
why, and the next run tries the warm parent again.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from mozagent.apply import contain
from mozagent.apply.contain import MARK_ENV, RunGroup
from mozagent.apply.process import ChildSpec, Launched, Launcher, LaunchFailed
from mozagent.config import PuppetConfig
from mozagent.fileio import private_dir

log = structlog.get_logger("mozagent")

RUNNER = Path(__file__).with_name("warm_runner.rb")
MAX_MESSAGE = 256 * 1024  # the runner's receive size: a request over it goes the plain way
READY_MAX = 4 * 1024 * 1024  # the ready message lists the parent's loaded files
STARTED_TIMEOUT = 10.0  # from a request to the runner's "started"
# A run finding the parent still warming waits for it only if it should be
# ready within this long (its last warm-up's length tells): else the run is
# exec'd, and the parent keeps warming for the next one.
WAIT_FOR_WARM_UP = 1.0
FIRST_WARM_UP = 3.0  # what a warm-up is expected to take before one was seen
STOP_GRACE = 2.0  # a parent reads the end of its socket at once, unless it hangs

Fingerprint = tuple[tuple[str, int, int, int], ...]


def _stat(path: str) -> tuple[str, int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1, -1)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


def files_fingerprint(paths: list[str]) -> Fingerprint:
    """What the parent loaded: a package upgrade replaces files (new inode) or rewrites them."""
    return tuple(_stat(p) for p in paths)


def modulepath_fingerprint(modulepath: str) -> Fingerprint:
    """A modulepath's modules and the Ruby code under their ``lib/``: a new tree
    (a symlink moved to another ref), a module added, a fact or function changed."""
    out: list[tuple[str, int, int, int]] = []
    for entry in modulepath.split(":"):
        if not entry:
            continue
        real = os.path.realpath(entry)
        out.append(_stat(real))
        try:
            modules = sorted(os.listdir(real))
        except OSError:
            continue
        for module in modules:
            lib = os.path.join(real, module, "lib")
            out.append(_stat(os.path.join(real, module)))
            for top, dirs, files in os.walk(lib):
                dirs.sort()
                out.append(_stat(top))
                out.extend(_stat(os.path.join(top, f)) for f in sorted(files))
    return tuple(out)


def modulepath_of(argv: list[str]) -> str:
    for i, word in enumerate(argv[:-1]):
        if word == "--modulepath":
            return argv[i + 1]
    return ""


def interpreter_of(binary: str) -> tuple[str, str]:
    """The Ruby that runs ``binary`` (from its ``#!`` line), and the binary's
    path; LaunchFailed when it is not puppet's own Ruby launcher (a wrapper
    script, say), since the runner must load the puppet the binary would."""
    path = shutil.which(binary)
    if path is None:
        raise LaunchFailed(f"puppet binary {binary!r} not found")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise LaunchFailed(f"cannot read {path}: {exc.strerror}") from None
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    words = first[2:].split() if first.startswith("#!") else []
    if words and os.path.basename(words[0]) == "env" and len(words) > 1:
        found = shutil.which(words[1])
        words = [found] if found else []
    if not words or not os.path.basename(words[0]).startswith("ruby"):
        raise LaunchFailed(f"{path} is not a Ruby program (#! {first[2:80].strip()!r})")
    if b"puppet/util/command_line" not in head:
        raise LaunchFailed(f"{path} is not puppet's own launcher (a wrapper?)")
    return words[0], path


TICK = os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float | None:
    """CPU seconds of a process's waited-for children (a parent's forked runs)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / TICK
    except (OSError, ValueError, IndexError):
        return None


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Channel:
    """The parent's end of the SOCK_SEQPACKET socket: one JSON document per message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, doc: dict[str, Any], fds: list[int]) -> None:
        data = json.dumps(doc).encode()
        if len(data) > MAX_MESSAGE:
            raise LaunchFailed(f"the run's request is {len(data)} bytes, over {MAX_MESSAGE}")
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.sock.sendmsg([data], rights)
        except OSError as exc:
            raise LaunchFailed(f"the warm runner is gone ({exc.strerror or exc})") from None

    def receive(self, timeout: float | None, size: int = 65536) -> dict[str, Any] | None:
        """The next message; None at the end of the connection; TimeoutError."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            raise TimeoutError
        try:
            data = self.sock.recv(size)
        except OSError:
            return None
        if not data:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return {"bad": data[:200].decode("utf-8", "replace")}
        return doc if isinstance(doc, dict) else {"bad": str(doc)[:200]}


class Warming(LaunchFailed):
    """The parent is still warming up: this run goes the plain way; not a failure."""


class NotWarmable(LaunchFailed):
    """``puppet.binary`` cannot run warm (not puppet's own Ruby launcher):
    every run goes the plain way, said once until the binary changes."""


class RemoteRun(Launched):
    """A run the warm parent forked: its end is the parent's message."""

    def __init__(
        self,
        channel: _Channel,
        pid: int,
        stdout: IO[str],
        stderr: IO[str] | None,
        on_lost: Callable[[], None],
        parent_pid: int,
    ) -> None:
        self.channel = channel
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.on_lost = on_lost
        # The parent waits for its forks: a run's CPU is what its waited-for
        # children's grew by while it ran (one run at a time).
        self.parent_pid = parent_pid
        self._cpu_before = children_cpu(parent_pid)

    def _ended(self, doc: dict[str, Any] | None) -> int:
        if doc is not None and isinstance(doc.get("exit"), int):
            self.returncode = doc["exit"]
        elif doc is not None and isinstance(doc.get("signal"), int):
            self.returncode = -doc["signal"]
        else:
            # The parent died (or spoke nonsense) mid-run: the run's end is unknown.
            self.lost = "the warm runner ended during the run" + (
                f" ({str(doc)[:200]})" if doc else ""
            )
            self.returncode = -signal.SIGKILL
            self.on_lost()
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            return self._ended(self.channel.receive(0))
        except TimeoutError:
            return None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        try:
            return self._ended(self.channel.receive(timeout))
        except TimeoutError:
            raise subprocess.TimeoutExpired(["puppet"], timeout or 0) from None

    def exit_fd(self) -> int:
        return self.channel.sock.fileno()

    def cpu_seconds(self) -> float:
        after = children_cpu(self.parent_pid)
        if self.lost is not None or after is None or self._cpu_before is None:
            return 0.0  # the parent is gone: what its run used is not known
        return max(after - self._cpu_before, 0.0)


@dataclass
class _Parent:
    proc: subprocess.Popen[bytes]
    channel: _Channel
    mark: str
    started: float
    started_mono: float = field(default_factory=time.monotonic)
    ready: dict[str, Any] | None = None
    loaded: Fingerprint = ()
    modulepaths: dict[str, Fingerprint] = field(default_factory=dict)
    runs: int = 0
    retiring: str | None = None  # why we are ending it
    warmed: threading.Event = field(default_factory=threading.Event)  # ready or failed
    failure: str | None = None  # why its warm-up failed


class WarmPuppet(Launcher):
    """The warm parent's lifetime, as the executor's one worker thread uses it
    (``launch`` and ``after_run`` from that thread only); ``info`` is what
    status shows, and ``on_change`` tells status when it changed."""

    def __init__(
        self,
        cfg: PuppetConfig,
        state_dir: str,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.dir = os.path.join(state_dir, "puppet-warm")
        self.on_change = on_change or (lambda: None)
        self._parent: _Parent | None = None
        self._lock = threading.Lock()
        self.served = 0  # runs, over every parent
        self.parents = 0
        self.last_fallback: dict[str, Any] | None = None
        self.last_end: str | None = None
        self._warm_up_s = FIRST_WARM_UP
        self._refused: tuple[tuple[str, int, int, int], str] | None = None

    # --- the Launcher --------------------------------------------------------------

    @property
    def mark(self) -> str | None:  # type: ignore[override]
        parent = self._parent
        return parent.mark if parent else None

    def prepare(self, argv: list[str]) -> None:
        """A parent ready and fresh for this run (before the run is in the
        ledger, which names the parent's mark); LaunchFailed if there is none."""
        self._ready_parent(argv)

    def launch(self, spec: ChildSpec, group: RunGroup) -> Launched:
        if spec.run_as is not None or spec.stdin_data is not None:
            raise LaunchFailed("the warm runner runs puppet only")
        parent = self._parent
        if parent is None or parent.ready is None or parent.proc.poll() is not None:
            raise LaunchFailed("the warm runner ended before the run")
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe() if spec.split_stderr else (-1, -1)
        fds, names = [out_w], ["stdout"]
        if err_w >= 0:
            fds.append(err_w)
            names.append("stderr")
        join = group.join_fd()
        if join is not None:
            fds.append(join)
            names.append("cgroup")
        request = {"argv": list(spec.cmd[1:]), "env": dict(spec.env), "cwd": spec.cwd, "fds": names}
        try:
            parent.channel.send(request, fds)
            reply = self._receive(parent, STARTED_TIMEOUT, "to start the run")
        except LaunchFailed:
            for fd in (out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w):
                if fd >= 0:
                    os.close(fd)
        if not isinstance(reply.get("started"), int):
            self._end(parent, f"it answered a run with {str(reply)[:200]}")
            os.close(out_r)
            if err_r >= 0:
                os.close(err_r)
            raise LaunchFailed(f"the warm runner did not start the run: {str(reply)[:200]}")
        parent.runs += 1
        self.served += 1
        stdout = os.fdopen(out_r, "r", errors="replace")
        stderr = os.fdopen(err_r, "r", errors="replace") if err_r >= 0 else None
        # A parent gone mid-run leaves its fork running, re-parented and
        # carrying the parent's mark: stopped at once, before the run is judged.
        return RemoteRun(
            parent.channel,
            reply["started"],
            stdout,
            stderr,
            lambda: contain.sweep(parent.mark, timeout=2.0, orphans_too=False),
            parent.proc.pid,
        )

    # --- what the executor calls ---------------------------------------------------------

    def prestart(self) -> None:
        """Start a parent now (its warm-up overlaps whatever comes before the next run)."""
        if self._parent is None or self._parent.proc.poll() is not None:
            try:
                self._start()
            except LaunchFailed as exc:
                self._failed(str(exc))

    def _failed(self, reason: str) -> None:
        """Why runs go the plain way: logged, and shown in status."""
        self.last_fallback = {"at": time.time(), "reason": reason}
        log.warning("puppet_warm_runner_failed", reason=reason, fallback="puppet apply")

    def after_run(self, failure: str | None) -> None:
        """After each warm run: retire a parent that served its runs, grew past
        its memory bound, or failed the run; start the next one at once."""
        if failure is not None:
            self._failed(failure)
        parent = self._parent
        if parent is None:
            self.on_change()
            return
        why = None
        if failure is not None:
            why = f"it failed a run: {failure}"
        elif parent.runs >= self.cfg.warm_max_runs:
            why = f"it served {parent.runs} runs (puppet.warm_max_runs)"
        elif (rss := rss_mib(parent.proc.pid)) is not None and rss > self.cfg.warm_max_rss_mib:
            why = f"its RSS {rss:g} MiB is over {self.cfg.warm_max_rss_mib:g} (warm_max_rss_mib)"
        if why is not None:
            self._end(parent, why)
            if failure is None:
                self.prestart()
        self.on_change()

    def stop(self) -> None:
        if self._parent is not None:
            self._end(self._parent, "the agent is stopping")

    def info(self) -> dict[str, Any]:
        parent = self._parent
        doc: dict[str, Any] = {"runner": "warm", "runs_served": self.served}
        if parent is not None and parent.proc.poll() is None and parent.ready:
            doc.update(
                state="warm",
                pid=parent.proc.pid,
                rss_mib=rss_mib(parent.proc.pid),
                runs=parent.runs,
                since=parent.started,
                warm_seconds=parent.ready.get("warm_seconds"),
            )
        elif parent is not None and parent.proc.poll() is None:
            doc.update(state="warming", pid=parent.proc.pid, since=parent.started)
        else:
            doc["state"] = "not running"
        if self.last_end:
            doc["last_end"] = self.last_end
        if self.last_fallback:
            doc["last_fallback"] = self.last_fallback
        return doc

    # --- the parent ------------------------------------------------------------------------

    def _ready_parent(self, argv: list[str]) -> _Parent:
        parent = self._parent
        if parent is not None and (code := parent.proc.poll()) is not None:
            self._ended(parent, self._why_it_exited(code))  # idle, or died
            parent = None
        if parent is not None and parent.ready and (why := self._stale(parent, argv)):
            self._end(parent, why)
            parent = None
        if parent is None:
            self._check_binary()
            # Not started now: its warm-up would compete with this run for
            # the CPU. This run is exec'd; the parent starts when it is over.
            raise Warming("no warm parent yet (it starts after this run)")
        if not parent.warmed.is_set():
            elapsed = time.monotonic() - parent.started_mono
            if self._warm_up_s - elapsed > WAIT_FOR_WARM_UP:
                raise Warming("the warm runner is still warming up")
            parent.warmed.wait(max(self.cfg.warm_start_timeout - elapsed, 0.0) + 1.0)
        if parent.failure is not None or parent.ready is None:
            raise LaunchFailed(f"the warm runner's warm-up failed: {parent.failure}")
        modulepath = modulepath_of(argv)
        if modulepath not in parent.modulepaths:
            parent.modulepaths[modulepath] = modulepath_fingerprint(modulepath)
        return parent

    def _check_binary(self) -> None:
        """NotWarmable when the binary cannot run warm; logged and shown once
        per version of the binary, not at every run."""
        path = shutil.which(self.cfg.binary) or self.cfg.binary
        seen = _stat(path)
        if self._refused is not None and self._refused[0] == seen:
            raise NotWarmable(self._refused[1])
        try:
            interpreter_of(self.cfg.binary)
        except LaunchFailed as exc:
            self._refused = (seen, str(exc))
            self._failed(str(exc))
            raise NotWarmable(str(exc)) from None
        self._refused = None

    def _stale(self, parent: _Parent, argv: list[str]) -> str | None:
        if files_fingerprint([p for p, *_ in parent.loaded]) != parent.loaded:
            changed = [p for (p, *old) in parent.loaded if list(_stat(p)[1:]) != old]
            return f"{changed[0] if changed else 'a file it loaded'} changed"
        modulepath = modulepath_of(argv)
        known = parent.modulepaths.get(modulepath)
        if known is not None and modulepath_fingerprint(modulepath) != known:
            return f"the modulepath {modulepath or '(none)'} changed"
        return None

    def _start(self) -> _Parent:
        ruby, binary = interpreter_of(self.cfg.binary)
        private_dir(self.dir)
        empty = os.path.join(self.dir, "empty")
        os.makedirs(empty, mode=0o700, exist_ok=True)
        # The warm-up loads settings, facter and the compiler with a no-op
        # apply of nothing, in a vardir of its own and with no modules: the
        # parent loads no module code a later run could find stale.
        warm_argv = [
            "apply",
            "--noop",
            "--color",
            "false",
            "--vardir",
            os.path.join(self.dir, "vardir"),
            "--modulepath",
            empty,
            "--hiera_config",
            os.path.join(empty, "hiera.yaml"),
            "--execute",
            "",
        ]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mark = "warm-" + uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
        env[MARK_ENV] = mark  # how a restarted agent finds what this one left
        log_path = os.path.join(self.dir, "warmup.log")
        try:
            with open(log_path, "wb") as log_file:
                os.chmod(log_path, 0o600)
                argv = [ruby, str(RUNNER), str(theirs.fileno()), str(self.cfg.warm_idle_exit)]
                proc = subprocess.Popen(
                    [*argv, json.dumps(warm_argv)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    pass_fds=[theirs.fileno()],
                    env=env,
                    cwd=self.dir,
                    start_new_session=True,
                )
        except OSError as exc:
            ours.close()
            raise LaunchFailed(f"cannot start {ruby}: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        contain.own_child(proc.pid)
        parent = _Parent(proc, _Channel(ours), mark, time.time())
        parent.loaded = files_fingerprint([str(RUNNER), ruby, binary])
        self._parent = parent
        self.parents += 1
        threading.Thread(target=self._watch, args=(parent,), daemon=True).start()
        log.info("puppet_warm_runner_starting", pid=proc.pid, ruby=ruby)
        return parent

    def wait_ready(self) -> None:
        """Start a parent if there is none and wait until it is warm (or LaunchFailed)."""
        self.prestart()
        parent = self._parent
        if parent is None:
            raise LaunchFailed(self.last_end or "the warm runner did not start")
        parent.warmed.wait(self.cfg.warm_start_timeout + 1.0)
        if parent.ready is None:
            raise LaunchFailed(f"the warm runner's warm-up failed: {parent.failure}")

    def _warm_up(self, parent: _Parent) -> None:
        """The parent's ready message (or why there is none), read by its own
        thread so that status says at once when it is warm."""
        timeout = self.cfg.warm_start_timeout
        try:
            doc = parent.channel.receive(timeout, READY_MAX)
        except TimeoutError:
            parent.failure = f"it took over {timeout:g} s to warm up"
            self._end(parent, parent.failure, hung=True)
            self._failed(f"the warm runner's warm-up failed: {parent.failure}")
            return
        ready = doc.get("ready") if doc is not None else None
        if not isinstance(ready, dict):
            if doc is None:
                parent.proc.wait()
                tail = self._log_tail()
                why = f"it ended (exit {parent.proc.returncode})" + (f": {tail}" if tail else "")
            else:
                why = str(doc.get("failed") or doc)[:300]
            parent.failure = why
            self._end(parent, f"its warm-up failed: {why}")
            self._failed(f"the warm runner's warm-up failed: {why}")
            return
        loaded = [p for p in ready.pop("loaded", []) if isinstance(p, str)]
        parent.loaded = parent.loaded + files_fingerprint(loaded)
        parent.ready = ready
        self._warm_up_s = time.monotonic() - parent.started_mono
        log.info(
            "puppet_warm_runner_ready",
            pid=parent.proc.pid,
            seconds=ready.get("warm_seconds"),
            files=len(loaded),
        )

    def _receive(self, parent: _Parent, timeout: float, doing: str) -> dict[str, Any]:
        try:
            doc = parent.channel.receive(timeout)
        except TimeoutError:
            self._end(parent, f"it took over {timeout:g} s {doing}", hung=True)
            raise LaunchFailed(f"the warm runner took over {timeout:g} s {doing}") from None
        if doc is None:
            self._end(parent, "it ended before the run")
            raise LaunchFailed(f"the warm runner ended before the run (exit {parent.proc.poll()})")
        return doc

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "warmup.log"), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 2000))
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        useful = [ln for ln in lines if ln.strip() and "/proc/1/environ" not in ln]
        return " | ".join(useful[-3:])[:500]

    def _ended(self, parent: _Parent, why: str) -> bool:
        """Record a parent's end once, whichever thread sees it first."""
        with self._lock:
            if parent.retiring is not None:
                return False
            parent.retiring = why
            if self._parent is parent:
                self._parent = None
            self.last_end = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {why}"
        log.info("puppet_warm_runner_ended", pid=parent.proc.pid, why=why)
        return True

    def _end(self, parent: _Parent, why: str, hung: bool = False) -> None:
        """Close its socket (it exits at once: it reads the end of it) and see
        it gone; one that ``hung`` is killed without waiting."""
        self._ended(parent, why)
        with contextlib.suppress(OSError):
            parent.channel.sock.close()
        try:
            parent.proc.wait(timeout=0 if hung else STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(parent.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                parent.proc.wait(timeout=STOP_GRACE)
        # What it forked, if it was killed in the middle of one (not the
        # orphans of a run going on meanwhile: those are that run's).
        contain.sweep(parent.mark, timeout=2.0, orphans_too=False)

    def _watch(self, parent: _Parent) -> None:
        """The parent's own thread: its warm-up, then its exit, collected at
        once (no zombie between runs)."""
        try:
            self._warm_up(parent)
        finally:
            parent.warmed.set()
            self.on_change()
        code = parent.proc.wait()
        contain.disown_child(parent.proc.pid)
        if self._ended(parent, self._why_it_exited(code)):
            self.on_change()

    def _why_it_exited(self, code: int) -> str:
        if code == 0:
            return f"idle for {self.cfg.warm_idle_exit:g} s (puppet.warm_idle_exit)"
        return f"it exited {code}" if code > 0 else f"it was killed by signal {-code}"
