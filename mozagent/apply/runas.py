"""Who an app's code runs as: its install script and its orders.

An app's code is the least trusted thing the agent runs (it comes from the
app's own repository, not the puppet tree), so it never runs as root: as the
configured user, else a user named like the app when one exists, else
``nobody``. An agent that is not root cannot switch users and runs it as
itself, which is what an unprivileged sandbox expects.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from typing import Any

FALLBACK_USER = "nobody"


class NoSuchUser(Exception):
    """The configured user does not exist on this host."""


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    home: str

    def popen_args(self) -> dict[str, Any]:
        """Only when switching is possible and needed: an unprivileged agent
        passing its own uid would still fail on ``setgroups``."""
        if os.geteuid() != 0 or self.uid == os.geteuid():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def group_owns(self, path: str) -> None:
        """``path`` (root's) readable by the app's group only, when running as root."""
        if os.geteuid() == 0 and self.uid != os.geteuid():
            os.chown(path, 0, self.gid, follow_symlinks=False)

    def owns(self, path: str) -> None:
        """Give a tree the app's code writes into (its release dir) to the user.

        The user may already own parts of it and swap a directory for a
        symlink while root walks it (to have ``/etc`` chowned): every change
        goes through directory fds opened without following links, and every
        name is chowned without following it."""
        if os.geteuid() != 0 or self.uid == os.geteuid():
            return
        for _, dirnames, filenames, dir_fd in os.fwalk(path, follow_symlinks=False):
            os.chown(dir_fd, self.uid, self.gid)
            for name in dirnames + filenames:
                os.chown(name, self.uid, self.gid, dir_fd=dir_fd, follow_symlinks=False)


def _entry(pw: pwd.struct_passwd) -> RunAs:
    if pw.pw_uid == 0 and os.geteuid() == 0:
        raise NoSuchUser(f"user {pw.pw_name!r} is root: an app's code never runs as root")
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def resolve_user(configured: str | None, app: str | None) -> RunAs:
    """The user for ``app``'s code; NoSuchUser when a configured one is missing
    (a typo must not silently fall back to another account)."""
    if os.geteuid() != 0:
        return _entry(pwd.getpwuid(os.geteuid()))
    if configured:
        try:
            return _entry(pwd.getpwnam(configured))
        except KeyError:
            raise NoSuchUser(f"user {configured!r} does not exist on this host") from None
    for name in (app, FALLBACK_USER):
        if name:
            try:
                return _entry(pwd.getpwnam(name))
            except KeyError:
                continue
    raise NoSuchUser(f"neither a user named {app!r} nor {FALLBACK_USER!r} exists")
