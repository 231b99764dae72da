"""Atomic, change-only file writes.

Puppet and people read the rendered files at any moment, so a reader must see
either the old or the new content, never half of one. Writing only when the
content differs keeps mtimes meaningful and avoids needless disk churn.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from typing import Any


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


# write_atomic's temp files: ".<name>.", mkstemp's 8 characters and a suffix
# of our own, so a user's dotfile (".env.template") is never taken for one.
TEMP_SUFFIX = ".mozagent-tmp"
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")


def remove_stale_temps(root: str, skip: frozenset[str] = frozenset({"vardir"})) -> list[str]:
    """Remove the temp files of writes cut short by a kill -9 (between
    write_atomic's mkstemp and its rename), under ``root``; returns them.
    Only for a dir this process holds the lock of: no write is under way
    there. Directories named in ``skip`` (puppet's vardir) are not ours."""
    removed: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        removed += _remove_temps(dirpath, filenames)
    return removed


def remove_temps_in(directory: str) -> list[str]:
    """The same for one directory, not below it: an app's ``releases/`` holds
    the agent's records next to the app's own trees, which are not walked.
    Only while no write of ours is under way there."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return _remove_temps(directory, names)


def _remove_temps(directory: str, names: list[str]) -> list[str]:
    removed = []
    for name in names:
        if TEMP_NAME.match(name):
            path = os.path.join(directory, name)
            # One file it may not remove must not keep the agent from starting.
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def write_atomic(path: str, content: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory.

    ``durable=False`` skips the fsyncs: the rename is still atomic for readers,
    but a power loss may lose the write. For files that are re-derived at start
    or are reports; an fsync costs milliseconds, more while puppet writes.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX, dir=directory
    )
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_if_changed(path: str, content: bytes, mode: int = 0o644, durable: bool = True) -> bool:
    """Write when the bytes or the mode differ; return True when the content changed."""
    current = read_bytes(path)
    if current == content:
        if os.stat(path).st_mode & 0o7777 != mode:
            os.chmod(path, mode)
        return False
    write_atomic(path, content, mode, durable)
    return True


# Less room than this left on a file system counts as full: the agent's own
# records (status, ledger, order records) need a few KiB each.
LOW_SPACE_BYTES = 1024 * 1024


def free_space(path: str) -> tuple[int, int | None] | None:
    """(bytes, inodes) an unprivileged writer may still use where ``path`` lives;
    inodes None where the file system has no inode count (btrfs, vfat report 0
    of 0: that is not "none left")."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, (st.f_favail if st.f_files > 0 else None)


def disk_full(path: str) -> bool:
    free = free_space(path)
    return free is not None and (free[0] < LOW_SPACE_BYTES or free[1] == 0)


def write_json(
    path: str, doc: Any, mode: int = 0o644, durable: bool = True, compact: bool = False
) -> None:
    """``compact``: one line, for files only the agent reads (json's C encoder
    does not indent: ten times faster on a 1,000-key document)."""
    if compact:
        data = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    else:
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    write_atomic(path, data, mode, durable)


def read_json(path: str) -> Any:
    """None when the file is absent; ValueError when it is not JSON."""
    data = read_bytes(path)
    if data is None:
        return None
    return json.loads(data)


def read_json_object(path: str) -> dict[str, Any] | None:
    """A JSON object from a state file; None when absent, unreadable or not an object."""
    try:
        doc = read_json(path)
    except (ValueError, OSError):
        return None
    return doc if isinstance(doc, dict) else None


def read_json_dir(directory: str, required: str = "id") -> list[dict[str, Any]]:
    """Every ``*.json`` object in a directory that has ``required``, by file name."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.endswith(".json"):
            doc = read_json_object(os.path.join(directory, name))
            if doc is not None and required in doc:
                out.append(doc)
    return out


def private_dir(path: str) -> None:
    """The agent's state dir is its own (0700): it holds the Heat metadata
    cache (credentials, signal URLs), the data with its secrets and the run
    records, and the app's code runs on this host as another user. systemd's
    StateDirectoryMode says the same; this holds without systemd too."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)


def try_lock(path: str) -> int | None:
    """Take an exclusive flock on ``path`` (created if missing) and write our pid in it.

    Returns the open fd (keep it open to hold the lock), or None when another
    process holds it. The kernel drops the lock when the holder dies, even by
    kill -9, so a stale lock file never blocks a restart.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_holder(path: str) -> str:
    data = read_bytes(path)
    return data.decode(errors="replace").strip() if data else "?"
