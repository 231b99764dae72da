"""A TCP relay on 127.0.0.1 that can partition its clients from a server, for tests and benchmarks.

A network partition cannot be made without root (no iptables, no netem), but
every client here names its server by ``host:port``: point it at this relay
instead and the relay decides what the network does (reference/zookeeper.md,
"a partition can be emulated without root by a small TCP proxy"). Modes,
switchable at any moment with :meth:`FaultProxy.set_mode`:

``pass``
    bytes flow both ways, as a direct connection.
``hold``
    a blackhole: connections stay open (new ones are accepted and connected
    upstream) but no byte moves in either direction. The relay stops
    *reading*, so what was sent waits in the kernel's buffers and arrives,
    in order, when the mode goes back to ``pass``, as a healed TCP path would
    deliver it (nothing is dropped, so a stream is never corrupted). Clients
    see silence, not an error: kazoo goes SUSPENDED after ~2/3 of its
    session timeout and the server expires the session if the hold outlasts it.
``reset``
    every open connection is aborted with an RST (SO_LINGER 0), both towards
    the client and the server, and every new connection is accepted and
    aborted at once, so clients see ECONNRESET on each attempt. (Closing the
    listening socket would give ECONNREFUSED instead, but the port could not
    be taken back safely on a machine where other tests pick free ports.)

Thread-based (one accept thread, two pumps per connection, all daemon
threads polling at most every 0.2 s), so a fault takes effect within 0.2 s
and :meth:`FaultProxy.close` ends everything within about that.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Literal

Mode = Literal["pass", "hold", "reset"]
MODES: tuple[Mode, ...] = ("pass", "hold", "reset")
POLL = 0.2  # how long a thread may block before it looks at the mode again


def abort(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: what a peer sees when a path resets."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One relayed connection: the client's socket and ours to the server.

    Only the link closes its sockets, once, under its lock: a socket closed
    by one thread while another is inside recv() on it is a race on the fd."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.lock = threading.Lock()
        self.done = False

    def finish(self, rst: bool) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            for sock in (self.client, self.upstream):
                if rst:
                    abort(sock)
                else:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()


class FaultProxy:
    """A relay from ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``.

    ``before_send`` is the one hook: called for each chunk after it is let
    through and just before it is sent on, so a subclass can act at a precise
    point of a protocol (stop the server once its first answer is on the way).
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", mode: Mode = "pass"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.upstream = (upstream_host, upstream_port)
        self._mode: Mode = mode
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0  # connections accepted since start, whatever became of them
        self.aborted = 0  # connections ended with an RST by a reset (or refused in reset)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(POLL)
        self.port: int = self.listener.getsockname()[1]
        self._spawn(self._accept)

    @property
    def hosts(self) -> str:
        """What to give a client instead of the server's address."""
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def open_connections(self) -> int:
        with self._changed:
            return sum(not link.done for link in self._links)

    def set_mode(self, mode: Mode) -> None:
        """Switch at once; threads blocked in ``hold`` wake now, pumps in a
        recv() notice within POLL seconds."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        with self._changed:
            self._mode = mode
            self._changed.notify_all()
        if mode == "reset":
            for link in self._live_links():
                self.aborted += 1
                link.finish(rst=True)

    def _live_links(self) -> list[_Link]:
        with self._changed:
            self._links = [link for link in self._links if not link.done]
            return list(self._links)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _flowing(self) -> bool:
        """Wait while held; True once bytes may move, False if the link must end."""
        with self._changed:
            while self._mode == "hold" and not self._closed.is_set():
                self._changed.wait(POLL)
            return self._mode == "pass" and not self._closed.is_set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self._mode == "reset":
                self.aborted += 1
                abort(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                abort(client)  # the server is down: the client sees what it would directly
                continue
            for sock in (client, upstream):
                sock.settimeout(POLL)
            link = _Link(client, upstream)
            with self._changed:
                self._links.append(link)
            self._spawn(self._pump, link, client, upstream, False)
            self._spawn(self._pump, link, upstream, client, True)

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        rst = False
        first = True
        while not link.done:
            if not self._flowing():
                rst = self._mode == "reset"
                break
            try:
                chunk = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            # Read while flowing, but the mode may have changed since: a held
            # chunk waits (and is delivered on heal), a reset one is dropped.
            if not self._flowing():
                rst = self._mode == "reset"
                break
            self.before_send(chunk, from_server, first)
            first = False
            try:
                dst.sendall(chunk)
            except OSError:
                break
        link.finish(rst=rst)

    def before_send(self, chunk: bytes, from_server: bool, first: bool) -> None:
        """The subclass hook (see the class docstring); ``first``: the first
        chunk in this direction of this connection (a protocol's handshake).
        Nothing by default."""

    def close(self) -> None:
        """Stop accepting, end every connection, join every thread."""
        self._closed.set()
        with self._changed:
            self._changed.notify_all()
        with contextlib.suppress(OSError):
            self.listener.close()
        for link in self._live_links():
            link.finish(rst=False)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
