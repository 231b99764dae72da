"""What status shows of Heat deployments and their signals.

Built from the executor's deployment records and the outbox's signal states,
never from the deployments themselves, so no credential can reach status.json.
Only the latest deployment of each name counts for health: an UPDATE that
succeeded clears the failure of the CREATE before it, and a deployment that
left the metadata (its stack deleted it) counts no more; it is listed as
removed, its record kept so that it never runs again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from mozagent.desired.deployments import short
from mozagent.report.signals import Outbox
from mozagent.report.status import StatusStore

SHOWN = 50
STUCK_ATTEMPTS = 3


class Records(Protocol):
    """The deployment records as this report reads them (the executor's
    ``apply.deployments.DeploymentLog``): every record, and a hook it calls
    when one changes."""

    on_change: Callable[[], None]

    def records(self) -> list[dict[str, Any]]: ...


class HeatReport:
    def __init__(self, status: StatusStore, log: Records, outbox: Outbox) -> None:
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
