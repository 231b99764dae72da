"""One place that builds kazoo clients, for the daemon and the operator CLI alike."""

from __future__ import annotations

import logging

# What ZooKeeper can throw at a reader when the connection or session goes away.
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from mozagent.zkacl import PolicyClient
from mozagent.zkauth import Digest, Tls, subject_of

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionLoss,
    ConnectionClosedError,
    SessionExpiredError,
    OperationTimeoutError,
    KazooTimeoutError,
)


def make_client(
    hosts: str,
    session_timeout: float = 10.0,
    retry_max: float = 30.0,
    logger: logging.Logger | None = None,
    identity: Digest | None = None,
    tls: Tls | None = None,
    root: str | None = None,
) -> PolicyClient:
    """Reconnect forever, with jittered exponential backoff capped at ``retry_max``.

    kazoo's default cap is an hour, which would leave an agent deaf for a long
    time after an outage; the cap is the operator's setting. An operator
    command passes its whole time budget as the cap (a longer wait would end
    after the command) and its own ``logger``, so that kazoo's lines look
    like the command's (``logs.route_client_logs``). ``identity`` is sent
    at every connection, a new session's too; with ``tls`` every connection
    is TLS, verified, host names included: never plain text (``zkauth``).
    With ``root``, what the client creates carries the ACL of the policy
    stored there (``zkacl``).
    """
    retry = KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_jitter=0.4, max_delay=retry_max)
    return PolicyClient(
        root=root,
        who=who_is(identity, tls),
        identity_name=identity_name(identity, tls),
        hosts=hosts,
        timeout=session_timeout,
        connection_retry=retry,
        logger=logger or logging.getLogger("kazoo.client"),
        auth_data=identity.auth_data() if identity is not None else None,
        **(tls.client_args() if tls is not None else {}),
    )


def who_is(identity: Digest | None, tls: Tls | None) -> str:
    """This client's identity in words, for refusals."""
    parts = [f"digest user {identity.user!r}"] if identity is not None else []
    if tls is not None and tls.cert:
        parts.append(f"the certificate in {tls.cert}")
    return " with ".join(parts) or "a client with no identity"


def identity_name(identity: Digest | None, tls: Tls | None) -> str:
    """The identity as ACLs and the audit trail name it (``digest:bob``)."""
    names = [f"digest:{identity.user}"] if identity is not None else []
    if tls is not None and tls.cert:
        names.append(f"x509:{subject_of(tls.cert)}")
    return " ".join(names) or "anonymous"


def describe(exc: BaseException, hosts: str | None = None) -> str:
    """A connection error in words: kazoo's class names (``ConnectionLoss``)
    tell an operator reading a log or a status nothing."""
    where = f"ZooKeeper at {hosts}" if hosts else "ZooKeeper"
    if isinstance(exc, SessionExpiredError):
        return f"the session with {where} expired"
    if isinstance(exc, ConnectionClosedError):
        return f"the connection to {where} is closed"
    if isinstance(exc, OperationTimeoutError | KazooTimeoutError):
        return f"{where} did not answer in time"
    if isinstance(exc, ConnectionLoss):
        return f"{where} stopped answering (the connection was lost)"
    return f"{where}: {type(exc).__name__} {exc}".strip()
