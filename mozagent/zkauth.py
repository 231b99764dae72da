"""Who the agent or an operator is to ZooKeeper, and how it talks to it:
digest credentials read from a file only its reader can read, and TLS (the
servers' CA, a client certificate whose subject is its x509 identity).

The password never passes through the config (which is world-readable and
shown in status), a command line (``ps`` shows it to every user) or an
environment variable (every child of the process would inherit it): only the
file's path does. The file is checked before it is read: a regular file, not
a symbolic link, owned by the user reading it, readable by nobody else (mode
0600 or stricter), one ``user:password`` line. A file that fails a check is
an error that says how to fix it, never a connection without an identity.

Digest credentials travel in clear text unless the connection is TLS
(``reference/zookeeper.md``): on a network, use them over TLS only.
"""

from __future__ import annotations

import os
import ssl
import stat
from dataclasses import dataclass, field

from mozagent.config import ConfigError

CREDENTIALS_ENV = "MOZAGENT_ZOOKEEPER_CREDENTIALS"
# The CLI's TLS files, as zookeeper.tls_ca/tls_cert/tls_key are the agent's.
TLS_ENV = {
    "ca": "MOZAGENT_ZOOKEEPER_TLS_CA",
    "cert": "MOZAGENT_ZOOKEEPER_TLS_CERT",
    "key": "MOZAGENT_ZOOKEEPER_TLS_KEY",
}
MAX_CREDENTIALS_BYTES = 4096


class CredentialsError(ConfigError):
    """The credentials file cannot be used; str() says which file and why. A
    config error: the agent does not start, the command exits 2."""


@dataclass(frozen=True)
class Digest:
    """A ZooKeeper digest identity. The password is left out of repr(): a
    traceback or a debug log of this object must not show it."""

    user: str
    password: str = field(repr=False)

    def auth_data(self) -> list[tuple[str, str]]:
        """What kazoo sends at every (re)connection."""
        return [("digest", f"{self.user}:{self.password}")]


def parse_credentials(text: str, path: str) -> Digest:
    """One ``user:password`` line (a final newline allowed). Pure."""
    body = text[:-1] if text.endswith("\n") else text
    if "\n" in body or "\r" in body:
        raise CredentialsError(f"{path}: must be one line, user:password")
    user, colon, password = body.partition(":")
    if not colon or not user or not password:
        raise CredentialsError(f"{path}: must be user:password (both non-empty)")
    if any(ch.isspace() for ch in user) or "\x00" in body:
        raise CredentialsError(f"{path}: the user name has white space or a NUL byte in it")
    return Digest(user, password)


def read_private(path: str, what: str, limit: int) -> bytes:
    """The bytes of a secret file, after checking that nobody but its reader
    can read or change it (a credentials file, a TLS key)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CredentialsError(f"{path}: no such {what}") from None
    except OSError as exc:
        if os.path.islink(path):
            raise CredentialsError(
                f"{path}: is a symbolic link; name the file itself (a link can be "
                "pointed elsewhere by whoever owns its directory)"
            ) from None
        raise CredentialsError(f"{path}: cannot open it: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CredentialsError(f"{path}: is not a regular file")
        if st.st_uid != os.geteuid():
            raise CredentialsError(
                f"{path}: is owned by uid {st.st_uid}, not by the user reading it "
                f"(uid {os.geteuid()}): chown it to that user"
            )
        if st.st_mode & 0o077:
            raise CredentialsError(
                f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read or "
                f"change it: chmod 600 {path}"
            )
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise CredentialsError(f"{path}: is over {limit} bytes: not a {what}")
    return data


def read_credentials(path: str) -> Digest:
    """The digest identity in ``path``, after checking who else could read it."""
    data = read_private(path, "credentials file", MAX_CREDENTIALS_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"{path}: is not UTF-8 text") from None
    return parse_credentials(text, path)


@dataclass(frozen=True)
class Tls:
    """TLS to ZooKeeper: always verified, host names included."""

    ca: str
    cert: str | None = None
    key: str | None = None

    def check(self) -> Tls:
        """Refuse a key others can read, and files that are not there, before
        connecting: kazoo would only retry for ever."""
        for path, what in ((self.ca, "CA file"), (self.cert, "certificate file")):
            if path is not None and not os.path.isfile(path):
                raise CredentialsError(f"{path}: no such {what}")
        if self.key is not None:
            read_private(self.key, "TLS key file", 1 << 20)
        return self

    def client_args(self) -> dict[str, object]:
        """kazoo's: ``check_hostname`` is off by default there; here it is on."""
        return {
            "use_ssl": True,
            "ca": self.ca,
            "certfile": self.cert,
            "keyfile": self.key,
            "verify_certs": True,
            "check_hostname": True,
        }


# What OpenSSL says when the other end does not speak TLS at all.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNEXPECTED_EOF_WHILE_READING")


_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}


def subject_of(cert: str) -> str:
    """A certificate's subject as ZooKeeper's X509 provider names it
    (``CN=web1,O=…``, most specific first), or the file's name if unreadable."""
    try:
        decoded = ssl._ssl._test_decode_cert(cert)  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError, AttributeError, ValueError):
        return f"(the certificate {cert})"
    rdns = reversed(decoded.get("subject", ()))
    names = [f"{_SHORT.get(k, k)}={v}" for rdn in rdns for k, v in rdn]
    return ",".join(names) or f"(the certificate {cert})"


def own_certificate_problem(cert: str, now: float | None = None) -> str | None:
    """Why a certificate of ours cannot be valid now (expired, not yet valid)."""
    import time

    try:
        decoded = ssl._ssl._test_decode_cert(cert)  # type: ignore[attr-defined]
        not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
        not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    except (OSError, ssl.SSLError, AttributeError, KeyError, ValueError):
        return None
    now = time.time() if now is None else now
    if now > not_after:
        return f"{cert} expired on {decoded['notAfter']}"
    if now < not_before:
        return f"{cert} is not valid before {decoded['notBefore']}"
    return None


def tls_problem(hosts: str, tls: Tls, timeout: float = 5.0) -> str | None:
    """Why a TLS handshake with the first of ``hosts`` fails, in words, or None.

    kazoo retries a failed handshake for ever and says nothing to its caller;
    this one handshake, with the same CA, certificate and host name check, is
    how a person learns it is a wrong CA, a certificate for another name, an
    expired one, or a plain-text port.
    """
    import socket
    import ssl

    from kazoo.hosts import collect_hosts

    (host, port), *_ = collect_hosts(hosts)[0]
    context = ssl.create_default_context(cafile=tls.ca)
    if tls.cert and tls.key:
        context.load_cert_chain(tls.cert, tls.key)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            conn.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        return f"TLS to {host}:{port}: the server's certificate was refused: {exc.verify_message}"
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if reason in _NOT_TLS:
            return (
                f"TLS to {host}:{port}: no TLS there ({reason}): is it ZooKeeper's "
                "secureClientPort?"
            )
        if tls.cert and "ALERT" in reason and "CERTIFICATE" in reason:
            # The server says only that it refused us; our own file says why, often.
            why = own_certificate_problem(tls.cert) or "is it signed by a CA the server trusts?"
            return f"TLS to {host}:{port}: the server refused this client's certificate: {why}"
        return f"TLS to {host}:{port}: {reason}"
    except OSError as exc:
        return f"TLS to {host}:{port}: {exc.strerror or exc}"
    return None
