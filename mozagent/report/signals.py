"""Signals to Heat: a durable outbox and the worker that empties it.

A signal is written to ``<state_dir>/heat/signals/<id>.json`` (0600: it holds the
credentials or pre-signed URL it needs) *before* it is sent, and is retried
until Heat answers 2xx: a few quick tries with tenacity (exponential backoff,
jitter, a cap), then again later with a longer backoff, across restarts. Once
sent, the credentials and body are dropped from the file. The HTTP status is
checked (heat-config-notify never did). Heat ignores a signal for a deployment
that is no longer IN_PROGRESS, so sending one twice after a crash is harmless.

Signals are sent per endpoint (scheme, host and port): one at a time to each
endpoint, oldest first among those due, and up to ``MAX_ENDPOINTS`` endpoints
at once, so a server that accepts a request and never answers holds up only
its own signals. Order is kept per deployment, which is all Heat needs: a
deployment has one signal in the outbox at a time (a re-run's replaces the
one before). Across deployments it is not: a signal waiting out its backoff
lets later ones to the same server go first, so that one deployment's failing
signal (a stack Heat deleted answers 404) never holds back the others.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import structlog
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from mozagent.desired.deployments import SignalTarget, redact, safe_id
from mozagent.fileio import read_json_dir, read_json_object, write_json
from mozagent.runtime import Worker

log = structlog.get_logger("mozagent")
# Heat answers these when the deployment or its stack is gone: retrying cannot help.
GONE = (404, 410)
GIVE_UP_AFTER = 5
# Endpoints sent to at once: each stuck one costs a thread for at most three
# request timeouts, and Heat signals are few.
MAX_ENDPOINTS = 4


class SendError(Exception):
    """A try that did not reach a 2xx; ``status`` is the HTTP status if any.
    The message is redacted: it goes to logs and status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(redact(message))
        self.status = status


def _check(response: Any, what: str) -> int:
    code = int(response.status_code)
    if 200 <= code < 300:
        return code
    text = (getattr(response, "text", "") or "")[:200].replace("\n", " ")
    raise SendError(f"{what}: HTTP {code} {text}".strip(), code)


def send(target: SignalTarget, body: dict[str, Any], timeout: float) -> int:
    """One delivery of ``body`` by the deployment's transport; the HTTP status."""
    data = json.dumps(body)
    if target.transport in ("CFN_SIGNAL", "TEMP_URL_SIGNAL"):
        import requests

        if not target.url:
            raise SendError(f"{target.transport}: no signal URL in the deployment")
        try:
            response = requests.request(
                target.verb,
                target.url,
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=timeout,
            )
        except requests.RequestException as exc:
            raise SendError(f"{target.transport}: {type(exc).__name__}: {exc}") from None
        return _check(response, target.transport)
    if target.transport == "HEAT_SIGNAL":
        return _heat_signal(target, body, timeout)
    if target.transport == "ZAQAR_SIGNAL":
        return _zaqar_signal(target, body, timeout)
    raise SendError(f"unknown transport {target.transport!r}")


def _session(target: SignalTarget, timeout: float) -> Any:
    """A keystone v3 session with the deployment's own credentials."""
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth = v3.Password(
        auth_url=target.auth_url,
        user_id=target.user_id,
        username=None if target.user_id else target.username,
        password=target.password,
        project_id=target.project_id,
    )
    return session.Session(auth=auth, timeout=timeout)


def _heat_signal(target: SignalTarget, body: dict[str, Any], timeout: float) -> int:
    from keystoneauth1 import exceptions as ks_exc

    if not (target.auth_url and target.password and target.stack_id and target.resource_name):
        raise SendError("HEAT_SIGNAL: the deployment lacks credentials or its stack/resource")
    try:
        sess = _session(target, timeout)
        endpoint = sess.get_endpoint(
            service_type="orchestration", interface="public", region_name=target.region_name
        )
        resource = f"stacks/{target.stack_id}/resources/{target.resource_name}"
        url = f"{endpoint.rstrip('/')}/{resource}/signal"
        response = sess.post(url, json=body, raise_exc=False)
    except ks_exc.ClientException as exc:
        raise SendError(f"HEAT_SIGNAL: {type(exc).__name__}: {exc}") from None
    return _check(response, "HEAT_SIGNAL")


def _zaqar_signal(target: SignalTarget, body: dict[str, Any], timeout: float) -> int:
    from keystoneauth1 import exceptions as ks_exc

    if not (target.auth_url and target.password and target.queue_id):
        raise SendError("ZAQAR_SIGNAL: the deployment lacks credentials or its queue")
    try:
        sess = _session(target, timeout)
        endpoint = sess.get_endpoint(
            service_type="messaging", interface="public", region_name=target.region_name
        )
        url = f"{endpoint.rstrip('/')}/v2/queues/{target.queue_id}/messages"
        response = sess.post(
            url,
            json={"messages": [{"body": body, "ttl": 600}]},
            headers={"Client-ID": str(uuid.uuid4())},  # Zaqar wants a UUID
            raise_exc=False,
        )
    except ks_exc.ClientException as exc:
        raise SendError(f"ZAQAR_SIGNAL: {type(exc).__name__}: {exc}") from None
    return _check(response, "ZAQAR_SIGNAL")


class Outbox:
    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "heat", "signals")
        self._lock = threading.Lock()

    def _path(self, dep_id: str) -> str:
        return os.path.join(self.dir, f"{safe_id(dep_id)}.json")

    def _read(self, path: str) -> dict[str, Any] | None:
        doc = read_json_object(path)
        return doc if doc is not None and "id" in doc else None

    def put(self, dep_id: str, target: SignalTarget, body: dict[str, Any]) -> None:
        """Durable before anything is sent: a crash after this still signals."""
        entry = {
            "id": dep_id,
            "state": "pending",
            "attempts": 0,
            "created": time.time(),
            "next_try": 0.0,
            "transport": target.transport,
            "target": target.as_dict(),
            "body": body,
        }
        with self._lock:
            write_json(self._path(dep_id), entry, 0o600, durable=True)

    def update(self, dep_id: str, **fields: Any) -> None:
        with self._lock:
            entry = self._read(self._path(dep_id))
            if entry is None:
                return
            entry.update(fields)
            if entry["state"] != "pending":
                entry.pop("target", None)  # no credential outlives its use
                entry.pop("body", None)
            write_json(self._path(dep_id), entry, 0o600, durable=True)

    def entries(self) -> list[dict[str, Any]]:
        return read_json_dir(self.dir)

    def states(self) -> dict[str, dict[str, Any]]:
        """What status shows of each signal: no target, no body."""
        keep = ("state", "attempts", "last_error", "sent", "http_status", "transport")
        return {e["id"]: {k: e.get(k) for k in keep} for e in self.entries()}


def endpoint(entry: dict[str, Any]) -> str:
    """What one slow server holds up: the signals to the same scheme, host and
    port (a heat-api-cfn, a Swift, a Keystone), whatever their transport, sent
    one at a time. Never shown: it may be a URL."""
    target = entry.get("target") or {}
    url = str(target.get("url") or target.get("auth_url") or "")
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port}"
    except ValueError:  # a port that is not a number: a queue of its own
        return url


class Sender:
    """The worker that delivers pending signals: per endpoint, oldest first."""

    worker = "signals"

    def __init__(
        self,
        outbox: Outbox,
        health: Worker,
        stopping: threading.Event,
        retry_max: float,
        timeout: float,
        on_change: Callable[[], None],
        transport: Callable[[SignalTarget, dict[str, Any], float], int] = send,
    ) -> None:
        self.outbox = outbox
        self.health = health
        self.stopping = stopping
        self.retry_max = retry_max
        self.timeout = timeout
        self.on_change = on_change
        self.transport = transport
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Thread] = {}  # endpoint → its sender

    def wake(self) -> None:
        self._wake.set()

    def deliver(self, entry: dict[str, Any]) -> None:
        """A few quick tries now; if they fail, schedule the next round later."""
        dep_id = entry["id"]
        target = SignalTarget.from_dict(entry.get("target") or {})
        attempts = int(entry.get("attempts") or 0)
        retrying = Retrying(
            stop=stop_after_attempt(3),
            wait=wait_exponential_jitter(multiplier=0.5, max=5.0),
            retry=retry_if_exception_type(SendError),
            sleep=self.stopping.wait,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    attempts += 1
                    if self.stopping.is_set():
                        raise SendError("the agent is stopping")
                    code = self.transport(target, entry.get("body") or {}, self.timeout)
        except SendError as exc:
            gone = exc.status in GONE and attempts >= GIVE_UP_AFTER
            delay = min(2.0 ** min(attempts, 20), self.retry_max)
            self.outbox.update(
                dep_id,
                state="failed" if gone else "pending",
                attempts=attempts,
                last_error=str(exc),
                next_try=time.time() + delay,
            )
            log.warning(
                "signal_failed",
                deployment=dep_id,
                transport=target.transport,
                error=str(exc),
                attempts=attempts,
                given_up=gone,
            )
        else:
            self.outbox.update(
                dep_id,
                state="sent",
                attempts=attempts,
                sent=time.time(),
                http_status=code,
                last_error=None,
            )
            log.info("signal_sent", deployment=dep_id, transport=target.transport, status=code)
        self.on_change()

    def _due(self) -> dict[str, list[dict[str, Any]]]:
        """The signals due now, by endpoint, oldest first."""
        now = time.time()
        due = [
            e
            for e in self.outbox.entries()
            if e.get("state") == "pending" and float(e.get("next_try") or 0) <= now
        ]
        queues: dict[str, list[dict[str, Any]]] = {}
        for entry in sorted(due, key=lambda e: e.get("created") or 0):
            queues.setdefault(endpoint(entry), []).append(entry)
        return queues

    def _drain(self, entries: list[dict[str, Any]]) -> None:
        """One endpoint's signals that are due, one after the other, oldest first."""
        for entry in entries:
            if self.stopping.is_set():
                return
            self.health.beat()
            ok, _ = self.health.guarded(lambda e=entry: self.deliver(e))
            if not ok:
                break  # a bug, logged: the rest waits for the next round
        self._wake.set()  # this endpoint is free: what came meanwhile goes now

    def run_once(self) -> None:
        """Deliver every signal that is due, and wait for them (``daemon --once``)."""
        queues = list(self._due().values())
        if not queues:
            return
        workers = min(MAX_ENDPOINTS, len(queues))
        with ThreadPoolExecutor(workers, thread_name_prefix="mozagent-signal") as pool:
            list(pool.map(self._drain, queues))

    def dispatch(self) -> None:
        """Start a sender for every endpoint with signals due and none under way."""
        with self._lock:
            self._busy = {k: t for k, t in self._busy.items() if t.is_alive()}
            for key, entries in self._due().items():
                if key in self._busy:
                    continue
                if len(self._busy) >= MAX_ENDPOINTS:
                    break
                thread = threading.Thread(
                    target=self._drain, args=(entries,), name="mozagent-signal", daemon=True
                )
                self._busy[key] = thread
                thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.health.guarded(self.dispatch)
            self._wake.wait(1.0)
            self._wake.clear()
        # A send under way ends within its timeout; what it leaves pending is
        # sent again at the next start (Heat ignores a repeat).
        deadline = time.monotonic() + 5.0
        for thread in list(self._busy.values()):
            thread.join(max(deadline - time.monotonic(), 0.0))
