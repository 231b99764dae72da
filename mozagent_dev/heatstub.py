"""A local server that follows Heat's instance-facing contract, for fast tests,
the Heat bench and demos (beside ``mozagent_dev.testing``, not shipped).

It plays what a POLL_TEMP_URL / CFN_SIGNAL / TEMP_URL_SIGNAL server sees from
an instance: the metadata document at ``/metadata`` (HEAD and GET, with
Last-Modified, as Swift serves a TempURL), signals as ``PUT /tempurl/<id>`` and
``POST /cfn/<id>`` (recorded, in order). It can fail its first N signal
requests, to prove retries, hold signal requests open without answering (a
dead endpoint), serve a document of any size generated as it is sent (never
held in memory), with or without Content-Length, or one byte at a time
(``trickle``), and the metadata the heat collector reads
(``GET /v1/<project>/stacks/<stack>/resources/<name>/metadata``; DELETE, as
Zaqar's pop, is answered the same).
Listens on 127.0.0.1 only; stop it with ``stop()``.
The real Heat is exercised by the real-Heat tests; this is the contract only.
"""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HeatStub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.metadata: Any = {}
        self.raw: bytes | None = None  # serve these bytes instead of the JSON
        self._modified = int(time.time()) - 10
        self.signals: list[tuple[str, str, Any]] = []  # (verb, deployment id, body)
        self.fail_signals = 0  # answer 503 to this many signal requests first
        self.failed = 0
        self.delay_signals = 0.0  # seconds to sit on a signal before answering
        self.received = 0  # signal requests seen, answered or not
        self.served: list[tuple[float, int]] = []  # (when, Last-Modified) of each GET
        self.head_times: list[float] = []  # when each HEAD was answered
        self.generated: tuple[int, bool] | None = None  # (size, send Content-Length)
        self.generated_sent: list[int] = []  # body bytes written, per GET of a generated one
        self.hold_signals = False  # signal requests wait, unanswered, until release()
        self.trickle = 0.0  # seconds between the bytes of a metadata body (a slow server)
        self.holding = 0  # signal requests held open now
        self._released = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _metadata(self, body: bool) -> None:
                with stub._lock:
                    generated = stub.generated
                    modified = stub._modified
                if generated is not None:
                    self._generate(*generated, modified, body)
                    return
                with stub._lock:
                    data = stub.raw if stub.raw is not None else json.dumps(stub.metadata).encode()
                    if self.path.startswith("/v1/"):  # the Heat API's resource metadata
                        data = json.dumps({"metadata": stub.metadata}).encode()
                    trickle = stub.trickle
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Last-Modified", formatdate(modified, usegmt=True))
                self.end_headers()
                if body and trickle:
                    try:
                        for i in range(len(data)):  # ends when the client hangs up
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(trickle)
                    except OSError:
                        pass
                elif body:
                    self.wfile.write(data)
                    with stub._lock:
                        stub.served.append((time.time(), modified))

            def _generate(self, size: int, length: bool, modified: int, body: bool) -> None:
                """A valid document of ``size`` bytes, written as it is made."""
                head, tail = b'{"deployments": [], "padding": "', b'"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if length:
                    self.send_header("Content-Length", str(size))
                self.send_header("Last-Modified", formatdate(modified, usegmt=True))
                self.end_headers()
                if not body:
                    return
                with stub._lock:
                    stub.served.append((time.time(), modified))
                chunk = b"x" * 65536
                left = size - len(head) - len(tail)
                try:
                    self.wfile.write(head)
                    while left > 0:
                        part = chunk[: min(left, len(chunk))]
                        self.wfile.write(part)
                        left -= len(part)
                    self.wfile.write(tail)
                except OSError:
                    pass  # the client stopped reading: what the limit is for
                with stub._lock:
                    stub.generated_sent.append(size - len(head) - len(tail) - left)

            def do_HEAD(self) -> None:
                self._metadata(False)
                with stub._lock:
                    stub.head_times.append(time.time())

            def do_GET(self) -> None:
                self._metadata(True)

            def do_DELETE(self) -> None:  # Zaqar's pop of the queue's message
                self._metadata(True)

            def _signal(self, verb: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                with stub._lock:
                    stub.received += 1
                    delay = stub.delay_signals
                    hold = stub.hold_signals
                    stub.holding += hold
                if hold:
                    stub._released.wait()
                    with stub._lock:
                        stub.holding -= 1
                    return  # never answered: the connection just closes
                if delay:
                    time.sleep(delay)
                with stub._lock:
                    if stub.failed < stub.fail_signals:
                        stub.failed += 1
                        code = 503
                    else:
                        code = 200
                        try:
                            body: Any = json.loads(data)
                        except ValueError:
                            body = data.decode(errors="replace")
                        ident = self.path.split("?")[0].rsplit("/", 1)[-1]
                        stub.signals.append((verb, ident, body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_PUT(self) -> None:
                self._signal("PUT")

            def do_POST(self) -> None:
                self._signal("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HeatStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def set_metadata(self, doc: Any, bump: bool = True) -> int:
        """Replace the document; returns its Last-Modified. With ``bump``,
        Last-Modified moves on by at least a second; without, it is the current
        second, as in Swift, where two writes in one second share it."""
        with self._lock:
            self.metadata = doc
            self.raw = None
            self.generated = None
            now = int(time.time())
            self._modified = max(self._modified + 1, now) if bump else now
            return self._modified

    def set_raw(self, data: bytes) -> None:
        with self._lock:
            self.raw = data
            self.generated = None
            self._modified = max(self._modified + 1, int(time.time()))

    def set_generated(self, size: int, content_length: bool = True) -> None:
        """Serve a valid JSON document of ``size`` bytes, made as it is sent."""
        with self._lock:
            self.generated = (size, content_length)
            self._modified = max(self._modified + 1, int(time.time()))

    def release(self) -> None:
        """Let held signal requests go (unanswered)."""
        self._released.set()

    def signals_for(self, dep_id: str) -> list[Any]:
        with self._lock:
            return [body for _, ident, body in self.signals if ident == dep_id]


def inputs(transport: str, url: str, dep_id: str, action: str = "CREATE", **extra: Any) -> list:
    """The inputs Heat adds to a deployment, for a URL transport."""
    verb = "PUT" if transport == "TEMP_URL_SIGNAL" else "POST"
    path = "tempurl" if transport == "TEMP_URL_SIGNAL" else "cfn"
    items = [
        {"name": "deploy_server_id", "value": "server-1"},
        {"name": "deploy_action", "value": action},
        {"name": "deploy_stack_id", "value": "stack/abc"},
        {"name": "deploy_resource_name", "value": f"res-{dep_id}"},
        {"name": "deploy_signal_transport", "value": transport},
        {"name": "deploy_signal_id", "value": f"{url}/{path}/{dep_id}?signature=s3cr3t-{dep_id}"},
        {"name": "deploy_signal_verb", "value": verb},
    ]
    for name, (kind, value) in extra.items():
        items.append({"name": name, "type": kind, "value": value})
    return items


def serve_directory(directory: str) -> None:
    """``python -m mozagent_dev.heatstub DIR`` (the demo): serve ``DIR/metadata.json``
    (re-read on every request) and store each signal as ``DIR/signals/<id>.json``.
    Writes its URL to ``DIR/url`` and serves until killed."""
    import os
    import signal as signals

    stub = HeatStub()
    meta = os.path.join(directory, "metadata.json")
    out = os.path.join(directory, "signals")
    os.makedirs(out, exist_ok=True)
    seen = {"mtime": 0.0}

    def refresh() -> None:
        try:
            mtime = os.stat(meta).st_mtime
        except FileNotFoundError:
            return
        if mtime != seen["mtime"]:
            seen["mtime"] = mtime
            with open(meta, encoding="utf-8") as fh:
                stub.set_metadata(json.load(fh))

    stub.start()
    with open(os.path.join(directory, "url"), "w", encoding="ascii") as fh:
        fh.write(stub.url)
    signals.signal(signals.SIGTERM, lambda *_: (stub.stop(), os._exit(0)))
    written = 0
    while True:
        refresh()
        with stub._lock:
            new = stub.signals[written:]
            written = len(stub.signals)
        for _, ident, body in new:
            with open(os.path.join(out, f"{ident}.json"), "w", encoding="utf-8") as fh:
                json.dump(body, fh, indent=2)
        time.sleep(0.1)


if __name__ == "__main__":  # pragma: no cover
    import sys

    serve_directory(sys.argv[1])
