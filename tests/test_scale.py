"""10,000 keys in one app layer, through a real daemon and a real ZooKeeper.

Correctness only (``bench/scale.py keys`` has the timings): at this size the
reader's pipelined full read, the per-key caches of the parser and the
renderer, and the one-znode re-read after a watch must still give exactly
ZooKeeper's data, every key, and a one-key change must move that key alone.
"""

from __future__ import annotations

from typing import Any

import pytest
from kazoo.client import KazooClient

from mozagent.desired.keys import encode_value
from tests.conftest import Sandbox, wait_for

pytestmark = pytest.mark.chaos

KEYS = 10_000


def value_of(i: int) -> Any:
    """Mixed types, as an app's data is: integers, strings, lists, mappings."""
    return (i, f"value {i}", [f"h{i}-a", f"h{i}-b"], {"port": i, "on": i % 2 == 0})[i % 4]


def create_keys(zk: KazooClient, layer: str) -> dict[str, Any]:
    zk.ensure_path(layer)
    expected = {f"k{i:05d}": value_of(i) for i in range(KEYS)}
    pending = [zk.create_async(f"{layer}/{k}", encode_value(v)) for k, v in expected.items()]
    for p in pending:
        p.get(timeout=60)
    return expected


def test_ten_thousand_keys_render_and_one_key_change(
    sandbox: Sandbox, zk: KazooClient, zk_root: str
) -> None:
    layer = f"{zk_root}/apps/shop/data"
    expected = create_keys(zk, layer)
    # No puppet: the rendered files are the subject, and a run per change would only slow it.
    sandbox.write_config(puppet=None)
    sandbox.start_daemon()

    def rendered() -> dict[str, Any] | None:
        try:
            doc = sandbox.layer_file("app")
        except (FileNotFoundError, ValueError):
            return None
        return doc if len(doc) == KEYS else None

    first = wait_for(rendered, timeout=120, what="all 10,000 keys rendered")
    assert first == expected

    changed = {"k04242": {"port": 1, "on": "yes"}}
    zk.set(f"{layer}/k04242", encode_value(changed["k04242"]))
    after = wait_for(
        lambda: (doc := rendered()) is not None and doc["k04242"] == changed["k04242"] and doc,
        timeout=30,
        what="the changed key rendered",
    )
    assert after == {**expected, **changed}  # that key, and no other, changed
    status = sandbox.status_doc() or {}
    assert status["layers"]["app"]["keys"] == KEYS
