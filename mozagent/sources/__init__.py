"""Sources: where desired state comes from. Each one watches one place
(ZooKeeper, Heat metadata, later app releases) on a thread of its own and only
*hands work* to the executor (``apply.executor``): a new data snapshot, a job.
No source changes the host.

Every source has the same small shape, so the daemon wires them alike:
"""

from __future__ import annotations

from typing import Protocol


class Source(Protocol):
    """``worker`` names the thread and its health beats; ``start`` connects
    (without waiting); ``run`` loops until the daemon's stop event is set;
    ``once`` reads once, bounded, for ``daemon --once``; ``wake`` cuts a wait
    short; ``close`` releases what ``start`` opened and says so in status."""

    worker: str

    def start(self) -> None: ...

    def run(self) -> None: ...

    def once(self) -> None: ...

    def report(self) -> None:
        """Refresh what status shows of this source (the main loop calls it)."""

    def wake(self) -> None: ...

    def close(self) -> None: ...
