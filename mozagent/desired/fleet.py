"""Where an app's fleet lives in ZooKeeper, beside its data.

The agents and the operator's CLI meet only here, so the layout is written
once. Under ``<root>/apps/<app>/``:

``release``                 the app's desired release (YAML: ref, source, install_script)
``canaries/<node>``         a per-node override of the release (a canary)
``hosts/<node>``            each live agent's presence (ephemeral, JSON)
``orders/order-<seq>``      a command pushed to the app's hosts (sequential, JSON)
``orders/order-<seq>/results/<node>``  what one host did with it (JSON)
``claims/<node>``           with per-host identities: what vouches for the two above

Pure: names and values only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mozagent.desired.presence import FollowedRelease
from mozagent.desired.release import Release, display_source


def app_base(root: str, app: str) -> str:
    return f"{root.rstrip('/')}/apps/{app}"


def release_path(root: str, app: str) -> str:
    return f"{app_base(root, app)}/release"


def node_release_path(root: str, app: str, node: str) -> str:
    """A canary has a parent of its own, apart from ``nodes/<node>`` (the
    operators' node layers): ZooKeeper's create is the parent's, and whoever
    creates a znode chooses its content and its ACL."""
    return f"{app_base(root, app)}/canaries/{node}"


def hosts_path(root: str, app: str) -> str:
    return f"{app_base(root, app)}/hosts"


def host_path(root: str, app: str, node: str) -> str:
    return f"{hosts_path(root, app)}/{node}"


def claim_path(root: str, app: str, node: str) -> str:
    """A host's claim on its name, with per-host identities (``desired/claims.py``)."""
    return f"{app_base(root, app)}/claims/{node}"


def orders_path(root: str, app: str) -> str:
    return f"{app_base(root, app)}/orders"


ORDER_PREFIX = "order-"


def order_path(root: str, app: str, name: str) -> str:
    return f"{orders_path(root, app)}/{name}"


def results_path(root: str, app: str, name: str) -> str:
    return f"{order_path(root, app, name)}/results"


def result_path(root: str, app: str, name: str, node: str) -> str:
    return f"{results_path(root, app, name)}/{node}"


def apps_path(root: str) -> str:
    return f"{root.rstrip('/')}/apps"


@dataclass(frozen=True)
class DesiredRelease:
    """What the release source hands the executor: the release this host must
    run, where it was read, and that znode's version (its mzxid), which the
    host reports back so that ``mozagent deploy --wait`` knows it acted on it.

    ``release`` None with no ``error``: no release is desired (no znode).
    ``error``: the znode cannot be used; the installed release stays."""

    path: str
    version: int
    release: Release | None
    error: str | None = None

    def followed(self) -> FollowedRelease:
        """What the host's presence and status say it follows (no credentials)."""
        rel = self.release
        return FollowedRelease(
            rel.ref if rel else None,
            self.path,
            self.version,
            display_source(rel.source) if rel else None,
            self.error,
        )

    def as_dict(self) -> dict[str, Any]:
        """For logs: everything the znode asked for, without credentials."""
        doc: dict[str, Any] = {"path": self.path, "version": self.version, "error": self.error}
        doc.update(self.release.to_doc() if self.release else {"ref": None, "source": None})
        if doc["source"]:
            # Status and presence are read by people and tools: no credentials.
            doc["source"] = display_source(doc["source"])
        return doc


@dataclass(frozen=True)
class PushedOrder:
    """An order znode as the orders source read it: judged by the executor
    (its age, its target, its command), not by the source."""

    name: str
    raw: bytes | None
    created: float  # the znode's ctime, by the server's clock
    where: str
    seen: float  # when the source read it, by this host's clock
