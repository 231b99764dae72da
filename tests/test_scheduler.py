"""The coalescing rules, driven with a fake clock (the scheduler never reads time)."""

from __future__ import annotations

import itertools

from mozagent.apply.scheduler import ApplyScheduler


def sched(**kw: float) -> ApplyScheduler:
    args = {"min_wait": 0.5, "max_wait": 5.0, "retry_initial": 30.0, "retry_max": 600.0}
    args.update(kw)
    return ApplyScheduler(**args)


def run_burst(s: ApplyScheduler, start: float, count: int, spacing: float) -> float:
    """Feed changes at a fixed spacing; return the time of the last change."""
    last = start
    for i in range(count):
        last = start + i * spacing
        s.changed(last)
    return last


def test_nothing_to_do() -> None:
    assert sched().due(0.0) is None


def test_quiet_period_after_last_change() -> None:
    s = sched()
    s.changed(10.0)
    s.changed(10.3)
    assert s.due(10.4) == 10.8


def test_max_wait_bounds_a_continuous_stream() -> None:
    s = sched()
    last = run_burst(s, 0.0, 1000, 0.002)  # 2 s of writes, never quiet
    assert s.due(last) == last + 0.5  # quiet after the stream, before max_wait
    s2 = sched(max_wait=1.0)
    run_burst(s2, 0.0, 1000, 0.002)
    assert s2.due(2.0) == 1.0


def test_burst_of_1000_writes_gives_one_run_then_one_more() -> None:
    s = sched(max_wait=1.0)
    runs = 0
    t = 0.0
    for _ in range(1000):  # 1,000 writes in 2 s, each apply taking 3 s
        s.changed(t)
        due = s.due(t)
        if due is not None and due <= t:
            s.started(t)
            runs += 1
        if s.in_flight and t >= 4.0:
            s.finished(t, ok=True)
        t += 0.002
    s.finished(4.0, ok=True)
    assert s.due(4.0) is not None  # changes during the run: exactly one more
    s.started(4.0)
    runs += 1
    s.finished(7.0, ok=True)
    assert s.due(7.0) is None
    assert runs == 2


def test_changes_during_a_run_make_exactly_one_more() -> None:
    s = sched()
    s.changed(0.0)
    s.started(1.0)
    for i in range(50):
        s.changed(1.1 + i * 0.01)
        assert s.due(1.5) is None  # never two in flight
    s.finished(3.0, ok=True)
    assert s.due(3.0) is not None
    s.started(3.0)
    s.finished(5.0, ok=True)
    assert s.due(5.0) is None


def test_failure_retries_with_backoff_and_a_change_cuts_it_short() -> None:
    s = sched(retry_initial=10.0, retry_max=25.0)
    s.changed(0.0)
    s.started(1.0)
    s.finished(2.0, ok=False)
    assert s.due(2.0) == 12.0
    s.started(12.0)
    s.finished(13.0, ok=False)
    assert s.due(13.0) == 33.0
    s.started(33.0)
    s.finished(34.0, ok=False)
    assert s.due(34.0) == 59.0  # capped at retry_max
    s.changed(35.0)  # the operator's fix arrives
    assert s.due(35.0) == 35.5
    s.started(35.5)
    s.finished(36.0, ok=True)
    assert s.due(36.0) is None


def test_hold_until_first_read() -> None:
    s = sched()
    s.changed(0.0)
    s.hold(10.0)
    assert s.due(1.0) == 10.0
    s.release()
    assert s.due(1.0) == 0.5


def test_periodic_interval() -> None:
    s = sched(interval=1800.0)
    s.changed(0.0)
    s.started(0.5)
    s.finished(2.0, ok=True)
    assert s.due(3.0) == 1802.0


def stream(s: ApplyScheduler, seconds: float, run_s: float, cpu: float) -> list[float]:
    """One change a second for ``seconds``, running whenever due; the run starts."""
    starts: list[float] = []
    now, end_of_run = 0.0, None
    while now < seconds:
        s.changed(now)
        for _ in range(10):  # every 0.1 s of that second
            if end_of_run is not None and now >= end_of_run:
                s.finished(end_of_run, True, cpu)
                end_of_run = None
            due = s.due(now)
            if end_of_run is None and due is not None and due <= now:
                s.started(now)
                starts.append(now)
                end_of_run = now + run_s
            now = round(now + 0.1, 1)
    return starts


def test_at_most_one_run_per_min_interval_under_a_stream_and_the_last_change_runs() -> None:
    unbudgeted = stream(sched(), 120, 1.0, 0.8)
    budgeted = stream(sched(min_interval=10.0), 120, 1.0, 0.8)
    assert len(unbudgeted) > 50
    assert all(b - a >= 10.0 for a, b in itertools.pairwise(budgeted))
    assert len(budgeted) in (12, 13)
    s = sched(min_interval=10.0)
    s.changed(0.0)
    s.started(0.5)
    s.finished(1.5, True)
    s.changed(2.0)  # the final change of a stream
    assert s.due(2.0) == 10.5 and s.pending
    assert s.budget(2.0) == "at most one run per 10 s (apply.min_interval)"
    assert s.budget(10.5) is None  # due now: no longer waiting


def test_a_cpu_cap_spreads_runs_until_the_minute_has_room() -> None:
    s = sched(cpu_per_minute=2.0)
    for start in (0.0, 1.0):  # 1 CPU second each: the minute is full
        s.changed(start - 0.5)
        s.started(start)
        s.finished(start + 0.9, True, 1.0)
    s.changed(2.0)
    assert s.due(2.0) == 60.9  # when the first run's second leaves the window
    assert s.budget(2.0) == (
        "puppet used 2.0 CPU seconds in the last minute (apply.cpu_per_minute: 2)"
    )
    budgeted = stream(sched(cpu_per_minute=6.0), 120, 1.0, 0.8)
    assert len(budgeted) <= 2 * 8 + 1  # 6 s a minute at 0.8 s a run: 8 runs a minute
    assert sched(cpu_per_minute=6.0).budget(0.0) is None
