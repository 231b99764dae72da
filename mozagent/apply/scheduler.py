"""When to run puppet: the coalescing rules as a pure state machine.

Rendering is cheap and happens on every change; a puppet run costs seconds, so
runs are coalesced. A change opens a quiescence window: the run starts once no
change has come for ``min_wait`` seconds, but never later than ``max_wait``
after the first change it will include. At most one run is in flight; changes
during a run make exactly one more run after it. Time is passed in, never read,
so the rules are tested without sleeping.

A run budget bounds what puppet may take of the host under a stream of
changes: at most one run per ``min_interval`` seconds (start to start), and
at most ``cpu_per_minute`` CPU seconds of runs in any 60 s. A run the budget
holds back is only later, never dropped: the changes stay pending, the files
keep following the data (rendering is not the scheduler's), and the run that
comes applies all of them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

CPU_WINDOW = 60.0


@dataclass
class ApplyScheduler:
    min_wait: float
    max_wait: float
    interval: float = 0.0
    retry_initial: float = 30.0
    retry_max: float = 600.0
    min_interval: float = 0.0
    cpu_per_minute: float = 0.0  # 0: no cap

    def __post_init__(self) -> None:
        self._last_start: float | None = None
        self._cpu: deque[tuple[float, float]] = deque()  # (run ended, CPU seconds)
        self._first_change: float | None = None
        self._last_change: float | None = None
        self._in_flight = False
        self._hold_until: float | None = None
        self._not_before: float | None = None
        self._failures = 0
        self._periodic_at: float | None = None

    @property
    def in_flight(self) -> bool:
        return self._in_flight

    @property
    def pending(self) -> bool:
        return self._first_change is not None

    def hold(self, until: float) -> None:
        """Keep runs back until ``until`` or ``release()``, while the first read is under way."""
        self._hold_until = until

    def release(self) -> None:
        self._hold_until = None

    def held(self, now: float) -> bool:
        """Still waiting for the first read (Heat deployments wait for it too:
        a puppet config's lookup() must see the app's data)."""
        return self._hold_until is not None and now < self._hold_until

    def changed(self, now: float) -> None:
        """Rendered content changed (or a run was asked for).

        A change cancels a pending failure retry: it is most likely the fix, and
        it should run after the quiescence window, not after the backoff.
        """
        self._not_before = None
        if self._first_change is None:
            self._first_change = now
        self._last_change = now

    def due(self, now: float) -> float | None:
        """When the next run should start, or None when nothing is to run."""
        wanted = self._wanted()
        return None if wanted is None else self._budget_at(wanted)

    def _wanted(self) -> float | None:
        """When the next run would start without the budget."""
        if self._in_flight:
            return None
        candidates: list[float] = []
        if self._first_change is not None and self._last_change is not None:
            candidates.append(
                min(self._last_change + self.min_wait, self._first_change + self.max_wait)
            )
        elif self._not_before is not None:
            candidates.append(self._not_before)  # a retry after a failed run
        if self._periodic_at is not None:
            candidates.append(self._periodic_at)
        if not candidates:
            return None
        at = min(candidates)
        if self._hold_until is not None:
            at = max(at, self._hold_until)
        return at

    def budget(self, now: float) -> str | None:
        """Why the next run waits past when it would otherwise start, if the budget is why."""
        wanted = self._wanted()
        if wanted is None:
            return None
        due = self._budget_at(wanted)
        if due <= max(wanted, now):
            return None
        if self._last_start is not None and due == self._last_start + self.min_interval:
            return f"at most one run per {self.min_interval:g} s (apply.min_interval)"
        used = sum(cpu for ended, cpu in self._cpu if ended > now - CPU_WINDOW)
        return (
            f"puppet used {used:.1f} CPU seconds in the last minute "
            f"(apply.cpu_per_minute: {self.cpu_per_minute:g})"
        )

    def _budget_at(self, at: float) -> float:
        """The earliest moment from ``at`` the budget lets a run start."""
        earliest = at
        if self.min_interval > 0 and self._last_start is not None:
            earliest = max(earliest, self._last_start + self.min_interval)
        if self.cpu_per_minute > 0:
            window = [(e, c) for e, c in self._cpu if e > earliest - CPU_WINDOW]
            used = sum(c for _, c in window)
            for ended, cpu in window:  # oldest first: each leaves the window in turn
                if used < self.cpu_per_minute:
                    break
                used -= cpu
                earliest = max(earliest, ended + CPU_WINDOW)
        return earliest

    def started(self, now: float) -> None:
        """A run starts now and includes every change seen so far."""
        self._in_flight = True
        self._last_start = now
        self._first_change = None
        self._last_change = None
        self._not_before = None
        self._periodic_at = None

    def finished(self, now: float, ok: bool, cpu: float = 0.0) -> None:
        """``cpu``: the CPU seconds the run took (the budget counts them)."""
        self._in_flight = False
        if cpu > 0:
            self._cpu.append((now, cpu))
        while self._cpu and self._cpu[0][0] <= now - CPU_WINDOW:
            self._cpu.popleft()
        if ok:
            self._failures = 0
            if self.interval > 0:
                self._periodic_at = now + self.interval
            return
        delay = min(self.retry_initial * (2**self._failures), self.retry_max)
        self._failures += 1
        # New changes still run after min_wait; a failed run alone retries after the backoff.
        if self._first_change is None:
            self._not_before = now + delay
