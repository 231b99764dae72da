"""Sources: where desired state comes from. Each one watches one place
(ZooKeeper, Heat metadata, later app releases) on a thread of its own and only
*hands work* to the executor (``apply.executor``): a new data snapshot, a job.
No source changes the host.

Every source has the same small shape, so the daemon wires them alike:
"""

from __future__ import annotations

from typing import Protocol


class Source(Protocol):
    """``worker`` names the thread and its health beats; ``run`` loops until the
    daemon's stop event is set; ``close`` releases connections after it."""

    worker: str

    def start(self) -> None: ...

    def run(self) -> None: ...

    def report(self) -> None:
        """Refresh what status shows of this source (called by the main loop)."""

    def close(self) -> None: ...
