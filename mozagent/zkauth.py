"""Who the agent or an operator is to ZooKeeper: digest credentials, read
from a file only its reader can read.

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
import stat
from dataclasses import dataclass, field

from mozagent.config import ConfigError

CREDENTIALS_ENV = "MOZAGENT_ZOOKEEPER_CREDENTIALS"
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


def read_credentials(path: str) -> Digest:
    """The digest identity in ``path``, after checking who else could read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CredentialsError(f"{path}: no such credentials file") from None
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
        data = fh.read(MAX_CREDENTIALS_BYTES + 1)
    if len(data) > MAX_CREDENTIALS_BYTES:
        raise CredentialsError(
            f"{path}: is over {MAX_CREDENTIALS_BYTES} bytes: not a credentials file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"{path}: is not UTF-8 text") from None
    return parse_credentials(text, path)
