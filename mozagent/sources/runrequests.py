"""``mozagent apply``: ask the running daemon for a run and wait for its result.

SIGHUP alone carries no identity, so a caller could not tell its run from one
already under way. The caller drops a request file named by a fresh id into
``<state_dir>/requests/`` and sends SIGHUP; the daemon takes every waiting id
into the next run it *starts*, and that run's record in ``status.json`` lists
them (``last_apply.requests``). The caller waits for its id to appear there.
A request made while the daemon is down is taken by the daemon's first run.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid

REQUESTS_DIR = "requests"
_ID = re.compile(r"[0-9a-f]{32}")
# A flood of request files must not make one status record huge.
MAX_TAKEN = 100


class RunRequests:
    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, REQUESTS_DIR)

    def make(self) -> str:
        """Create a request (caller side); returns its id."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        request_id = uuid.uuid4().hex
        with open(os.path.join(self.dir, request_id), "x", encoding="ascii"):
            pass
        return request_id

    def take(self) -> list[str]:
        """Remove and return the waiting ids (daemon side); other files are ignored."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        taken = []
        for name in names:
            if not _ID.fullmatch(name):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, name))
                if len(taken) < MAX_TAKEN:
                    taken.append(name)
        return taken
