"""What status shows of Heat deployments and their signals.

Built from the executor's deployment records and the outbox's signal states,
never from the deployments themselves, so no credential can reach status.json.
Only the latest deployment of each name counts for health: an UPDATE that
succeeded clears the failure of the CREATE before it, and a deployment that
left the metadata (its stack deleted it) counts no more; it is listed as
removed, its record kept so that it never runs again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from mozagent.desired.deployments import safe_id, short
from mozagent.fileio import read_json_dir, read_json_object, write_json
from mozagent.report.signals import Outbox
from mozagent.report.status import StatusStore

SHOWN = 50
STUCK_ATTEMPTS = 3


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


class HeatReport:
    def __init__(self, status: StatusStore, log: DeploymentLog, outbox: Outbox) -> None:
        self.status = status
        self.log = log
        self.outbox = outbox
        self._lock = threading.Lock()
        log.on_change = self.refresh

    def refresh(self) -> None:
        with self._lock:
            signals = self.outbox.states()
            records = sorted(self.log.records(), key=lambda r: r.get("created") or 0)
            latest: dict[str, str] = {}
            for r in records:
                if not r.get("removed"):
                    latest[str(r.get("name"))] = r["id"]
            shown: list[dict[str, Any]] = []
            for r in records[-SHOWN:]:
                sig = signals.get(r["id"]) or {}
                shown.append(
                    {
                        "id": r["id"],
                        "name": r.get("name"),
                        "group": r.get("group"),
                        "action": r.get("action"),
                        "state": r.get("state"),
                        "message": r.get("message"),
                        "ended": r.get("ended"),
                        "removed": r.get("removed"),
                        "latest": latest.get(str(r.get("name"))) == r["id"],
                        "signal": (
                            {"state": "none"}
                            if r.get("transport") == "NO_SIGNAL"
                            else {
                                "state": sig.get("state", "pending"),
                                "attempts": sig.get("attempts", 0),
                                "last_error": sig.get("last_error"),
                                "transport": r.get("transport"),
                            }
                        ),
                    }
                )
            errors = []
            for d in shown:
                sig = d["signal"]
                if sig["state"] == "failed" or (
                    sig["state"] == "pending" and (sig.get("attempts") or 0) >= STUCK_ATTEMPTS
                ):
                    errors.append(
                        {
                            "where": f"signal of deployment {short(str(d['name']))} "
                            f"({short(d['id'])})",
                            "message": f"{sig['state']} after {sig.get('attempts')} attempts: "
                            f"{sig.get('last_error')}",
                        }
                    )
            self.status.update(deployments=shown)
            self.status.set_errors("signals", errors)
