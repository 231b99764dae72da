"""One operator command's ZooKeeper session: where it connects, its time
budget, and the one way each failure is said.

Every command that talks to ZooKeeper (``data``, ``fleet``, ``deploy``,
``order``) runs its work through ``connected``, so that each one fails the
same way: one line, exit 1, saying whether a change may have been made.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kazoo.client import TransactionRequest
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.serialization import Create, SetData
from kazoo.protocol.states import ZnodeStat

from mozagent.cli.parser import (
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT_TIMEOUT,
    ROOT_ENV,
    ZOOKEEPER_ENV,
    Usage,
    config_of,
    fail,
)
from mozagent.config import DEFAULT_ROOT, ConfigError, config_path, parse_zk_hosts, parse_zk_root
from mozagent.desired.acl import InvalidPolicy
from mozagent.logs import route_client_logs
from mozagent.zkacl import PolicyClient, Refused, first_refusal
from mozagent.zkauth import (
    CREDENTIALS_ENV,
    TLS_ENV,
    Digest,
    Tls,
    read_credentials,
    tls_problem,
)
from mozagent.zkclient import CONNECTION_ERRORS, describe, make_client

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
SEQUENTIAL = 2  # ZooKeeper's CreateMode flag bit


class CommandError(Exception):
    """A failure to report to the operator; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Stalled(Exception):
    """ZooKeeper did not answer a read it had ``waited`` seconds for."""

    def __init__(self, waited: float) -> None:
        super().__init__(waited)
        self.waited = waited


class OutOfTime(Exception):
    """The deadline passed before a read was even asked: time ran out, which
    says nothing about ZooKeeper."""


@dataclass
class Session:
    """One command's connection and time budget. ``written`` tells the
    timeout message whether the change was made before ZooKeeper stalled."""

    client: PolicyClient
    root: str
    started: float  # time.monotonic() when the command started
    timeout: float
    written: bool = False
    hosts: str = "?"  # for messages: which ZooKeeper

    @property
    def wait_deadline(self) -> float:
        """A wait ends a little before the whole-command alarm, so that it can
        still name the hosts that did not answer."""
        return self.started + self.timeout - min(1.0, self.timeout / 10)

    @property
    def read_deadline(self) -> float:
        """Reads of a wait may end halfway between the wait's end and the
        alarm: the last poll, made as the wait ends, still has time to be
        answered by a healthy server, so a timeout is not taken for a stall."""
        return (self.wait_deadline + self.started + self.timeout) / 2

    def result(self, pending: Any, deadline: float | None = None) -> Any:
        remaining = (deadline or self.started + self.timeout + 5) - time.monotonic()
        if remaining <= 0:
            raise OutOfTime()
        try:
            return pending.get(timeout=remaining)
        except KazooTimeoutError:
            raise Stalled(remaining) from None

    def get_many(
        self, paths: Iterable[str], deadline: float | None = None, refused: bool = False
    ) -> dict[str, tuple[bytes, ZnodeStat] | Refused | None]:
        """Each znode's data and stat; None when gone; with ``refused``, a
        znode this identity may not read is its Refused, not the command's end."""
        pending = {path: self.client.get_async(path) for path in paths}
        found: dict[str, tuple[bytes, ZnodeStat] | Refused | None] = {}
        for path, result in pending.items():
            try:
                data, stat = self.result(result, deadline)
                found[path] = (data or b"", stat)
            except NoNodeError:
                found[path] = None
            except Refused as exc:
                if not refused:
                    raise
                found[path] = exc
        return found

    def stats(
        self, paths: Iterable[str], deadline: float | None = None
    ) -> dict[str, ZnodeStat | None]:
        pending = {path: self.client.exists_async(path) for path in paths}
        return {path: self.result(result, deadline) for path, result in pending.items()}

    def get(self, path: str, deadline: float | None = None) -> tuple[bytes, ZnodeStat] | None:
        return self.get_many([path], deadline)[path]

    def children(
        self, path: str, deadline: float | None = None
    ) -> tuple[list[str], ZnodeStat] | None:
        try:
            names, stat = self.result(
                self.client.get_children_async(path, include_data=True), deadline
            )
        except NoNodeError:
            return None
        return sorted(names), stat


def commit_change(txn: TransactionRequest, doing: str) -> list[Any] | None:
    """Commit a change with its audit entry: the results when both went in,
    None when a znode changed meanwhile (the caller says what that means, or
    tries again); a refusal or any other failure is the command's error.

    A connection lost during the commit (a leader election, a partition)
    leaves the change unknown: it may have gone in with no answer. Sending it
    again could make a sequential znode twice (two orders), so the change is
    looked for first, by its sequential creates (every audited change has one,
    its audit entry, whose bytes are this command's own): found, it went in
    once; not found after a sync, it did not, and the same operations go
    again. Bounded by the command's --timeout, as every wait here."""
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            results = txn.commit()
        except CONNECTION_ERRORS:
            if attempt + 1 == COMMIT_ATTEMPTS or not _markers(txn):
                raise
            landed = _landed(txn)
            if landed is not None:
                return landed
            txn = _again(txn)
            continue
        failures = [r for r in results if isinstance(r, Exception)]
        if not failures:
            return results
        if (refused := first_refusal(failures)) is not None:
            raise CommandError(f"{refused}; nothing written")
        if any(isinstance(r, BadVersionError | NodeExistsError | NoNodeError) for r in failures):
            return None
        first = next((r for r in failures if not isinstance(r, RolledBackError)), failures[0])
        raise CommandError(f"{doing} failed: {type(first).__name__}; nothing written")
    raise AssertionError("unreachable: the last attempt raises")


COMMIT_ATTEMPTS = 5
# How far back a lost commit's sequential znode is looked for: newer siblings
# are other commands' since; a busy trail gets far fewer in one command's time.
LOOKBACK = 1000
FIND_BATCH = 100


def _markers(txn: TransactionRequest) -> list[Create]:
    return [op for op in txn.operations if isinstance(op, Create) and op.flags & SEQUENTIAL]


def _again(txn: TransactionRequest) -> TransactionRequest:
    """The same operations, as a transaction not yet committed."""
    fresh = txn.client.transaction()
    fresh.operations = list(txn.operations)
    return fresh


def _find(client: Any, parent: str, names: list[str], data: bytes) -> str | None:
    """The path of the first of ``names`` under ``parent`` holding ``data``:
    read a batch at a time, pipelined, so a long trail costs round trips by
    the batch, not by the znode."""
    for start in range(0, len(names), FIND_BATCH):
        batch = names[start : start + FIND_BATCH]

        def read(batch: list[str] = batch) -> str | None:
            pending = [(n, client.get_async(f"{parent}/{n}")) for n in batch]
            for name, result in pending:
                try:
                    got, _ = result.get()
                except NoNodeError:
                    continue
                if got == data:
                    return f"{parent}/{name}"
            return None

        if (hit := client.retry(read)) is not None:
            return hit
    return None


def _landed(txn: TransactionRequest) -> list[Any] | None:
    """The results of a commit whose answer was lost, if it went in; None if
    it did not. Its sequential znodes are found by their exact bytes among the
    newest siblings of their prefix, after a sync so the read is not behind
    the leader that may have taken the commit."""
    client = txn.client
    found: dict[int, str] = {}
    for marker in _markers(txn):
        # An operation's path carries the client's chroot; a request adds it again.
        parent, prefix = client.unchroot(marker.path).rsplit("/", 1)
        client.retry(client.sync, parent)
        try:
            names = client.retry(client.get_children, parent)
        except NoNodeError:
            return None
        newest = sorted((n for n in names if n.startswith(prefix)), reverse=True)[:LOOKBACK]
        hit = _find(client, parent, newest, marker.data)
        if hit is None:
            return None  # a transaction goes in whole or not at all: one absent is enough
        found[id(marker)] = hit
    results: list[Any] = []
    for op in txn.operations:
        if isinstance(op, Create):
            results.append(found.get(id(op), client.unchroot(op.path)))
        elif isinstance(op, SetData):
            results.append(client.retry(client.exists, client.unchroot(op.path)))
        else:
            results.append(True)
    return results


def target_of(args: argparse.Namespace) -> tuple[str, str]:
    """ZooKeeper hosts and root: option, then environment, then config file."""
    cfg = config_of(args, required=False)
    zk_cfg = cfg.zookeeper if cfg else None
    hosts = getattr(args, "zookeeper", None) or os.environ.get(ZOOKEEPER_ENV)
    if hosts:
        parse_zk_hosts("command line", "--zookeeper", hosts)
    elif zk_cfg:
        hosts = zk_cfg.hosts
    else:
        raise ConfigError(
            f"no ZooKeeper hosts: pass --zookeeper HOSTS, set ${ZOOKEEPER_ENV}, or set "
            f"zookeeper.hosts in {config_path(getattr(args, 'config', None))}"
        )
    root = getattr(args, "root", None) or os.environ.get(ROOT_ENV)
    if root:
        root = parse_zk_root("command line", "--root", root)
    else:
        root = zk_cfg.root if zk_cfg else DEFAULT_ROOT
    return hosts, root


def identity_of(args: argparse.Namespace) -> Digest | None:
    """The operator's ZooKeeper identity: the file ${CREDENTIALS_ENV} names,
    else the config's ``zookeeper.credentials_file`` (a command run on a host
    as the agent's user), else none. Only the path is ever an argument."""
    path = os.environ.get(CREDENTIALS_ENV)
    if not path:
        cfg = config_of(args, required=False)
        path = cfg.zookeeper.credentials_file if cfg and cfg.zookeeper else None
    return read_credentials(path) if path else None


def tls_of(args: argparse.Namespace) -> Tls | None:
    """The operator's TLS files: ${TLS_ENV['ca']} (and _CERT, _KEY), else the
    config's ``zookeeper.tls_*``; a TLS setup is never dropped for plain text."""
    ca, cert, key = (os.environ.get(TLS_ENV[k]) for k in ("ca", "cert", "key"))
    if not ca and (cert or key):
        raise ConfigError(f"${TLS_ENV['cert']} and ${TLS_ENV['key']} need ${TLS_ENV['ca']}")
    if not ca:
        cfg = config_of(args, required=False)
        z = cfg.zookeeper if cfg else None
        ca, cert, key = (z.tls_ca, z.tls_cert, z.tls_key) if z else (None, None, None)
    elif (cert is None) != (key is None):
        raise ConfigError(f"set both ${TLS_ENV['cert']} and ${TLS_ENV['key']}, or neither")
    return Tls(ca, cert, key).check() if ca else None


def _unreachable(hosts: str, timeout: float, tls: Tls | None) -> int:
    """No session: with TLS, one handshake of our own says whether TLS is why."""
    why = tls_problem(hosts, tls, timeout=2.0) if tls else None
    return fail(
        f"cannot connect to ZooKeeper at {hosts} within {timeout:g} s"
        + (f" ({why})" if why else ""),
        1,
    )


def timeout_of(args: argparse.Namespace, wait: bool) -> float:
    timeout = getattr(args, "timeout", DEFAULT_WAIT_TIMEOUT if wait else DEFAULT_TIMEOUT)
    if not 0 < timeout < float("inf"):
        raise Usage(f"--timeout must be a positive number of seconds, got {timeout!r}")
    return timeout


def connected(
    args: argparse.Namespace,
    timeout: float,
    writes: bool,
    work: Callable[[Session], int],
    target: tuple[str, str] | None = None,
    load_policy: bool = True,
) -> int:
    """Run ``work`` on a ZooKeeper session, the whole of it bounded by ``timeout``;
    ``writes``: whether a cut-short command may have made its change."""
    hosts, root = target or target_of(args)
    identity, tls = identity_of(args), tls_of(args)
    started = time.monotonic()
    # A reconnect delay longer than the whole command would end after it.
    client = make_client(
        hosts,
        session_timeout=min(timeout, 10.0),
        retry_max=timeout,
        logger=route_client_logs(),
        identity=identity,
        tls=tls,
        root=root,
    )
    session = Session(client, root, started, timeout, hosts=hosts)
    timed_out = reached = False
    try:
        with _total_time(timeout):
            try:
                client.start(timeout=timeout)
            except KazooTimeoutError:
                return _unreachable(hosts, timeout, tls)
            reached = True
            if load_policy:
                client.retry(client.load_policy)  # as any first read: a stall is the alarm's
            return work(session)
    except _Deadline:
        timed_out = True
        if not reached:
            return _unreachable(hosts, timeout, tls)
        return fail(
            f"ZooKeeper at {hosts} did not answer within {timeout:g} s (--timeout)"
            + _what_was_written(session.written, writes),
            1,
        )
    except CommandError as exc:
        return fail(str(exc), exc.code)
    except CONNECTION_ERRORS as exc:
        return fail(describe(exc, hosts) + _what_was_written(session.written, writes), 1)
    except Refused as exc:
        hint = "" if identity or tls else f" (name one with ${CREDENTIALS_ENV})"
        # A refused request changed nothing; writes are one request or one transaction.
        done = _what_was_written(True, writes) if session.written else ""
        done = done or ("; nothing was changed" if writes else "")
        return fail(f"{exc}{hint}{done}", 1)
    except NoAuthError:  # kazoo's own requests (its session's): no znode to name
        return fail(
            f"ZooKeeper at {hosts} refused a request (NoAuth) from {client.who}"
            + _what_was_written(session.written, writes),
            1,
        )
    except InvalidPolicy as exc:
        return fail(f"the ACL policy in ZooKeeper cannot be used: {exc}; nothing written", 1)
    except KazooException as exc:
        return fail(f"ZooKeeper refused the request: {type(exc).__name__} {exc}".strip(), 1)
    finally:
        client.logger.disabled = True  # the command has said what happened: no epilogue
        if timed_out:
            _close_quietly(client)
        else:
            client.stop()
            client.close()


def _what_was_written(written: bool, writes: bool) -> str:
    """After a command was cut short: whether its change was made."""
    if written:
        return "; the change was made, but following the hosts was cut short"
    if writes:
        return "; the change may or may not have been made: check with `data get/export`"
    return ""


class _Deadline(Exception):
    """The command's whole time (``--timeout``) is up."""


@contextmanager
def _total_time(seconds: float) -> Iterator[None]:
    """Bound a whole command, not only its connect: kazoo waits without a limit
    for a server that accepted the session and then stopped answering."""

    def expire(signum: int, frame: object) -> None:
        raise _Deadline()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _close_quietly(client: Any) -> None:
    """Closing a session on a server that does not answer can itself block."""

    def close() -> None:
        try:
            client.stop()
            client.close()
        except Exception as exc:  # best effort on the way out
            print(f"mozagent: closing the session failed: {exc!r}", file=sys.stderr)

    thread = threading.Thread(target=close, daemon=True)
    thread.start()
    thread.join(timeout=2)
