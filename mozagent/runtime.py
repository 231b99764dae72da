"""The agent's threads: their progress beats, crash reports and wake-up loop.

Each source, sink and the executor runs on a thread of its own; none may die
of an exception (a bug, a full disk, a library's surprise), and each must show
that it makes progress, so that a wedged one gets the agent restarted and is
named in status (``report/health.py`` turns the beats into the heartbeat).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol


class StatusSink(Protocol):
    def set_errors(self, group: str, errors: list[dict[str, str]]) -> None: ...


# A worker that has not completed a step for this long is stuck. Every wait in
# a worker is bounded well below it (reads by the session timeout, a puppet run
# beats while it runs).
STALL_SECONDS = 90.0


class Progress:
    """Last beat of each worker, on an injectable monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}

    def beat(self, worker: str) -> None:
        with self._lock:
            self._beats[worker] = self._clock()

    def stalled(self, limit: float = STALL_SECONDS) -> dict[str, float]:
        """Workers whose last beat is older than ``limit``, with its age in seconds."""
        now = self._clock()
        with self._lock:
            return {w: now - t for w, t in self._beats.items() if now - t > limit}

    def forget(self, worker: str) -> None:
        with self._lock:
            self._beats.pop(worker, None)


class Worker:
    """One worker thread's health: its progress beats and its crash reports.

    Each worker has its own error group in status, cleared only by its own next
    success, so one worker's recovery never hides another's crash.
    """

    def __init__(self, name: str, progress: Progress, status: StatusSink) -> None:
        self.name = name
        self.progress = progress
        self.status = status
        self.crashes = 0

    def beat(self) -> None:
        self.progress.beat(self.name)

    def crashed(self, exc: BaseException) -> None:
        """Best effort: the status file may be what is failing (disk full)."""
        self.crashes += 1
        what = (
            f"cannot write to disk since {_utc(time.time())}: {exc}"
            if _disk_trouble(exc)
            else f"crashed at {_utc(time.time())}: {exc!r}"
        )
        try:
            self.status.set_errors(
                f"agent.{self.name}",
                [
                    {
                        "where": f"agent ({self.name} worker)",
                        "message": f"{what} ({self.crashes} failed step(s) since start; "
                        "see the log)",
                    }
                ],
            )
        except Exception as again:
            import structlog  # here, so that `mozagent status` needs no logging stack

            structlog.get_logger("mozagent").error("status_write_failed", error=repr(again))

    def recovered(self) -> None:
        self.status.set_errors(f"agent.{self.name}", [])

    def guarded(self, step: Callable[[], Any]) -> tuple[bool, Any]:
        """One step of a worker's loop: a beat, then the step; an exception (a
        bug, a full disk, a library's surprise) is logged and reported, never
        allowed to end the worker. Returns (it succeeded, what it returned)."""
        self.beat()
        try:
            result = step()
        except Exception as exc:
            import structlog  # here, so that `mozagent status` needs no logging stack

            logger = structlog.get_logger("mozagent")
            if _disk_trouble(exc):  # the host's trouble, not a bug: no traceback
                logger.error(f"{self.name}_failed", error=str(exc))
            else:
                logger.exception(f"{self.name}_failed", error=repr(exc))
            self.crashed(exc)
            return False, None
        self.recovered()
        return True, result


def run_woken(
    health: Worker,
    stopping: threading.Event,
    wake: threading.Event,
    step: Callable[[], Any],
    due: Callable[[], bool] = lambda: False,
) -> None:
    """The loop of a worker that acts when woken (a watch, a finished job) or
    when ``due`` says so (a periodic re-read): it beats every second while
    idle, so a quiet worker never looks stuck, and a failed step is tried
    again a second later instead of waiting for the next wake-up."""
    while not stopping.is_set():
        health.beat()
        wake.wait(timeout=1.0)
        if stopping.is_set():
            break
        if due():
            wake.set()
        if not wake.is_set():
            continue
        ok, _ = health.guarded(step)
        if not ok:
            wake.set()
            stopping.wait(1.0)


def _disk_trouble(exc: BaseException) -> bool:
    """A full, read-only or failing disk: retried like a crash, reported as what it is."""
    return isinstance(exc, OSError) and exc.errno in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
    )


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
