"""Heat deployments on the executor's side: each id run once, durably, signalled.

The record of every deployment lives in ``<state_dir>/heat/deployments/<id>.json``
(0600) and is written before and after every step: pending → running →
done/failed. A deployment done or failed is never run again, across restarts
and reboots; one found *running* at start was interrupted (crash, reboot) and
is run again (configs are idempotent), then signalled, so nothing stays
IN_PROGRESS in Heat. Puppet configs that completed become configs the core
re-applies when data changes (``reapply.json``), without a new signal. A record
whose deployment left the metadata is kept (marked ``removed``), so that it is
not run again if the same id comes back, and status can say it is gone.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from mozagent.apply.lanes import Job, Phase
from mozagent.desired.deployments import Deployment, SignalTarget, safe_id
from mozagent.fileio import read_json_dir, read_json_object, write_json
from mozagent.render.snapshot import Snapshot

# Heat's API refuses bodies over 1 MiB (max_json_body_size); keep margin.
MAX_SIGNAL_BYTES = 1_000_000
MAX_OUTPUT_BYTES = 256 * 1024


@dataclass
class DeploymentResult:
    """What a deployment's run gave: Heat's signal fields."""

    status_code: int
    stdout: str
    stderr: str
    outputs: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return fit_body(
            {
                **self.outputs,
                "deploy_stdout": self.stdout,
                "deploy_stderr": self.stderr,
                "deploy_status_code": self.status_code,
            }
        )


def fit_body(body: dict[str, Any], limit: int = MAX_SIGNAL_BYTES) -> dict[str, Any]:
    """Trim stdout, then stderr, from the front so the body fits: the end of an
    output is where the errors are. Says so at the top of what was trimmed."""
    body = dict(body)
    for key in ("deploy_stdout", "deploy_stderr"):
        size = len(json.dumps(body).encode("utf-8"))
        if size <= limit:
            break
        text = body.get(key) or ""
        if not isinstance(text, str) or not text:
            continue
        keep = max(len(text) - (size - limit) - 200, 0)
        removed = len(text) - keep
        body[key] = f"[mozagent: {removed} characters trimmed from the start]\n" + text[-keep:]
    return body


def read_outputs(path_prefix: str, dep: Deployment) -> dict[str, Any]:
    """heat-config's convention: output NAME is the file ``<heat_outputs_path>.NAME``."""
    out: dict[str, Any] = {}
    for spec in dep.outputs:
        name = spec["name"]
        if "/" in name or "\x00" in name:  # refused when parsed: never a path elsewhere
            continue
        path = f"{path_prefix}.{name}"
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_OUTPUT_BYTES + 1)
        except OSError:
            continue
        text = data[:MAX_OUTPUT_BYTES].decode("utf-8", errors="replace")
        if len(data) > MAX_OUTPUT_BYTES:
            text += "\n[mozagent: output trimmed at 256 KiB]"
        out[name] = text
    return out


class Applier:
    """The shape every deployment applier has: a group name and ``run``."""

    group: str

    def run(self, dep: Deployment, outputs_path: str) -> DeploymentResult:  # pragma: no cover
        raise NotImplementedError


class DeploymentLog:
    """Durable per-deployment records, written from two threads: the executor
    records a run's steps, and the Heat source (through the executor's offer)
    creates a new deployment's pending record and marks the ones that left the
    metadata. Every write is one record read, changed and written under one
    lock, so neither thread's fields overwrite the other's: a run that ends
    while its deployment is marked removed is both done and removed."""

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(state_dir, "heat")
        self.dir = os.path.join(self.root, "deployments")
        self._lock = threading.Lock()
        self.on_change: Callable[[], None] = lambda: None  # the report, once there is one

    def _path(self, dep_id: str) -> str:
        return os.path.join(self.dir, f"{safe_id(dep_id)}.json")

    def get(self, dep_id: str) -> dict[str, Any] | None:
        return read_json_object(self._path(dep_id))

    def create(self, record: dict[str, Any]) -> bool:
        """Write a new record; False (and nothing written) if there is one."""
        with self._lock:
            if self.get(record["id"]) is not None:
                return False
            write_json(self._path(record["id"]), record, 0o600, durable=True)
            return True

    def change(
        self,
        dep_id: str,
        edit: Callable[[dict[str, Any]], None],
        default: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The record as it is now, changed by ``edit`` and written back (from
        ``default`` when there is none; None and nothing written without one)."""
        with self._lock:
            record = self.get(dep_id)
            if record is None:
                if default is None:
                    return None
                record = dict(default)
            edit(record)
            write_json(self._path(dep_id), record, 0o600, durable=True)
            return record

    def records(self) -> list[dict[str, Any]]:
        return read_json_dir(self.dir)

    def retain(self, current: set[str], when: float) -> None:
        """Records of deployments no longer in the metadata say so, and since
        when; one that comes back is no longer marked (and is not run again:
        its record still says it ran)."""

        def mark(record: dict[str, Any]) -> None:
            if record["id"] in current:
                record.pop("removed", None)
            else:
                record.setdefault("removed", when)

        changed = False
        for record in self.records():
            gone = record["id"] not in current
            if gone != bool(record.get("removed")):
                changed |= self.change(record["id"], mark) is not None
        if changed:
            self.on_change()


class Reapply:
    """Puppet configs Heat deployed that the core runs again when data changes."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "heat", "reapply.json")
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = read_json_object(self.path) or {}

    def _save(self) -> None:
        write_json(self.path, self._items, 0o600, durable=True)

    def keep(self, name: str, item: dict[str, Any]) -> None:
        with self._lock:
            self._items[name] = item
            self._save()

    def drop(self, names: set[str]) -> None:
        with self._lock:
            if names & set(self._items):
                for name in names:
                    self._items.pop(name, None)
                self._save()

    def retain(self, names: list[str]) -> None:
        """Forget configs whose deployment left the metadata (stack deleted it)."""
        with self._lock:
            gone = set(self._items) - set(names)
            if gone:
                for name in gone:
                    del self._items[name]
                self._save()

    def items(self, order: list[str]) -> list[dict[str, Any]]:
        """In deployment (metadata) order."""
        with self._lock:
            rank = {name: i for i, name in enumerate(order)}
            return [
                self._items[n] for n in sorted(self._items, key=lambda n: rank.get(n, len(rank)))
            ]


class DeploymentQueue:
    """The deployments still to run, from the latest metadata, in list order."""

    def __init__(self, log: DeploymentLog, reapply: Reapply) -> None:
        self.log = log
        self.reapply = reapply
        self._lock = threading.Lock()
        self._pending: list[Deployment] = []
        self.order: list[str] = []  # deployment names in metadata order

    def offer(self, deployments: list[Deployment], now: Callable[[], float] = time.time) -> None:
        self.log.retain({d.id for d in deployments}, now())
        pending = []
        for dep in deployments:
            if self.log.create(_record(dep, "pending", now())) or not _ran(self.log.get(dep.id)):
                pending.append(dep)  # new, or interrupted by a crash: run (again)
        with self._lock:
            self._pending = pending
            self.order = [d.name for d in deployments]
        self.reapply.retain(self.order)

    def next(self) -> Deployment | None:
        """The first deployment still to run. Its record is read again: an
        offer made while a run was under way may have seen it running, and
        set it pending after the run ended and was taken off this list."""
        with self._lock:
            while self._pending and _ran(self.log.get(self._pending[0].id)):
                self._pending.pop(0)
            return self._pending[0] if self._pending else None

    def done(self, dep: Deployment) -> None:
        with self._lock:
            self._pending = [d for d in self._pending if d.id != dep.id]


def _ran(record: dict[str, Any] | None) -> bool:
    """Done or failed: never run again. Anything else is run: pending, or
    running while no run is under way (interrupted by a crash)."""
    return record is not None and record.get("state") in ("done", "failed")


def _record(dep: Deployment, state: str, when: float) -> dict[str, Any]:
    return {
        "id": dep.id,
        "name": dep.name,
        "group": dep.group,
        "action": dep.action,
        "state": state,
        "created": when,
        "transport": dep.target.transport,
    }


def public_env(inputs: Mapping[str, Any]) -> dict[str, str]:
    """Inputs as environment variables (script hook): strings as they are,
    anything else as JSON, never a Python repr."""
    out = {}
    for name, value in inputs.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue
        out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


class Signals(Protocol):
    def put(self, dep_id: str, target: SignalTarget, body: dict[str, Any]) -> None: ...


class DeploymentRunner:
    """Runs one deployment through its applier, durably, and queues its signal."""

    def __init__(
        self,
        state_dir: str,
        queue: DeploymentQueue,
        appliers: dict[str, Applier],
        fallback: Applier,
        signals: Signals,
        after: Callable[[], None],
    ) -> None:
        self.outputs_dir = os.path.join(state_dir, "heat", "outputs")
        self.queue = queue
        self.log = queue.log
        self.appliers = appliers
        self.fallback = fallback
        self.signals = signals
        self.after = after

    def run(self, dep: Deployment) -> bool:
        fresh = _record(dep, "pending", time.time())

        def started(record: dict[str, Any]) -> None:
            runs = int(record.get("runs", 0)) + 1
            record.update(state="running", started=time.time(), runs=runs)

        # Written before the run: a crash now means "run it again".
        self.log.change(dep.id, started, default=fresh)
        os.makedirs(self.outputs_dir, mode=0o700, exist_ok=True)
        outputs_path = os.path.join(self.outputs_dir, safe_id(dep.id))
        for stale in _output_files(outputs_path, dep):
            os.unlink(stale)  # a re-run must not report a previous run's outputs
        if dep.invalid:
            outcome = DeploymentResult(
                1, "", f"mozagent: the deployment is malformed: {dep.invalid}", {}
            )
        else:
            applier = self.appliers.get(dep.group, self.fallback)
            try:
                outcome = applier.run(dep, outputs_path)
            except Exception as exc:  # an applier bug must still end in a signal
                outcome = DeploymentResult(
                    1, "", f"mozagent: the {dep.group} applier crashed: {exc!r}", {}
                )
        failed_outputs = [n for n in dep.error_outputs if outcome.outputs.get(n)]
        ok = outcome.status_code == 0 and not failed_outputs
        if dep.target.transport != "NO_SIGNAL":
            self.signals.put(dep.id, dep.target, outcome.body())
        ended = {
            "state": "done" if ok else "failed",
            "ended": time.time(),
            "status_code": outcome.status_code,
            "message": _summary(outcome, failed_outputs),
        }
        self.log.change(dep.id, lambda record: record.update(ended), default=fresh)
        self.queue.done(dep)
        self._remember(dep, ok, outputs_path)
        self.after()
        return ok

    def _remember(self, dep: Deployment, ok: bool, outputs_path: str) -> None:
        if dep.group != "puppet":
            return
        if dep.action == "DELETE":
            self.queue.reapply.drop({dep.name})
        elif ok:
            self.queue.reapply.keep(
                dep.name,
                {
                    "name": dep.name,
                    "id": dep.id,
                    "outputs_path": outputs_path,
                    "inputs": dep.inputs,
                    "options": dep.options,
                },
            )


def _output_files(prefix: str, dep: Deployment) -> list[str]:
    return [f"{prefix}.{o['name']}" for o in dep.outputs if os.path.exists(f"{prefix}.{o['name']}")]


def _summary(outcome: DeploymentResult, failed_outputs: list[str]) -> str:
    if failed_outputs:
        return f"failed: error output(s) {', '.join(failed_outputs)} set"
    if outcome.status_code == 0:
        return "ok"
    last = [line for line in outcome.stderr.strip().splitlines() if line.strip()][-1:]
    return f"failed: status {outcome.status_code}" + (f": {last[0][:300]}" if last else "")


class DeploymentLane:
    """Heat deployments as an executor lane: by id, in metadata order, each run
    once, ahead of the next config run (see apply/lanes.py)."""

    name = "deployments"
    phase = Phase.BEFORE_PUPPET

    def __init__(self, queue: DeploymentQueue, runner: DeploymentRunner) -> None:
        self.queue = queue
        self.runner = runner

    def pending(self) -> bool:
        return self.queue.next() is not None

    def take(self, snapshot: Snapshot) -> Job | None:
        dep = self.queue.next()
        if dep is None:
            return None
        return Job(f"deployment {dep.name}", lambda: self._run(dep))

    def _run(self, dep: Deployment) -> bool:
        logger = structlog.get_logger("mozagent")
        logger.info(
            "deployment_started",
            deployment=dep.id,
            name=dep.name,
            group=dep.group,
            action=dep.action,
        )
        ok = self.runner.run(dep)
        (logger.info if ok else logger.error)(
            "deployment_finished", deployment=dep.id, name=dep.name, ok=ok
        )
        return ok
