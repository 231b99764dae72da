"""The Heat source: the server's metadata, polled like a Heat-booted server does.

At first boot the only metadata is local (``heat_local``, written by
cloud-init, or ``local``); its ``os-collect-config`` section names the remote
collector to poll next and its credentials (``request.metadata_url`` for
POLL_TEMP_URL, ``heat.*`` for POLL_SERVER_HEAT, ``cfn.*``, ``zaqar.*``). This
source follows it with nothing written by another tool, polls on a short
interval (back to the minimum after every change, growing to the maximum while
nothing changes, backing off on failures, with splay), keeps the last good
metadata of each collector under the state dir (0600: it holds credentials),
and hands the deployment list to the executor. It changes nothing on the host.

A collector whose source serves an unusable document (not JSON, over the size
limit, not a mapping) is in error for as long as it serves that document: a
poll that finds it unchanged keeps the error, and "last success" (``last_ok``)
is the last poll that found a usable document.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from mozagent.config import Config, HeatConfig
from mozagent.desired.deployments import Deployment, loads_bounded, parse_deployments
from mozagent.fileio import read_bytes, write_json
from mozagent.report.status import StatusStore, when
from mozagent.runtime import Worker
from mozagent.sources.collectors import (
    LOCAL,
    Collectors,
    NotConfigured,
    NotModified,
    Unavailable,
    Unusable,
    require_libraries,
)

log = structlog.get_logger("mozagent")


@dataclass
class PollTimer:
    """When to poll next. Pure: the caller passes what happened."""

    minimum: float
    maximum: float
    retry_max: float
    splay: float = 0.1
    rand: Callable[[], float] = random.random
    _interval: float = field(default=0.0, init=False)
    _failures: int = field(default=0, init=False)

    def next_delay(self, changed: bool, failed: bool) -> float:
        if failed:
            self._failures += 1
            base = min(self.minimum * 2**self._failures, self.retry_max)
        else:
            self._failures = 0
            if changed or not self._interval:
                self._interval = self.minimum
            else:
                self._interval = min(self._interval * 2, self.maximum)
            base = self._interval
        return base * (1 + self.splay * (2 * self.rand() - 1))


class HeatSource:
    worker = "heat"

    def __init__(
        self,
        cfg: Config,
        offer: Callable[[list[Deployment]], None],
        status: StatusStore,
        health: Worker,
        stopping: threading.Event,
    ) -> None:
        assert cfg.heat is not None
        require_libraries(cfg.source)  # exit 2 at start, not a failure at every poll
        self.h: HeatConfig = cfg.heat
        self.dir = os.path.join(cfg.state_dir, "heat", "metadata")
        self._offer = offer
        self.status = status
        self.health = health
        self.stopping = stopping
        self.collectors = Collectors(
            cfg.state_dir, self.h.os_collect_config_conf, self.h.request_timeout
        )
        self.timer = PollTimer(self.h.poll_min, self.h.poll_max, self.h.retry_max)
        self._wake = threading.Event()
        self._last_hash: str | None = None
        self._state: dict[str, dict[str, Any]] = {}  # per collector: what status shows
        self._problems: list[dict[str, str]] = []
        self._configured_local = False

    # --- cache ---------------------------------------------------------------------

    def _cache(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.json")

    def _cached(self, name: str) -> dict[str, Any] | None:
        try:
            data = read_bytes(self._cache(name))
            doc = None if data is None else loads_bounded(data)
        except (ValueError, OSError):
            return None
        return doc if isinstance(doc, dict) else None

    def _store(self, name: str, doc: dict[str, Any]) -> None:
        if self._cached(name) != doc:
            write_json(self._cache(name), doc, 0o600, durable=True)

    # --- one poll --------------------------------------------------------------------

    def _configure_local(self) -> None:
        if self._configured_local:
            return
        self.collectors.configure("heat_local", {"path": list(self.h.heat_local_paths)})
        self.collectors.configure("local", {"path": list(self.h.local_paths)})
        self._configured_local = True

    def _poll_one(self, name: str) -> tuple[dict[str, Any] | None, bool]:
        """(document, failed). A failure or "not modified" falls back to the cache."""
        state = self._state.setdefault(name, {"collector": name})
        now = time.time()
        try:
            doc = self.collectors.collect(name)
        except NotModified:
            if not state.get("unusable"):  # unchanged and usable: a success
                state.update(last_ok=now, error=None, failed_since=None)
            return self._cached(name), False
        except NotConfigured:
            state.update(error=None, configured=False)
            return None, False
        except Unusable as exc:  # logged as a problem (bad_metadata) by _report
            state.update(
                unusable=str(exc),
                unusable_since=state.get("unusable_since") or now,
                error=None,
                failed_since=None,
                configured=True,
            )
            return self._cached(name), name not in LOCAL
        except Unavailable as exc:
            if name in LOCAL:
                # No local metadata is what a server not booted by Heat has.
                state.update(error=None, configured=False)
                return self._cached(name), False
            cached = self._cached(name)
            first = state.get("error") is None
            state.update(error=str(exc), failed_since=state.get("failed_since") or now)
            if first:
                log.warning("metadata_unavailable", collector=name, error=str(exc))
            return cached, name not in LOCAL
        state.update(
            last_ok=now,
            error=None,
            failed_since=None,
            unusable=None,
            unusable_since=None,
            configured=True,
        )
        self._store(name, doc)
        return doc, False

    def poll(self) -> tuple[bool, bool]:
        """One round over the collectors: (deployments changed, a remote failed)."""
        self._configure_local()
        problems: list[dict[str, str]] = []
        documents: list[dict[str, Any]] = []
        section: dict[str, Any] = {}
        for name in LOCAL:
            doc, _ = self._poll_one(name)
            if doc is not None:
                documents.append(doc)
                occ = doc.get("os-collect-config")
                if isinstance(occ, dict):
                    section.update(occ)
                elif occ is not None:
                    problems.append(
                        {
                            "where": f"{name} metadata",
                            "message": "os-collect-config is not a mapping",
                        }
                    )
        # Which remote collectors: mozagent's config, else what the local
        # metadata says, else /etc/os-collect-config.conf.
        named = list(self.h.collectors) or [
            c for c in section.get("collectors") or [] if isinstance(c, str)
        ]
        remote = [c for c in named or self.collectors.from_conf_file() if c not in LOCAL]
        for name in remote:
            settings = section.get(name)
            if isinstance(settings, dict):
                for why in self.collectors.configure(name, settings):
                    problems.append({"where": f"os-collect-config.{name}", "message": why})
        failed = False
        for name in remote:
            doc, bad = self._poll_one(name)
            failed |= bad
            if doc is not None:
                documents.append(doc)
        metadata: dict[str, Any] = {}
        for doc in documents:
            metadata.update(doc)  # later collectors win, as os-apply-config merges them
        deployments, bad = parse_deployments(metadata, "heat metadata")
        problems.extend(p.as_dict() for p in bad)
        for name, state in self._state.items():
            if state.get("unusable"):
                problems.append(
                    {
                        "where": f"heat metadata ({name})",
                        "message": f"{state['unusable']} (unusable since "
                        f"{when(state.get('unusable_since'))}); the deployments stay as in "
                        "the last good metadata until it is fixed",
                    }
                )
            if state.get("error"):
                problems.append(
                    {
                        "where": f"heat metadata ({name})",
                        "message": f"{state['error']} since {when(state.get('failed_since'))}; "
                        "using the last good metadata",
                    }
                )
        self._report(remote, problems)
        if not isinstance(metadata.get("deployments", []), list):
            # Unusable as a whole: keep what the executor has (the last good
            # list, and the configs it re-applies); the problem is in status.
            return False, True
        digest = hashlib.sha256(
            json.dumps(
                [d.id for d in deployments] + [d.invalid or "" for d in deployments]
            ).encode()
        ).hexdigest()
        changed = digest != self._last_hash
        if changed:
            self._last_hash = digest
            self._offer(deployments)
        return changed, failed

    def _report(self, remote: list[str], problems: list[dict[str, str]]) -> None:
        in_use = next((n for n in remote if self._state.get(n, {}).get("last_ok")), None)
        # last_ok on a 30 s grid: status.json is rewritten when something
        # happens, not at every poll.
        collectors = []
        for state in self._state.values():
            shown = dict(state)
            if shown.get("last_ok"):
                shown["last_ok"] = shown["last_ok"] // 30 * 30
            collectors.append(shown)
        self.status.update(
            heat={
                "collectors": collectors,
                "polling": list(remote),
                "in_use": in_use,
            }
        )
        for p in problems:
            if p not in self._problems:
                log.error("bad_metadata", where=p["where"], error=p["message"])
        self._problems = problems
        self.status.set_errors("heat", problems)

    # --- the worker --------------------------------------------------------------------

    def start(self) -> None:
        """Nothing to open: collectors connect per poll."""

    def run(self) -> None:
        while not self.stopping.is_set():
            ok, result = self.health.guarded(self.poll)
            changed, failed = result if ok else (False, True)
            delay = self.timer.next_delay(changed, failed)
            self._wake.wait(delay)
            self._wake.clear()

    def once(self) -> None:
        self.poll()

    def report(self) -> None:
        """Each poll reports; nothing changes between polls."""

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Nothing held open between polls."""
