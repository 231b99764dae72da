"""``group: zookeeper`` deployments: Heat hands an app's data to ZooKeeper.

The blueprint's plan: "heat passing data to zookeeper and then configuration
actions consuming configuration data from zookeeper". A SoftwareConfig of
group ``zookeeper`` names a layer in its ``config``::

    config: {app: shop, layer: app}          # or layer: global; or node + layer: node

and its deployment's inputs are the keys to write there. The agent that gets
the deployment writes them as the operator CLI would (the same key and value
rules, the same bounds, the policy's ACLs, an audit entry in the same
transaction); every host of the app then applies them through its usual path.

Pure: what the config means, which inputs are data, and the operations that
take a layer from what it holds to what the deployment wants. The deployment
*owns* the keys it wrote: an UPDATE that drops one removes it, DELETE removes
them all, but a key someone changed since is left alone and named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mozagent.desired.keys import (
    MAX_TRANSACTION_BYTES,
    MAX_VALUE_BYTES,
    InvalidValue,
    check_key,
    check_name,
    encode_value,
    parse_value,
    parse_yaml_text,
    same_value,
)
from mozagent.desired.layers import layer_paths

GROUP = "zookeeper"
LAYERS = ("global", "app", "node")  # secrets are the CLI's: their writer must not read them back
MAX_KEYS = 1000  # per deployment: one transaction, one audit entry
CONFIG_FIELDS = ("app", "layer", "node")


class HeatDataError(ValueError):
    """The deployment cannot be written: the words go to ``deploy_stderr``."""


@dataclass(frozen=True)
class Target:
    """The layer a deployment writes: its znode, and how people name it."""

    layer: str
    path: str
    app: str | None
    node: str | None

    @property
    def label(self) -> str:
        if self.layer == "global":
            return "global layer"
        if self.layer == "node":
            return f"node {self.node} of app {self.app}"
        return f"app {self.app}"


def parse_target(config: Any, root: str) -> Target:
    """The layer named by a config: a mapping, or YAML/JSON text of one."""
    if isinstance(config, str):
        try:
            config = parse_yaml_text(config, "config") if config.strip() else None
        except InvalidValue as exc:
            raise HeatDataError(f"the config is not YAML: {exc}") from None
    if not isinstance(config, dict):
        raise HeatDataError(
            "the config must name a layer, e.g. `{app: shop, layer: app}` "
            f"(got {type(config).__name__})"
        )
    unknown = sorted(str(k)[:60] for k in config if k not in CONFIG_FIELDS)
    if unknown:
        raise HeatDataError(
            f"unknown config field {', '.join(unknown)} (known: {', '.join(CONFIG_FIELDS)})"
        )
    app, node = config.get("app"), config.get("node")
    layer = config.get("layer", "node" if node else "app")
    if layer not in LAYERS:
        raise HeatDataError(f"config layer must be one of {', '.join(LAYERS)} (got {layer!r:.60})")
    try:
        if layer == "global":
            if app is not None or node is not None:
                raise HeatDataError("the global layer takes no app or node")
            return Target(layer, layer_paths(root, "_", "_")["global"], None, None)
        if not isinstance(app, str):
            raise HeatDataError(f"the {layer} layer needs the config's app")
        check_name("app", app)
        if layer == "node":
            if not isinstance(node, str):
                raise HeatDataError("the node layer needs the config's node")
            check_name("node", node)
            return Target(layer, layer_paths(root, app, node)["node"], app, node)
        if node is not None:
            raise HeatDataError("a node goes with layer: node")
        return Target(layer, layer_paths(root, app, "_")["app"], app, None)
    except InvalidValue as exc:
        raise HeatDataError(f"config: {exc}") from None


def data_of(inputs: Mapping[str, Any]) -> dict[str, bytes]:
    """The deployment's inputs as the bytes each key's znode will hold. Heat's
    own inputs (``deploy_*``: server, action, stack) are not data."""
    wanted = {name: value for name, value in inputs.items() if not name.startswith("deploy_")}
    if len(wanted) > MAX_KEYS:
        raise HeatDataError(f"{len(wanted)} inputs, over the {MAX_KEYS} keys one deployment writes")
    encoded: dict[str, bytes] = {}
    wrong: list[str] = []
    for name, value in sorted(wanted.items()):
        try:
            check_key(name)
            data = encode_value(value)
        except (InvalidValue, RecursionError) as exc:
            wrong.append(f"input {name[:60]!r}: {exc}")
            continue
        if len(data) > MAX_VALUE_BYTES:
            wrong.append(f"input {name!r}: value is {len(data)} bytes, over the 1 MiB limit")
            continue
        encoded[name] = data
    if wrong:
        raise HeatDataError("; ".join(wrong[:10]) + (" …" if len(wrong) > 10 else ""))
    total = sum(len(k) + len(v) for k, v in encoded.items())
    if total > MAX_TRANSACTION_BYTES:
        raise HeatDataError(
            f"the inputs are {total} bytes: over the {MAX_TRANSACTION_BYTES} bytes "
            "ZooKeeper takes in one transaction"
        )
    return encoded


def same(current: bytes, wanted: bytes) -> bool:
    return current == wanted or same_value(current, parse_value(wanted))


def digest(data: bytes) -> str:
    """What the agent keeps of a value it wrote: enough to know the znode still
    holds it, never the value (inputs carry passwords)."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Plan:
    """What one write does to the layer: each op names the key's znode version
    it was planned from, so a concurrent change fails the transaction whole."""

    creates: dict[str, bytes] = field(default_factory=dict)
    sets: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # new bytes, version
    deletes: dict[str, int] = field(default_factory=dict)  # version
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # owned, but changed by someone since

    @property
    def empty(self) -> bool:
        return not (self.creates or self.sets or self.deletes)

    def summary(self, label: str) -> str:
        if self.empty:
            keys = ", ".join(sorted(self.unchanged))
            held = f": {keys} already hold it" if keys else ""
            return f"{label}: nothing to write{held}" + self._kept()
        parts = []
        for what, keys in (
            ("created", self.creates),
            ("changed", self.sets),
            ("removed", self.deletes),
            ("unchanged", self.unchanged),
        ):
            if keys:
                parts.append(f"{what} {', '.join(sorted(keys))}")
        return f"{label}: " + "; ".join(parts) + self._kept()

    def _kept(self) -> str:
        if not self.kept:
            return ""
        return (
            f"; left {', '.join(sorted(self.kept))}: changed in ZooKeeper since this "
            "deployment wrote it"
        )


def plan(
    current: Mapping[str, tuple[bytes, int]],
    wanted: Mapping[str, bytes],
    owned: Mapping[str, str],
) -> Plan:
    """From ``current`` (each key's bytes and znode version) to ``wanted``;
    ``owned`` is what this deployment wrote before (each key's ``digest``, for
    an UPDATE or DELETE): such a key no longer wanted is removed if it still
    holds exactly what was written."""
    out = Plan()
    for name, data in sorted(wanted.items()):
        if name not in current:
            out.creates[name] = data
        elif same(current[name][0], data):
            out.unchanged.append(name)
        else:
            out.sets[name] = (data, current[name][1])
    for name, written in sorted(owned.items()):
        if name in wanted or name not in current:
            continue
        if digest(current[name][0]) == written:
            out.deletes[name] = current[name][1]
        else:
            out.kept.append(name)
    return out
