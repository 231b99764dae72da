"""How raw layer reads become rendered data, including every bad-input rule."""

from __future__ import annotations

from mozagent.desired.keys import Entry
from mozagent.desired.layers import LastGood, LayerView, ValueCache, layer_paths, resolve_layer

PATH = "/mozagent/apps/shop/data"


def view(
    entries: dict[str, bytes], exists: bool = True, bad: set[str] | None = None, version: int = 5
) -> LayerView:
    return LayerView(
        "app",
        PATH,
        exists,
        version,
        {k: Entry(v, i + 10) for i, (k, v) in enumerate(entries.items())},
        bad or set(),
    )


def test_layer_paths() -> None:
    assert layer_paths("/mozagent", "shop", "web1") == {
        "node": "/mozagent/apps/shop/nodes/web1/data",
        "secrets": "/mozagent/apps/shop/secrets",
        "app": "/mozagent/apps/shop/data",
        "global": "/mozagent/global/data",
    }


def test_good_layer() -> None:
    res = resolve_layer(view({"a": b"1", "b": b"x: [1, 2]"}), None)
    assert res.values == {"a": 1, "b": {"x": [1, 2]}}
    assert res.problems == []
    assert res.version == 11  # newest entry mzxid beats the layer's pzxid of 5


def test_deleted_key_moves_version_through_pzxid() -> None:
    res = resolve_layer(view({"a": b"1"}, version=99), None)
    assert res.version == 99


def test_bad_value_keeps_last_good_value() -> None:
    last = LastGood(PATH, 3, {"a": 1, "b": "old"})
    res = resolve_layer(view({"a": b"2", "b": b"[unclosed"}), last)
    assert res.values == {"a": 2, "b": "old"}
    assert len(res.problems) == 1
    assert res.problems[0].where == f"{PATH}/b"
    assert "not valid YAML" in res.problems[0].message
    assert "keeping its last good value" in res.problems[0].message


def test_bad_value_without_history_is_left_out() -> None:
    res = resolve_layer(view({"a": b"\xff"}), None)
    assert res.values == {}
    assert "not UTF-8" in res.problems[0].message
    assert "key left out" in res.problems[0].message


def test_bad_names_are_reported_not_rendered() -> None:
    res = resolve_layer(view({"a": b"1"}, bad={"Bad", ".."}), None)
    assert res.values == {"a": 1}
    assert sorted(p.where for p in res.problems) == [f"{PATH}/..", f"{PATH}/Bad"]


def test_deleted_layer_renders_empty_whatever_its_last_good() -> None:
    """ZooKeeper is the source of truth: a deleted layer is a change like any other."""
    last = LastGood(PATH, 7, {"a": 1})
    res = resolve_layer(view({}, exists=False), last)
    assert res.values == {} and res.problems == []
    assert not res.stale and not res.exists


def test_key_with_children_is_reported_and_still_used() -> None:
    v = view({"a": b"1"})
    v.entries["a"] = Entry(b"1", 10, children=2)
    res = resolve_layer(v, None)
    assert res.values == {"a": 1}
    assert res.problems[0].where == f"{PATH}/a"
    assert "2 child znode(s), which are ignored" in res.problems[0].message


def test_never_existing_layer_is_empty_and_fine() -> None:
    res = resolve_layer(view({}, exists=False), None)
    assert res.values == {} and res.problems == [] and not res.exists


def test_last_good_of_another_path_is_not_used() -> None:
    last = LastGood("/mozagent/apps/other/data", 7, {"a": 1})
    res = resolve_layer(view({}, exists=False), last)
    assert res.values == {} and res.problems == []


def test_value_cache_reparses_only_on_new_zxid() -> None:
    cache = ValueCache()
    first = resolve_layer(view({"a": b"1"}), None, cache)
    v = view({"a": b"1"})
    v.entries["a"] = Entry(b"2", 10)  # same zxid: served from the cache
    assert resolve_layer(v, None, cache).values == first.values
    v.entries["a"] = Entry(b"2", 11)
    assert resolve_layer(v, None, cache).values == {"a": 2}


def test_unreadable_layer_keeps_last_good() -> None:
    v = view({})
    v.error = "cannot read the layer: NoAuthError"
    res = resolve_layer(v, LastGood(PATH, 7, {"a": 1}))
    assert res.values == {"a": 1} and res.stale
    assert "NoAuthError" in res.problems[0].message


def test_unreadable_key_keeps_last_good_value() -> None:
    v = view({"a": b"1"})
    v.entries["a"] = Entry(b"", 10, "cannot read the znode: NoAuthError")
    res = resolve_layer(v, LastGood(PATH, 7, {"a": 5}))
    assert res.values == {"a": 5}
    assert "NoAuthError" in res.problems[0].message
