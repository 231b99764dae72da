"""Rendering is deterministic and the per-key fragments equal a whole-mapping dump."""

from __future__ import annotations

import json

import yaml

from mozagent.render.hiera import FactsInput, LayerRenderer, render_facts, render_hiera_config

TRICKY = {
    "apache::vhost_name": "my.python.site.com",
    "port": 8080,
    "yes_string": "yes",
    "num_string": "0123",
    "nested": {"list": [1, {"a": None}], "multi": "line1\nline2\n"},
    "empty": {},
    "unicode": "ünïcødé ☃",
    "colon": "a: b",
    "nothing": None,
}


def test_layer_file_is_yaml_of_the_values() -> None:
    text = LayerRenderer().render("app", TRICKY).decode()
    assert text.startswith("# Managed by mozagent")
    assert yaml.safe_load(text) == TRICKY


def test_identical_values_render_identical_bytes_and_changes_show() -> None:
    r = LayerRenderer()
    first = r.render("app", dict(TRICKY))
    assert r.render("app", dict(reversed(list(TRICKY.items())))) == first
    changed = dict(TRICKY, port=8081)
    assert r.render("app", changed) != first
    assert yaml.safe_load(r.render("app", changed))["port"] == 8081
    smaller = {k: v for k, v in TRICKY.items() if k != "port"}
    assert "port" not in yaml.safe_load(r.render("app", smaller))


def test_empty_layer_is_an_empty_mapping() -> None:
    assert yaml.safe_load(LayerRenderer().render("node", {})) == {}


def test_hiera_config_orders_node_secrets_app_global() -> None:
    doc = yaml.safe_load(render_hiera_config("/var/lib/mozagent/hieradata", "shop", "web1"))
    assert doc["version"] == 5
    assert doc["defaults"]["datadir"] == "/var/lib/mozagent/hieradata"
    paths = [h["path"] for h in doc["hierarchy"]]
    assert paths == ["node.yaml", "secrets.yaml", "app.yaml", "global.yaml"]


def test_facts_carry_identity_and_version_only() -> None:
    facts = json.loads(render_facts(FactsInput("shop", "web1", 42, "0.1.0")))
    assert facts["mozagent_app"] == "shop"
    assert facts["mozagent_node"] == "web1"
    assert facts["mozagent_data_version"] == "42"
    assert facts["mozagent_puppet_ref"] == "0.1.0"
    assert set(facts) == {
        "mozagent_app",
        "mozagent_node",
        "mozagent_data_version",
        "mozagent_puppet_ref",
        "mozagent_version",
    }
