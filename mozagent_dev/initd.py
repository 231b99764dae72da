"""A stand-in for the init system, where none runs (a container: the demo, the
tests, CI), so that a service puppet starts outlives the run that started it.

On an instance, puppet's ``service`` resources ask systemd, and the daemon
they start lives in systemd's cgroup, not in the run's. Here nothing plays
systemd, and mozagent rightly stops every process a run leaves behind: an
Apache started by ``/etc/init.d/apache2 start`` inside the run would be
killed with it. This server is started beside the agent, not under it; the
front ends' ``service_control`` (``mozpuppet::apache``, ``mozpuppet::mysql``)
makes puppet's start, stop and status of a service a request to it
(``call``), so the service is its child, as it would be systemd's.

It runs ``/etc/init.d/<service> <action>`` for the services it was told
about, nothing else, with a clean environment; it listens on a Unix socket
(0600) only, and stops the services it started when it is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ACTIONS = ("start", "stop", "status", "restart")
TIMEOUT = 120.0
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


def run(service: str, action: str) -> tuple[int, str]:
    try:
        out = subprocess.run(
            [f"/etc/init.d/{service}", action],
            env=ENV,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, f"initd: {service} {action}: {exc}"
    return out.returncode, (out.stdout + out.stderr)[-4000:]


def serve(path: Path, services: list[str]) -> None:
    """Answer requests until SIGTERM; then stop what was started."""
    started: set[str] = set()
    lock = threading.Lock()  # one action at a time, as an init system queues them
    if path.exists():
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    server.listen(8)
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.is_set():
        try:
            conn, _ = server.accept()
        except OSError:
            break
        with conn:
            conn.settimeout(10)
            try:
                request = json.loads(conn.makefile("r").readline())
                service, action = str(request["service"]), str(request["action"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if service not in services or action not in ACTIONS:
                code, text = 2, f"initd: {service!r} {action!r} is not served here"
            else:
                with lock:
                    code, text = run(service, action)
                    if action in ("start", "restart") and code == 0:
                        started.add(service)
            with contextlib.suppress(OSError):
                conn.sendall((json.dumps({"code": code, "output": text}) + "\n").encode())
    for service in sorted(started):
        run(service, "stop")
    path.unlink(missing_ok=True)


def call(path: Path, action: str, service: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT + 10)
        try:
            sock.connect(str(path))
            sock.sendall((json.dumps({"service": service, "action": action}) + "\n").encode())
            reply = json.loads(sock.makefile("r").readline())
        except (OSError, ValueError) as exc:
            print(f"initd: no answer from {path}: {exc}", file=sys.stderr)
            return 1
    sys.stdout.write(reply.get("output", ""))
    return int(reply.get("code", 1))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python mozagent_dev/initd.py")
    sub = parser.add_subparsers(dest="what", required=True)
    srv = sub.add_parser("serve", help="serve SOCKET for these init.d services")
    srv.add_argument("socket", type=Path)
    srv.add_argument("services", nargs="+")
    cli = sub.add_parser("call", help="ask SOCKET to start/stop/status/restart SERVICE")
    cli.add_argument("socket", type=Path)
    cli.add_argument("action", choices=ACTIONS)
    cli.add_argument("service")
    args = parser.parse_args(argv)
    if args.what == "serve":
        serve(args.socket, args.services)
        return 0
    return call(args.socket, args.action, args.service)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
