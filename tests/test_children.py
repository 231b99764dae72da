"""How a child ended, described once (``ChildExit``) and worded by each
applier for its reader: an order's result, a Heat signal, puppet's status.
Pure where it can be; the real child runs are in test_isolation, test_orders,
test_release and test_puppet."""

from __future__ import annotations

import signal
import threading

from mozagent.apply.orders import judge
from mozagent.apply.process import ChildExit, ChildRunner
from mozagent.apply.script import heat_result


def test_each_way_a_child_can_end_is_described() -> None:
    cases = [
        (ChildExit(0), None, 0),
        (ChildExit(3), "exited with status 3", 3),
        (ChildExit(-signal.SIGKILL), "was killed by signal 9 (SIGKILL)", 137),
        (ChildExit(-15, stopped="timeout"), "timed out after 2.5 s and was killed", 143),
        (ChildExit(-15, stopped="aborted"), "was stopped: the agent is shutting down", 143),
        (ChildExit(None, start_error="not found"), "could not start: not found", None),
        (
            ChildExit(0, cleanup_error="1 process(es) of the run could not be stopped"),
            "exited with status 0, but 1 process(es) of the run could not be stopped",
            0,
        ),
    ]
    for end, failure, code in cases:
        assert end.failure(2.5) == failure, end
        assert end.code == code, end
        assert end.ok is (failure is None)


def test_orders_and_heat_word_the_same_ending_for_their_readers() -> None:
    killed = ChildExit(-signal.SIGKILL, leftovers_killed=2)
    code, state, message = judge(killed, 5)
    assert (code, state) == (137, "failed")
    assert message == "was killed by signal 9 (SIGKILL); 2 process(es) it left behind were killed"
    assert judge(ChildExit(0), 5) == (0, "done", "exited with status 0")
    aborted = judge(ChildExit(-15, stopped="aborted"), 5)
    assert aborted[2] == "was stopped: the agent is shutting down; not run again"
    # Heat: a killed script is never status 0, and mozagent says why in stderr.
    heat = heat_result(ChildExit(0, stopped="timeout", stderr="err"), "script", 4, {})
    assert heat.status_code == 1
    assert heat.stderr == "err\nmozagent: the script timed out after 4 s and was killed"
    missing = heat_result(ChildExit(None, start_error="not found"), "ansible hook", 4, {})
    assert missing.status_code == 1 and "cannot run the ansible hook: not found" in missing.stderr


def test_the_runner_reports_a_missing_program_and_a_signal() -> None:
    runner = ChildRunner(threading.Event())
    assert runner.run(["/nonexistent/program"], {}, 5).start_error == "not found"
    end = runner.run(["/bin/sh", "-c", "kill -TERM $$"], {}, 5)
    assert end.returncode == -signal.SIGTERM and end.failure(5) == (
        "was killed by signal 15 (SIGTERM)"
    )


def test_a_run_counts_the_cpu_of_its_own_children_only() -> None:
    """The run budget adds these up: a child's grandchildren are its CPU, and
    an earlier run's CPU is not counted again in the next."""
    runner = ChildRunner(threading.Event())
    burn = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"  # about 0.3 s here
    spent = runner.run(["/bin/sh", "-c", f"/bin/sh -c '{burn}'; sleep 0.1"], {}, 30).cpu_s
    assert 0.1 <= spent <= 5, spent
    idle = runner.run(["/bin/sh", "-c", "sleep 0.2"], {}, 30).cpu_s
    assert idle < 0.1, idle
