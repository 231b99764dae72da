"""``group: script``: the config is the program; inputs are its environment.

As heat-config's script hook does, so existing SoftwareConfigs work: each input
is an environment variable, ``heat_outputs_path`` says where outputs go
(``$heat_outputs_path.<name>``), and stdout, stderr and the exit code go back
in the signal. Unlike it, the environment is clean (no agent variables, no
credentials), and the run has a timeout and leaves no process behind.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from mozagent.apply.deployments import Outcome, public_env, read_outputs
from mozagent.apply.process import Ledger, run_program
from mozagent.desired.deployments import Deployment, safe_id

BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TZ")


def base_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def judgement(out, what: str, timeout: float) -> str:  # type: ignore[no-untyped-def]
    """What mozagent itself says of a run that started (a timeout, an abort, a
    cleanup that failed), as lines to append to its stderr; "" if nothing."""
    notes = ""
    if out.stopped == "timeout":
        notes += f"\nmozagent: the {what} timed out after {timeout:g} s and was killed"
    elif out.stopped == "aborted":
        notes += f"\nmozagent: the {what} was stopped: the agent is shutting down"
    if out.cleanup_error:
        notes += f"\nmozagent: the {what} ended, but {out.cleanup_error}"
    return notes


def outcome_of(out, what: str, timeout: float, outputs: dict) -> Outcome:  # type: ignore[no-untyped-def]
    """Judge a finished child program the way Heat reads it."""
    if out.returncode is None:
        return Outcome(1, "", f"mozagent: cannot run the {what}: {out.start_error}", {})
    code = out.returncode if out.returncode >= 0 else 128 - out.returncode
    if (out.stopped or out.cleanup_error) and code == 0:
        code = 1
    return Outcome(code, out.stdout, out.stderr + judgement(out, what, timeout), outputs)


class ScriptApplier:
    group = "script"

    def __init__(
        self,
        work_dir: str,
        timeout: float,
        cancel: threading.Event,
        ledger: Ledger,
        progress: Callable[[], None],
    ) -> None:
        self.work_dir = work_dir
        self.timeout = timeout
        self.cancel = cancel
        self.ledger = ledger
        self.progress = progress

    def run(self, dep: Deployment, outputs_path: str) -> Outcome:
        if not isinstance(dep.config, str) or not dep.config.strip():
            return Outcome(1, "", "mozagent: a script deployment's config must be a script", {})
        configs = os.path.join(self.work_dir, "configs")
        os.makedirs(configs, mode=0o700, exist_ok=True)
        path = os.path.join(configs, safe_id(dep.id))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(dep.config)
        env = {**base_env(), **public_env(dep.inputs), "heat_outputs_path": outputs_path}
        out = run_program(
            [path],
            env,
            self.timeout,
            self.cancel,
            ledger=self.ledger,
            progress=self.progress,
            cwd=configs,
            split_stderr=True,
        )
        return outcome_of(out, "script", self.timeout, read_outputs(outputs_path, dep))
