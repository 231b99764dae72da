"""From resolved data to file contents: Hiera 5 data files, hiera.yaml, facts.

Pure: returns bytes; writing is ``fileio``'s job. Output is deterministic
(sorted keys) so that identical data renders identical bytes, which is how the
agent knows a change needs no puppet run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from mozagent import __version__
from mozagent.desired.layers import LAYERS

try:  # libyaml's emitter is several times faster; PyYAML wheels ship it.
    _Dumper: type = yaml.CSafeDumper
except AttributeError:  # pragma: no cover - only without libyaml
    _Dumper = yaml.SafeDumper

HEADER = "# Managed by mozagent: {what}. Changes here are overwritten; edit ZooKeeper instead.\n"
# Hiera interpolates %{...} in data strings (keys included): `100%{}` would reach
# puppet as `100`, and `%{lookup('db::password')}` in one key would copy another
# key's value. ZooKeeper values are literal: each `%{` is written as Hiera's own
# escape, `%{literal('%')}{`, which Hiera turns back into `%{`.
_LITERAL_PERCENT = "%{literal('%')}{"


def literal(value: Any) -> Any:
    """The value with every Hiera interpolation escaped, so puppet sees it as stored."""
    if isinstance(value, str):
        return value.replace("%{", _LITERAL_PERCENT) if "%{" in value else value
    if isinstance(value, list):
        return [literal(v) for v in value]
    if isinstance(value, dict):
        return {literal(k): literal(v) for k, v in value.items()}
    return value


def _dump(doc: Any) -> str:
    return yaml.dump(
        doc, Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True
    )


class LayerRenderer:
    """Renders a layer's YAML file from per-key fragments cached by value identity.

    Dumping a 1,000-key mapping takes ~25 ms even with libyaml; a single key
    takes microseconds. A one-key mapping dumped per key and joined in key order
    is byte-for-byte a valid YAML mapping of all keys, so only changed keys cost.
    """

    def __init__(self) -> None:
        # (layer, key) -> (the value object, its JSON identity, its YAML text)
        self._fragments: dict[tuple[str, str], tuple[Any, str, str]] = {}

    def render(self, layer: str, values: dict[str, Any]) -> bytes:
        parts = [HEADER.format(what=f"Hiera data, {layer} layer")]
        if not values:
            parts.append("{}\n")
        for key in sorted(values):
            parts.append(self._fragment(layer, key, values[key]))
        for cache_key in [k for k in self._fragments if k[0] == layer and k[1] not in values]:
            del self._fragments[cache_key]
        return "".join(parts).encode("utf-8")

    def _fragment(self, layer: str, key: str, value: Any) -> str:
        cached = self._fragments.get((layer, key))
        # The same object: the reader parses each (key, mzxid) once, so an
        # unchanged key of a 1,000-key layer costs one comparison, not a dump.
        if cached is not None and cached[0] is value:
            return cached[2]
        # The JSON form is a cheap, exact identity for YAML-loaded values.
        ident = json.dumps(value, sort_keys=True, default=repr)
        if cached is not None and cached[1] == ident:
            self._fragments[(layer, key)] = (value, ident, cached[2])
            return cached[2]
        text = _dump({key: literal(value)})
        self._fragments[(layer, key)] = (value, ident, text)
        return text


def layer_filename(layer: str) -> str:
    return f"{layer}.yaml"


DEPLOYMENT_LAYER = "deployment"


def render_hiera_config(
    datadir: str, app: str | None, node: str, deployment: bool = False
) -> bytes:
    """Hiera 5: node beats secrets beats app beats global: lookup() finds the most specific.

    A run of a Heat deployment's puppet config has one more level on top: the
    deployment's own inputs, the most specific data of all for that config.
    """
    labels = {
        DEPLOYMENT_LAYER: "heat deployment inputs",
        "node": f"mozagent node layer ({node})",
        "secrets": f"mozagent app secrets ({app or 'no app'})",
        "app": f"mozagent app layer ({app or 'no app'})",
        "global": "mozagent global layer",
    }
    levels = ([DEPLOYMENT_LAYER] if deployment else []) + list(LAYERS)
    doc = {
        "version": 5,
        "defaults": {"datadir": datadir, "data_hash": "yaml_data"},
        "hierarchy": [{"name": labels[layer], "path": layer_filename(layer)} for layer in levels],
    }
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    header = "# Managed by mozagent from its config file; changes here are overwritten.\n"
    return (header + body).encode("utf-8")


@dataclass(frozen=True)
class FactsInput:
    app: str | None
    node: str
    data_version: int
    puppet_ref: str | None


def facts_doc(facts: FactsInput) -> dict[str, str]:
    """External facts: identity and versions only, never data values or credentials."""
    doc: dict[str, str] = {
        "mozagent_version": __version__,
        "mozagent_app": facts.app or "",
        "mozagent_node": facts.node,
        "mozagent_data_version": str(facts.data_version),
    }
    if facts.puppet_ref is not None:
        doc["mozagent_puppet_ref"] = facts.puppet_ref
    return doc


def render_facts(facts: FactsInput) -> bytes:
    return (json.dumps(facts_doc(facts), indent=2, sort_keys=True) + "\n").encode("utf-8")


def facts_env(facts: FactsInput) -> dict[str, str]:
    """The same facts as ``FACTER_*`` variables for one run.

    Facter ranks environment facts above external fact files, so a run sees the
    data version of the snapshot it applies even when the published facts file
    (often in /etc/facter/facts.d, which facter always reads) is newer.
    """
    return {f"FACTER_{name}": value for name, value in facts_doc(facts).items()}
