"""What one puppet run applies: the rendered data of one instant.

The sync worker re-renders on every ZooKeeper change, within milliseconds, so
the published Hiera files move while puppet compiles; a run that read them
could mix the node layer of one version with the app layer of the next, and
could not say which version it applied. Each render therefore ends by
publishing an immutable ``Snapshot``, and each run copies the snapshot it
starts with into a directory of its own (``run_files``) that nothing else
writes while it runs. The run records exactly ``snapshot.version``.

Pure: contents only; the agent writes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mozagent.desired.layers import LAYERS, SECRET_LAYERS
from mozagent.render.hiera import (
    DEPLOYMENT_LAYER,
    FactsInput,
    LayerRenderer,
    layer_filename,
    render_facts,
    render_hiera_config,
)


@dataclass(frozen=True)
class Snapshot:
    """Rendered layer files (in hierarchy order) and the data version they hold."""

    version: int
    layers: tuple[tuple[str, bytes], ...]
    # The app's data merged as Hiera's first-found lookup sees it (node > app >
    # global, key by key): what an app's install script reads (MOZAGENT_DATA).
    merged: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def same_data(self, other: Snapshot | None) -> bool:
        """Identical bytes mean puppet would see nothing new: no run is needed."""
        return other is not None and self.layers == other.layers

    def layer(self, name: str) -> bytes:
        return dict(self.layers)[name]


def make_snapshot(
    version: int, rendered: dict[str, bytes], values: Mapping[str, Mapping[str, Any]] | None = None
) -> Snapshot:
    return Snapshot(
        version, tuple((name, rendered[name]) for name in LAYERS), merge_layers(values or {})
    )


def merge_layers(values: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``LAYERS`` is in hierarchy order, most specific first: the first layer
    that has a key wins."""
    merged: dict[str, Any] = {}
    for name in reversed(LAYERS):
        if name not in SECRET_LAYERS:  # the app's code is not the agent: no secrets
            merged.update(values.get(name) or {})
    return merged


@dataclass(frozen=True)
class RunLayout:
    """Where one run's copy lives; what puppet is pointed at."""

    root: str

    @property
    def datadir(self) -> str:
        return os.path.join(self.root, "hieradata")

    @property
    def hiera_config(self) -> str:
        return os.path.join(self.root, "hiera.yaml")

    @property
    def facts_dir(self) -> str:
        return os.path.join(self.root, "facts.d")


def run_files(
    snapshot: Snapshot,
    layout: RunLayout,
    app: str | None,
    node: str,
    puppet_ref: str | None,
    deployment: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
) -> dict[str, bytes]:
    """Every file of a run's copy, by absolute path.

    ``deployment`` is a Heat config's (Hiera data, facts): its inputs, for
    this item of the run only. Without it the files say so (empty), so that
    nothing of the previous item's inputs is seen.
    """
    files = {
        os.path.join(layout.datadir, layer_filename(name)): content
        for name, content in snapshot.layers
    }
    files[layout.hiera_config] = render_hiera_config(
        os.path.abspath(layout.datadir), app, node, deployment=deployment is not None
    )
    facts = FactsInput(app, node, snapshot.version, puppet_ref)
    files[os.path.join(layout.facts_dir, "mozagent.json")] = render_facts(facts)
    hiera, inputs = deployment or ({}, {})
    files[os.path.join(layout.datadir, layer_filename(DEPLOYMENT_LAYER))] = LayerRenderer().render(
        DEPLOYMENT_LAYER, dict(hiera)
    )
    # Typed inputs as typed facts: facter keeps JSON types from a .json fact file.
    files[os.path.join(layout.facts_dir, "heat_inputs.json")] = (
        json.dumps(dict(inputs), sort_keys=True, indent=2) + "\n"
    ).encode("utf-8")
    return files
