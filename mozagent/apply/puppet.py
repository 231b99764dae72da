"""Running ``puppet apply`` for one config and judging the result honestly.

The old chain reported a missing puppet as success; here every way a run can
go wrong (no binary, no manifest, timeout, crash, compile error, failed
resources) is a failed ``ApplyResult`` with a message that says which.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from mozagent.apply.deployments import DeploymentQueue, DeploymentResult, read_outputs
from mozagent.apply.process import ChildExit, ChildRunner, LaunchFailed, signal_name
from mozagent.apply.warm import NotWarmable, Warming, WarmPuppet
from mozagent.config import PuppetConfig
from mozagent.desired.deployments import Deployment, safe_id

OUTPUT_TAIL_LINES = 40


@dataclass(frozen=True)
class ApplyItem:
    """One config to apply, whatever its source.

    The core's source is the manifest list in the config file; Heat
    SoftwareConfigs plug in later as more items (``source`` says where each came
    from, ``env`` carries what that source needs passed to puppet).
    """

    name: str
    manifest: str
    source: str = "config"
    env: Mapping[str, str] = field(default_factory=dict)
    # A Heat deployment's inputs: Hiera data of its own level (above node) and
    # typed external facts, both only for this item's run.
    hiera: Mapping[str, Any] | None = None
    facts: Mapping[str, Any] | None = None
    # heat-config-puppet's options: modulepath, tags, enable_debug, enable_verbose.
    options: Mapping[str, Any] = field(default_factory=dict)


def manifest_items(cfg: PuppetConfig) -> list[ApplyItem]:
    """The manifests listed in the config file, applied in order."""
    return [ApplyItem(name=os.path.basename(m), manifest=m, source="config") for m in cfg.manifests]


@dataclass
class ApplyResult:
    name: str
    source: str
    manifest: str
    started: float
    ended: float
    ok: bool
    exit_code: int | None
    message: str
    changed: int | None = None
    failed: int | None = None
    total: int | None = None
    output_tail: list[str] = field(default_factory=list)
    # The ends of puppet's stdout and stderr, kept apart for a Heat signal.
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)
    # Puppet's CPU seconds in this run (the run budget's measure).
    cpu_s: float = field(default=0.0, repr=False)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["stdout"], doc["stderr"]  # status shows the tail, not whole outputs
        del doc["cpu_s"]
        return doc


@dataclass(frozen=True)
class PuppetPaths:
    """Where the run reads rendered data and writes its own state."""

    hiera_config: str
    facts_dir: str
    work_dir: str


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100] or "config"


def build_command(
    cfg: PuppetConfig, item: ApplyItem, paths: PuppetPaths, summary: str
) -> list[str]:
    cmd = [
        cfg.binary,
        "apply",
        "--detailed-exitcodes",
        "--color",
        "false",
        "--hiera_config",
        paths.hiera_config,
        "--pluginfactdest",
        paths.facts_dir,
        "--lastrunfile",
        summary,
    ]
    modulepath = list(cfg.modulepath)
    extra = item.options.get("modulepath")
    if isinstance(extra, str) and extra:
        modulepath = [*extra.split(":"), *modulepath]
    if modulepath:
        cmd += ["--modulepath", ":".join(modulepath)]
    tags = item.options.get("tags")
    if isinstance(tags, str) and tags:
        cmd += ["--tags", tags]
    elif isinstance(tags, list) and tags:
        cmd += ["--tags", ",".join(str(t) for t in tags)]
    if item.options.get("enable_debug") is True:
        cmd.append("--debug")
    if item.options.get("enable_verbose") is True:
        cmd.append("--verbose")
    cmd += list(cfg.extra_args)
    cmd.append(item.manifest)
    return cmd


def interpret_exit(code: int) -> tuple[bool, str]:
    """Puppet's --detailed-exitcodes: 0 and 2 succeed; 4 and 6 had failures; 1 did not compile."""
    if code == 0:
        return True, "applied, no changes"
    if code == 2:
        return True, "applied with changes"
    if code == 4:
        return False, "failed: some resources failed"
    if code == 6:
        return False, "failed: some resources changed and some failed"
    if code == 1:
        return False, "failed: puppet could not compile or run the catalog (exit 1)"
    if code < 0:
        return False, f"failed: puppet was killed by {signal_name(-code)}"
    return False, f"failed: puppet exited with unexpected code {code}"


def read_summary(path: str) -> dict[str, int | None]:
    """Changed/failed/total resources from puppet's last run summary, if it wrote one."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
        res = doc.get("resources") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {"changed": None, "failed": None, "total": None}
    out: dict[str, int | None] = {}
    for key in ("changed", "failed", "total"):
        value = res.get(key)
        out[key] = value if isinstance(value, int) else None
    return out


def _result(
    item: ApplyItem,
    started: float,
    ok: bool,
    message: str,
    code: int | None = None,
    tail: list[str] | None = None,
    counts: dict[str, int | None] | None = None,
) -> ApplyResult:
    counts = counts or {}
    return ApplyResult(
        name=item.name,
        source=item.source,
        manifest=item.manifest,
        started=started,
        ended=time.time(),
        ok=ok,
        exit_code=code,
        message=message,
        changed=counts.get("changed"),
        failed=counts.get("failed"),
        total=counts.get("total"),
        output_tail=tail or [],
    )


def run_puppet(
    cfg: PuppetConfig,
    item: ApplyItem,
    paths: PuppetPaths,
    runner: ChildRunner,
    on_line: Callable[[str], None] | None = None,
    warm: WarmPuppet | None = None,
) -> ApplyResult:
    """Run one ``puppet apply``; the runner's cancel aborts it (SIGTERM, then
    SIGKILL). Whatever the run started is gone when this returns. ``warm``:
    forked from the warm parent, else (or when it fails) exec'd."""
    started = time.time()
    if not os.path.isfile(item.manifest):
        return _result(item, started, False, f"failed: manifest {item.manifest} does not exist")
    summary = os.path.join(paths.work_dir, f"{_safe(item.name)}.last_run_summary.yaml")
    cmd = build_command(cfg, item, paths, summary)
    env = dict(os.environ)
    env.update(item.env)
    try:
        os.makedirs(paths.work_dir, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(summary)
    except OSError as exc:
        return _result(item, started, False, f"failed: cannot prepare {paths.work_dir}: {exc}")
    out = _run(cfg, cmd, env, runner, warm, on_line=on_line, split_stderr=item.source == "heat")
    tail = out.tail
    if out.leftovers_killed:
        tail = [*tail, f"mozagent: {out.leftovers()}"]
    if (why := _not_finished(cfg, out)) is not None:
        result = _result(item, started, False, why, out.returncode, tail)
        result.cpu_s = out.cpu_s
        return result
    assert out.returncode is not None  # it started: _not_finished says so
    ok, message = interpret_exit(out.returncode)
    counts = read_summary(summary)
    if ok and counts["failed"]:
        ok, message = False, f"failed: {counts['failed']} resources failed"
    result = _result(item, started, ok, message, out.returncode, tail, counts)
    result.stdout, result.stderr = out.stdout, out.stderr
    result.cpu_s = out.cpu_s
    return result


def _run(
    cfg: PuppetConfig,
    cmd: list[str],
    env: dict[str, str],
    runner: ChildRunner,
    warm: WarmPuppet | None,
    **options: Any,
) -> ChildExit:
    """The run, warm when it can be; a warm runner that fails the run before
    or while it runs hands it to a plain ``puppet apply`` (in what is left of
    the run's time), and the run's output says so."""
    started = time.monotonic()
    why = None
    warming = False
    spent = 0.0
    if warm is not None:
        try:
            warm.prepare(cmd)
        except NotWarmable:
            warm = None  # said once, in the log and status: every run is exec'd
        except Warming:
            warming = True  # exec'd; the parent warms up for the next run
        except LaunchFailed as exc:
            why = str(exc)
            warm.after_run(why)
        else:
            out = runner.run(
                cmd, env, cfg.timeout, tail_lines=OUTPUT_TAIL_LINES, launcher=warm, **options
            )
            warm.after_run(out.runner_failed)
            if out.runner_failed is None or runner.cancel.is_set():
                return out
            why = out.runner_failed
            spent = out.cpu_s
    timeout = max(cfg.timeout - (time.monotonic() - started), 1.0)
    out = runner.run(cmd, env, timeout, tail_lines=OUTPUT_TAIL_LINES, **options)
    out.cpu_s += spent  # a warm attempt that failed mid-run used CPU too
    if why is not None:
        out.tail = [*out.tail, f"mozagent: run with puppet apply: {why}"]
    if warm is not None and (warming or why is not None) and not runner.cancel.is_set():
        warm.prestart()  # now that the CPU is free: warm for the next run
    return out


def _not_finished(cfg: PuppetConfig, out: ChildExit) -> str | None:
    """The status message of a puppet that did not run to its own end; None
    when it did, and its exit code says the rest (``interpret_exit``)."""
    if out.returncode is None:
        if out.start_error == "not found":
            return f"failed: puppet binary {cfg.binary!r} not found"
        return f"failed: cannot run puppet binary {cfg.binary!r}: {out.start_error}"
    if out.stopped == "aborted":
        return "aborted: the agent is shutting down"
    if out.stopped == "timeout":
        return f"failed: puppet timed out after {cfg.timeout:g} s"
    if out.cleanup_error:
        return f"failed: {out.cleanup_error}"
    return None


def deployment_item(
    name: str,
    manifest: str,
    outputs_path: str,
    inputs: Mapping[str, Any],
    options: Mapping[str, Any],
) -> ApplyItem:
    """A Heat ``group: puppet`` config as one item: its inputs as Hiera data of
    its own level and as typed facts (heat-config-puppet's ``enable_hiera`` and
    ``enable_facter`` turn either off), ``heat_outputs_path`` as
    heat-config-puppet sets it, so existing manifests work."""
    use_hiera = options.get("enable_hiera", True) is not False
    use_facter = options.get("enable_facter", True) is not False
    return ApplyItem(
        name=f"heat:{name}",
        manifest=manifest,
        source="heat",
        env={"FACTER_heat_outputs_path": outputs_path, "FACTER_deploy_config_name": name},
        hiera=dict(inputs) if use_hiera else {},
        facts=dict(inputs) if use_facter else {},
        options=dict(options),
    )


class PuppetDeploymentApplier:
    """``group: puppet``: the config is a manifest, run by the core's runner on
    the current data snapshot, so ``lookup()`` of ZooKeeper data works in it."""

    group = "puppet"

    def __init__(self, work_dir: str, run_item: Callable[[ApplyItem], ApplyResult]) -> None:
        self.work_dir = work_dir
        self.run_item = run_item

    def manifest_path(self, dep: Deployment) -> str:
        return self._manifest(dep.id)

    def _manifest(self, dep_id: str) -> str:
        return os.path.join(self.work_dir, "configs", f"{safe_id(dep_id)}.pp")

    def reapplied(self, queue: DeploymentQueue) -> list[ApplyItem]:
        """The puppet configs that completed, in metadata order, as items the
        core runs again with every data change (no new signal): a provider."""
        return [
            deployment_item(
                i["name"],
                self._manifest(i["id"]),
                i["outputs_path"],
                i.get("inputs") or {},
                i.get("options") or {},
            )
            for i in queue.reapply.items(queue.order)
        ]

    def run(self, dep: Deployment, outputs_path: str) -> DeploymentResult:
        if not isinstance(dep.config, str):
            return DeploymentResult(
                1, "", "mozagent: a puppet deployment's config must be a manifest", {}
            )
        path = self.manifest_path(dep)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(dep.config)
        result = self.run_item(
            deployment_item(dep.name, path, outputs_path, dep.inputs, dep.options)
        )
        stdout = result.stdout or "\n".join(result.output_tail)
        stderr = result.stderr
        code = 0
        if not result.ok:
            stderr = (stderr + "\n" if stderr else "") + f"mozagent: {result.message}"
            code = result.exit_code if result.exit_code not in (None, 0, 2) else 1
        return DeploymentResult(code, stdout, stderr, read_outputs(outputs_path, dep))
