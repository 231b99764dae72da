"""Running ``puppet apply`` for one config and judging the result honestly.

The old chain reported a missing puppet as success; here every way a run can
go wrong (no binary, no manifest, timeout, crash, compile error, failed
resources) is a failed ``ApplyResult`` with a message that says which.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from mozagent.config import PuppetConfig

OUTPUT_TAIL_LINES = 40
ABORT_GRACE_SECONDS = 10.0


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    if cfg.modulepath:
        cmd += ["--modulepath", ":".join(cfg.modulepath)]
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
        return False, f"failed: puppet was killed by signal {-code}"
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
    cancel: threading.Event,
    on_line: Any = None,
) -> ApplyResult:
    """Run one ``puppet apply``; ``cancel`` aborts it (SIGTERM, then SIGKILL)."""
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
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            text=True,
            errors="replace",
        )
    except FileNotFoundError:
        return _result(item, started, False, f"failed: puppet binary {cfg.binary!r} not found")
    except OSError as exc:  # not executable, not a program, out of memory...
        return _result(
            item, started, False, f"failed: cannot run puppet binary {cfg.binary!r}: {exc}"
        )

    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=pump, name="puppet-output", daemon=True)
    reader.start()
    deadline = time.monotonic() + cfg.timeout  # a clock step must not cut a run short
    why_stopped = None
    try:
        while proc.poll() is None:
            if cancel.is_set():
                why_stopped = "aborted: the agent is shutting down"
            elif time.monotonic() >= deadline:
                why_stopped = f"failed: puppet timed out after {cfg.timeout:g} s"
            if why_stopped:
                _terminate(proc)
                break
            cancel.wait(0.05)
        proc.wait()
    except BaseException:
        _terminate(proc)  # never leave puppet running behind us
        raise
    reader.join(timeout=5)
    if why_stopped:
        return _result(item, started, False, why_stopped, proc.returncode, list(tail))
    ok, message = interpret_exit(proc.returncode)
    counts = read_summary(summary)
    if ok and counts["failed"]:
        ok, message = False, f"failed: {counts['failed']} resources failed"
    return _result(item, started, ok, message, proc.returncode, list(tail), counts)


def _terminate(proc: subprocess.Popen[str]) -> None:
    """Stop puppet and anything it started: it runs in its own process group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=ABORT_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
