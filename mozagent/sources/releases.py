"""The releases source: which release of the app's code this host must run.

The app's ``release`` znode names it for every host; a node's own
``canaries/<node>`` overrides it, so a deployer can canary one host.
Deleting the override puts the host back on the app's release. The source
hands the executor a ``DesiredRelease`` each time what it reads changes; the
executor installs it (after puppet) and reports back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from mozagent.desired.fleet import DesiredRelease, node_release_path, release_path
from mozagent.desired.release import InvalidRelease, parse_release
from mozagent.runtime import Worker
from mozagent.sources.znodes import ZnodeSource

log = structlog.get_logger("mozagent")


def desired_of(path: str, raw: bytes | None, version: int) -> DesiredRelease:
    """Pure: a znode's bytes as the executor's work item, bad input included."""
    try:
        return DesiredRelease(path, version, parse_release(raw, path))
    except InvalidRelease as exc:
        return DesiredRelease(path, version, None, str(exc))


class ReleaseSource(ZnodeSource):
    worker = "releases"

    def __init__(
        self,
        client: KazooClient,
        root: str,
        app: str,
        node: str,
        offer: Callable[[DesiredRelease], None],
        health: Worker,
        stopping: threading.Event,
        op_timeout: float,
        resync: float,
    ) -> None:
        super().__init__(client, health, stopping, op_timeout, resync)
        # Most specific first: the first that exists is the one followed.
        self.paths = (node_release_path(root, app, node), release_path(root, app))
        self._offer = offer
        self._last: DesiredRelease | None = None

    def read(self) -> None:
        desired = None
        for path in self.paths:
            # Both are watched, so creating or deleting the override wakes us.
            if self.exists(path) is not None and desired is None:
                try:
                    raw, stat = self.get(path)
                except NoNodeError:  # deleted between the two reads: read again
                    self._wake.set()
                    return
                desired = desired_of(path, raw, stat.mzxid)
        if desired is None:
            desired = DesiredRelease(self.paths[-1], 0, None)
        if desired != self._last:
            if desired.error:
                log.error("bad_release", where=desired.path, error=desired.error)
            elif desired.release is None:
                log.info("no_release_desired", path=desired.path)
            else:
                log.info("release_desired", **desired.as_dict())
            self._last = desired
            self._offer(desired)
