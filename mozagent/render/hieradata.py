"""From what ZooKeeper holds to the files puppet and people read.

``HieraData`` owns the rendered state: the last good data of each layer
(``lastgood.json``), the published files (``hiera.datadir``, ``hiera.config``,
``facts.path``), and the snapshot each render produces for the executor. It is
driven by one thread, the ZooKeeper source's; the executor only ever sees the
immutable snapshots it hands over.
"""

from __future__ import annotations

import os

import structlog

from mozagent.config import Config
from mozagent.desired.layers import (
    LAYERS,
    LastGood,
    LayerView,
    ResolvedLayer,
    ValueCache,
    resolve_layer,
)
from mozagent.fileio import read_bytes, read_json, write_if_changed, write_json
from mozagent.render.hiera import (
    FactsInput,
    LayerRenderer,
    layer_filename,
    render_facts,
    render_hiera_config,
)
from mozagent.render.snapshot import Snapshot, make_snapshot

log = structlog.get_logger("mozagent")


class HieraData:
    def __init__(self, cfg: Config, puppet_ref: str | None) -> None:
        self.cfg = cfg
        self.puppet_ref = puppet_ref
        self._renderer = LayerRenderer()
        self._values = ValueCache()
        self.lastgood = self._load_lastgood()
        self._written: dict[str, bytes] = {}
        self._hiera_config = render_hiera_config(
            os.path.abspath(cfg.hieradata_dir), cfg.app, cfg.node
        )

    # --- last good data --------------------------------------------------------

    def _load_lastgood(self) -> dict[str, LastGood]:
        try:
            doc = read_json(self.cfg.lastgood_file) or {}
            if not isinstance(doc, dict):
                raise ValueError("not a mapping")
        except ValueError:
            log.warning("lastgood_unreadable", path=self.cfg.lastgood_file)
            return {}
        out = {}
        for layer, item in doc.items():
            try:
                out[layer] = LastGood(item["path"], int(item["version"]), dict(item["values"]))
            except (KeyError, TypeError, ValueError):
                log.warning("lastgood_entry_ignored", layer=layer, path=self.cfg.lastgood_file)
        return out

    def save_lastgood(self) -> None:
        """Durable: after a crash with ZooKeeper down, this is the data the host gets."""
        doc = {
            k: {"path": v.path, "version": v.version, "values": v.values}
            for k, v in self.lastgood.items()
        }
        write_json(self.cfg.lastgood_file, doc, 0o600, durable=True, compact=True)

    def _update_lastgood(self, resolved: list[ResolvedLayer]) -> None:
        changed = False
        for res in resolved:
            if res.stale:
                continue  # the layer could not be read: what we have is already last good
            if not res.exists:
                changed |= self.lastgood.pop(res.name, None) is not None
                continue
            prev = self.lastgood.get(res.name)
            if prev is None or prev.values != res.values or prev.path != res.path:
                self.lastgood[res.name] = LastGood(res.path, res.version, res.values)
                changed = True
        if changed:
            self.save_lastgood()

    # --- snapshots -------------------------------------------------------------

    def _layer_file(self, layer: str) -> str:
        return os.path.join(self.cfg.hieradata_dir, layer_filename(layer))

    def initial_snapshot(self) -> Snapshot:
        """Before the first read: the last good data; failing that, the files as
        rendered before (lastgood.json lost), failing that, empty layers."""
        rendered = {}
        for layer in LAYERS:
            lg = self.lastgood.get(layer)
            existing = None if lg else read_bytes(self._layer_file(layer))
            rendered[layer] = existing or self._renderer.render(layer, lg.values if lg else {})
        version = max((lg.version for lg in self.lastgood.values()), default=0)
        values = {layer: lg.values for layer, lg in self.lastgood.items()}
        return make_snapshot(version, rendered, values)

    def render(
        self, views: dict[str, LayerView], previous_version: int
    ) -> tuple[Snapshot, list[ResolvedLayer]]:
        """Resolve and render what the reader saw; save last good data; publish."""
        resolved = [
            resolve_layer(views[layer], self.lastgood.get(layer), self._values) for layer in LAYERS
        ]
        rendered = {r.name: self._renderer.render(r.name, r.values) for r in resolved}
        # Monotonic: a deleted layer has no version of its own to report.
        version = max([previous_version, *(r.version for r in resolved)])
        snapshot = make_snapshot(version, rendered, {r.name: r.values for r in resolved})
        # Published first, saved second: the files are what a change waits
        # for, and lastgood.json (durable) is what a restart renders them from.
        self.publish(snapshot)
        self._update_lastgood(resolved)
        return snapshot, resolved

    def publish(self, snapshot: Snapshot) -> None:
        """The published copy: what people and other puppet runs read. Each file
        is written only when its bytes change, without an fsync: at every start
        they are rendered again from the durable ``lastgood.json`` (or from
        ZooKeeper), so a power loss cannot leave a stale one behind."""
        facts = FactsInput(self.cfg.app, self.cfg.node, snapshot.version, self.puppet_ref)
        files: list[tuple[str, bytes, int, bool]] = [
            (self._layer_file(name), content, 0o600, False) for name, content in snapshot.layers
        ]
        files.append((self.cfg.hiera_config, self._hiera_config, 0o644, True))
        # Facts are re-rendered at every start: no fsync needed.
        files.append((self.cfg.facts_file, render_facts(facts), 0o644, False))
        for path, content, mode, durable in files:
            if self._written.get(path) == content and os.path.exists(path):
                continue
            write_if_changed(path, content, mode, durable)
            self._written[path] = content
