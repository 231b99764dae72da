"""``group: script``: the config is the program; inputs are its environment.

As heat-config's script hook does, so existing SoftwareConfigs work: each input
is an environment variable, ``heat_outputs_path`` says where outputs go
(``$heat_outputs_path.<name>``), and stdout, stderr and the exit code go back
in the signal. Unlike it, the environment is clean (no agent variables, no
credentials), and the run has a timeout and leaves no process behind.
"""

from __future__ import annotations

import os

from mozagent.apply.deployments import DeploymentResult, public_env, read_outputs
from mozagent.apply.process import ChildApplier, ChildExit, ChildRunner
from mozagent.desired.deployments import Deployment, safe_id

BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TZ")


def base_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def notes(out: ChildExit, what: str, timeout: float) -> str:
    """What mozagent itself says of a run that started (a timeout, an abort, a
    cleanup that failed), as lines to append to its stderr; "" if nothing.
    The exit status is not repeated: Heat has it as ``deploy_status_code``."""
    if out.returncode is None:
        return ""
    if out.stopped:
        return f"\nmozagent: the {what} {out.how(timeout)}"
    if out.cleanup_error:
        return f"\nmozagent: the {what} ended, but {out.cleanup_error}"
    return ""


def heat_result(out: ChildExit, what: str, timeout: float, outputs: dict) -> DeploymentResult:  # type: ignore[type-arg]
    """A finished child as Heat reads it: a run that failed is never status 0."""
    if out.returncode is None:
        return DeploymentResult(1, "", f"mozagent: cannot run the {what}: {out.start_error}", {})
    code = out.code or 0
    if not out.ok and code == 0:
        code = 1
    return DeploymentResult(code, out.stdout, out.stderr + notes(out, what, timeout), outputs)


class ScriptApplier(ChildApplier):
    group = "script"

    def __init__(self, work_dir: str, runner: ChildRunner, timeout: float) -> None:
        super().__init__(runner, timeout)
        self.work_dir = work_dir

    def run(self, dep: Deployment, outputs_path: str) -> DeploymentResult:
        if not isinstance(dep.config, str) or not dep.config.strip():
            return DeploymentResult(
                1, "", "mozagent: a script deployment's config must be a script", {}
            )
        configs = os.path.join(self.work_dir, "configs")
        os.makedirs(configs, mode=0o700, exist_ok=True)
        path = os.path.join(configs, safe_id(dep.id))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(dep.config)
        env = {**base_env(), **public_env(dep.inputs), "heat_outputs_path": outputs_path}
        out = self.child([path], env, cwd=configs, split_stderr=True)
        return heat_result(out, "script", self.timeout, read_outputs(outputs_path, dep))
