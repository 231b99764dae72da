"""Is the daemon making progress? The answer the watchdog and ``status`` share.

A live pid proves little: a worker can wedge on a lock or a read, and a
SIGSTOPped daemon is "running". So each worker *beats* every time it completes
a step (and while it waits on a child program), and the main loop pets
systemd's watchdog and touches the heartbeat file only while every worker has
beaten recently. ``mozagent status`` reads the heartbeat's age: a daemon whose
heartbeat is stale is reported unhealthy whatever its pid says.
"""

from __future__ import annotations

import contextlib
import os
import time

HEARTBEAT_FILE = "heartbeat"
HEARTBEAT_INTERVAL = 5.0
# Status calls a heartbeat older than this stale: several missed beats, so one
# slow disk write is not an alarm.
HEARTBEAT_STALE = 30.0


def touch_heartbeat(state_dir: str) -> None:
    """Refresh the heartbeat's mtime: a metadata update, no data written."""
    path = os.path.join(state_dir, HEARTBEAT_FILE)
    try:
        os.utime(path)
    except FileNotFoundError:
        # Creating it needs an inode: on a full disk the beat is skipped (status
        # then says the heartbeat is stale, and why the disk is the reason).
        with contextlib.suppress(OSError), open(path, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")
    except OSError:
        pass  # a read-only or failing disk: the main loop must not die of a beat


def heartbeat_age(state_dir: str, now: float | None = None) -> float | None:
    """Seconds since the daemon last proved progress; None when it never did."""
    try:
        mtime = os.stat(os.path.join(state_dir, HEARTBEAT_FILE)).st_mtime
    except OSError:
        return None
    return max((time.time() if now is None else now) - mtime, 0.0)


def remove_heartbeat(state_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(state_dir, HEARTBEAT_FILE))
