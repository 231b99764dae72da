"""A real 3- (or n-) server ZooKeeper ensemble on 127.0.0.1, for the chaos tests and bench.

Production runs an ensemble, not the standalone server of
:class:`mozagent_dev.testing.ZooKeeperServer`: leader elections, followers
dropping their clients and writes blocked during a failover only happen
here. Each member is Debian's ``QuorumPeerMain`` with its own dataDir and
``myid`` and its own client, quorum and election ports; the JVM launch, the
TLS lines and the four-letter words are :mod:`mozagent_dev.testing`'s, so the
two cannot drift apart. Every wait is bounded.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from mozagent_dev.testing import (
    four_letter,
    free_port,
    launch,
    port_open,
    terminate,
    tls_config,
    zookeeper_available,
)

QUORUM_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


class ZooKeeperEnsemble:
    """``start()`` all, ``kill(i)``/``stop(i)``/``start_server(i)`` one member,
    ``cleanup()`` (or the context manager) stops them all and removes the dirs."""

    def __init__(
        self, size: int = 3, tls: tuple[Path, Path] | None = None, tick_ms: int = 500
    ) -> None:
        """``tls`` as for ZooKeeperServer: (server certificate+key PEM, client CA PEM)."""
        self.size, self.tls, self.tick_ms = size, tls, tick_ms
        self.dir = Path(tempfile.mkdtemp(prefix="mozagent-zkens-"))
        self.ports = [free_port() for _ in range(size)]
        self.secure_ports = [free_port() for _ in range(size)] if tls else []
        self.peer_ports = [(free_port(), free_port()) for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def tls_hosts(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.secure_ports)

    def _server_dir(self, i: int) -> Path:
        return self.dir / f"zk{i + 1}"

    def _write_config(self, i: int) -> Path:
        base = self._server_dir(i)
        (base / "data").mkdir(parents=True, exist_ok=True)
        (base / "data" / "myid").write_text(f"{i + 1}\n")
        members = "".join(
            f"server.{n + 1}=127.0.0.1:{q}:{e}\n" for n, (q, e) in enumerate(self.peer_ports)
        )
        cfg = base / "zoo.cfg"
        cfg.write_text(
            f"tickTime={self.tick_ms}\n"
            "initLimit=10\nsyncLimit=5\n"
            f"dataDir={base / 'data'}\n"
            f"clientPort={self.ports[i]}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "maxClientCnxns=200\n"
            "minSessionTimeout=1000\n"
            # Peers reconnect to a restarted member quickly, not after a backoff.
            "cnxTimeout=2000\n"
            + members
            + tls_config(self.tls, self.secure_ports[i] if self.tls else None)
        )
        return cfg

    def start_server(self, i: int) -> None:
        """Launch member ``i`` (0-based) if it is not running; does not wait
        for a quorum (a lone member never answers ``ruok`` usefully)."""
        if not zookeeper_available():
            raise RuntimeError("ZooKeeper is not installed: apt-get install zookeeper")
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            return
        cfg = self._write_config(i)
        self.procs[i] = launch(QUORUM_MAIN, cfg, self._server_dir(i), bool(self.tls))

    def start(self, timeout: float = 60.0) -> None:
        for i in range(self.size):
            self.start_server(i)
        try:
            self.wait_for_quorum(timeout)
        except BaseException:
            self.cleanup()
            raise

    def mode(self, i: int) -> str:
        """``leader``, ``follower``, ``standalone``, or "" (down, or not serving:
        no quorum)."""
        for line in four_letter(self.ports[i], "srvr").splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return ""

    def leader(self) -> int | None:
        """The leader's index, or None while there is none (an election, no quorum)."""
        for i in range(self.size):
            if self.running(i) and self.mode(i) == "leader":
                return i
        return None

    def running(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def mntr(self, i: int) -> dict[str, str]:
        """Member ``i``'s ``mntr`` figures (zk_server_state, zk_znode_count, …); {} if down."""
        out: dict[str, str] = {}
        for line in four_letter(self.ports[i], "mntr").splitlines():
            key, _, value = line.partition("\t")
            if value:
                out[key] = value
        return out

    def wait_for_quorum(self, timeout: float = 60.0) -> int:
        """Until there is a leader and every running member serves (and its TLS
        port, if any, is bound); returns the leader's index."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.size):
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None and proc.returncode not in (
                    -signal.SIGKILL, -signal.SIGTERM, 143,
                ):  # fmt: skip
                    raise RuntimeError(
                        f"ZooKeeper {i + 1} exited with {proc.returncode}; "
                        f"see {self._server_dir(i) / 'server.log'}"
                    )
            running = [i for i in range(self.size) if self.running(i)]
            modes = {i: self.mode(i) for i in running}
            leader = next((i for i, m in modes.items() if m == "leader"), None)
            serving = all(m in ("leader", "follower") for m in modes.values())
            tls_up = not self.tls or all(port_open(self.secure_ports[i]) for i in running)
            if leader is not None and serving and tls_up:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"no quorum within {timeout:g} s: modes {modes}")
            time.sleep(0.1)

    def kill(self, i: int) -> None:
        """SIGKILL member ``i``: a crash, nothing flushed or said to its peers."""
        proc = self.procs[i]
        if proc is not None:
            terminate(proc, signal.SIGKILL)

    def stop(self, i: int) -> None:
        """SIGTERM member ``i`` (SIGKILL after 10 s)."""
        proc = self.procs[i]
        if proc is not None:
            terminate(proc)

    def stop_all(self) -> None:
        for i in range(self.size):
            self.stop(i)

    def cleanup(self) -> None:
        self.stop_all()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ZooKeeperEnsemble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
