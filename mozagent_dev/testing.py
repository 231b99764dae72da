"""A real ZooKeeper server on a free loopback port, for tests, benchmarks and the demo.

It runs Debian's ``zookeeper`` package (``/usr/share/java/zookeeper.jar``)
standalone with a private data dir. One module, because the tests,
``bench/`` and the README's demo all need the same thing; outside the agent's
package (``mozagent_dev``), so no image carries it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ZK_JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar")
# What TLS needs besides: Debian's zookeeper.jar manifest lacks Netty's codec
# (reference/zookeeper.md), and TLS is served by Netty only.
NETTY_JARS = tuple(
    f"/usr/share/java/netty-{part}.jar"
    for part in (
        "codec", "resolver", "handler", "transport", "buffer", "common",
        "transport-native-epoll", "transport-native-unix-common",
    )
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll until predicate() is truthy and return its value; bounded, so no test,
    benchmark or demo can hang. Raises TimeoutError naming what it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def text_of(path: str | os.PathLike[str]) -> str:
    """A file's text, or "" while it does not exist yet (tests and bench poll for it)."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""


def zookeeper_available() -> bool:
    return os.path.exists(ZK_JARS[0]) and shutil.which("java") is not None


def tls_config(tls: tuple[Path, Path] | None, secure_port: int | None) -> str:
    """The zoo.cfg lines of a ``secureClientPort`` (``tls``: the server's
    certificate and key in one PEM, and the CA its clients must come from);
    shared by the standalone server and each ensemble member."""
    if tls is None:
        return ""
    keystore, ca = tls
    return (
        f"secureClientPort={secure_port}\n"
        "secureClientPortAddress=127.0.0.1\n"
        "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
        f"ssl.keyStore.location={keystore}\nssl.keyStore.type=PEM\n"
        f"ssl.trustStore.location={ca}\nssl.trustStore.type=PEM\n"
        "ssl.clientAuth=need\n"
        "authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider\n"
    )


def launch(main_class: str, cfg: Path, log_dir: Path, tls: bool) -> subprocess.Popen[bytes]:
    """Start one ZooKeeper JVM (standalone or a quorum peer) in a process group
    of its own, so it can be stopped or SIGKILLed by group without touching
    anything else on the machine; its log goes to ``log_dir/server.log``."""
    jars = ZK_JARS + (NETTY_JARS if tls else ())
    classpath = ":".join([str(cfg.parent), *[j for j in jars if os.path.exists(j)]])
    with open(log_dir / "server.log", "ab") as log:
        return subprocess.Popen(
            [
                "java",
                "-Xmx256m",
                "-Dzookeeper.4lw.commands.whitelist=ruok,srvr,stat,mntr",
                # Above ZooKeeper's 1 MB default, so tests can store an oversized value.
                "-Djute.maxbuffer=4194304",
                "-cp",
                classpath,
                main_class,
                str(cfg),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def terminate(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a launched server by its process group: ``sig`` (SIGKILL for a
    crash), then SIGKILL after 10 s; bounded either way."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def four_letter(port: int, word: str, timeout: float = 2.0) -> str:
    """A four-letter command's answer ("" when the server does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


class ZooKeeperServer:
    """Start with ``start()``, stop with ``stop()``; ``restart()`` keeps the data."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | None = None,
        tick_ms: int = 500,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``tls``: (the server's certificate and key in one PEM, the CA its
        clients' certificates must come from): a ``secureClientPort`` as well,
        client certificates required, their subjects x509 identities."""
        self.port = port or free_port()
        self.tls = tls
        self.secure_port = free_port() if tls else None
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="mozagent-zk-"))
        self.tick_ms = tick_ms
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_hosts(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    def _tls_config(self) -> str:
        return tls_config(self.tls, self.secure_port)

    def _write_config(self) -> Path:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "zoo.cfg"
        cfg.write_text(
            f"tickTime={self.tick_ms}\n"
            f"dataDir={self.dir / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "maxClientCnxns=200\n"
            "minSessionTimeout=1000\n" + self._tls_config()
        )
        return cfg

    def start(self, timeout: float = 30.0) -> None:
        if not zookeeper_available():
            raise RuntimeError("ZooKeeper is not installed: apt-get install zookeeper")
        cfg = self._write_config()
        self.proc = launch(
            "org.apache.zookeeper.server.ZooKeeperServerMain", cfg, self.dir, bool(self.tls)
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ZooKeeper exited with {self.proc.returncode}; see {self.dir / 'server.log'}"
                )
            if self._ruok() and self._secure_port_open():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ZooKeeper did not answer on {self.hosts} within {timeout:g} s")

    def _secure_port_open(self) -> bool:
        """Netty binds the TLS port after the plain one answers."""
        return self.secure_port is None or port_open(self.secure_port)

    def _ruok(self) -> bool:
        return four_letter(self.port, "ruok") == "imok"

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    def restart(self, downtime: float = 0.0) -> None:
        self.stop()
        time.sleep(downtime)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ZooKeeperServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``python -m mozagent_dev.testing DIR``: run a loopback ZooKeeper until SIGTERM.

    Writes ``host:port`` to ``DIR/hosts`` once it answers, so shell scripts (the
    README's demo) can use a real server without knowing Java.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mozagent_dev.testing")
    parser.add_argument("dir", help="data dir; the server's address is written to DIR/hosts")
    args = parser.parse_args(argv)
    server = ZooKeeperServer(data_dir=args.dir)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    (Path(args.dir) / "hosts").write_text(server.hosts + "\n")
    try:
        while not stop and server.proc is not None and server.proc.poll() is None:
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
