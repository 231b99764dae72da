"""Any other group: a heat-config hook, unchanged (heat-agents' ansible, salt,
docker-compose… hooks): the deployment JSON on stdin, the signal JSON on stdout.

A group with no hook FAILS with a clear ``deploy_stderr`` (heat-config only
logged it, and the stack timed out). The JSON a hook reads has the deployment's
inputs without the credentials and signal URLs: signalling is the agent's job.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from mozagent.apply.deployments import DeploymentResult
from mozagent.apply.process import ChildApplier, ChildRunner
from mozagent.apply.script import base_env, heat_result, notes
from mozagent.desired.deployments import Deployment

_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class HookApplier(ChildApplier):
    def __init__(self, dirs: tuple[str, ...], runner: ChildRunner, timeout: float) -> None:
        super().__init__(runner, timeout)
        self.dirs = dirs

    def find(self, group: str) -> str | None:
        if not _GROUP.fullmatch(group):
            return None
        for directory in self.dirs:
            path = os.path.join(directory, group)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        return None

    def run(self, dep: Deployment, outputs_path: str) -> DeploymentResult:
        hook = self.find(dep.group)
        if hook is None:
            return DeploymentResult(
                1,
                "",
                f"mozagent: no applier for group {dep.group!r}: no executable heat-config hook "
                f"named {dep.group!r} in {', '.join(self.dirs)}",
                {},
            )
        payload = json.dumps(dep.hook_input())
        out = self.child([hook], base_env(), stdin_data=payload, split_stderr=True)
        what = f"{dep.group} hook"
        judged = heat_result(out, what, self.timeout, {})
        if out.returncode is None or out.stopped:
            return judged
        # The hook's reply speaks for the hook; what mozagent found (a run it
        # could not clean up) is added to it, never replaced by it.
        said = notes(out, what, self.timeout)
        try:
            reply: Any = json.loads(out.stdout) if out.stdout.strip() else {}
        except ValueError as exc:
            reply = exc
        if not isinstance(reply, dict):
            why = reply if isinstance(reply, ValueError) else f"a {type(reply).__name__}"
            return DeploymentResult(
                judged.status_code or 1,
                out.stdout,
                out.stderr + f"\nmozagent: the {what} did not print a JSON object "
                f"on stdout ({why})" + said,
                {},
            )
        code = reply.pop("deploy_status_code", judged.status_code)
        stdout = reply.pop("deploy_stdout", "")
        stderr = reply.pop("deploy_stderr", out.stderr)
        if not isinstance(code, int) or isinstance(code, bool):
            code = 1 if code else 0
        if judged.status_code and not code:
            code = judged.status_code  # the hook exited non-zero: that is not success
        return DeploymentResult(code, str(stdout), str(stderr) + said, reply)
