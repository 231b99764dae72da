"""A lint of the reference tree's front ends (examples/mozpuppet): puppet parses
every manifest, and the front ends declare no built-in type, as the blueprint
asks ("front end definitions should only use user defined resource
definitions"; files, packages and services belong in the backend modules).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mozagent_dev.webservice import TREE

FRONT_ENDS = TREE / "site" / "mozpuppet" / "manifests"
MANIFESTS = sorted(TREE.rglob("*.pp"))


@pytest.fixture(scope="module")
def builtin_types(puppet_bin: str) -> set[str]:
    """The resource types puppet itself ships (its lib's puppet/type/*.rb)."""
    found = subprocess.run(
        ["ruby", "-e", "require 'puppet'; print $LOADED_FEATURES.grep(%r{/puppet/type\\.rb$})[0]"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    types = {p.stem for p in (Path(found).parent / "type").glob("*.rb")}
    assert {"file", "exec", "package", "service", "user"} <= types, types
    return types


def declared_types(node: Any) -> Iterator[str]:
    """Every resource type a manifest's AST (puppet parser dump) declares.
    A collector (``Service <| |> { ... }``) overrides what a backend module
    declared and is not a declaration."""
    if isinstance(node, dict):
        if node.get("^", [None])[0] == "resource":
            kind = node["^"][1]["#"]
            yield str(kind[kind.index("type") + 1]["^"][1]).lower()
        for value in node.values():
            yield from declared_types(value)
    elif isinstance(node, list):
        for value in node:
            yield from declared_types(value)


def dump(path: Path) -> Any:
    out = subprocess.run(
        ["puppet", "parser", "dump", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_every_manifest_of_the_tree_parses(puppet_bin: str) -> None:
    assert MANIFESTS, TREE
    res = subprocess.run(
        ["puppet", "parser", "validate", *map(str, MANIFESTS)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_front_ends_declare_no_builtin_type(builtin_types: set[str]) -> None:
    front_ends = sorted(FRONT_ENDS.rglob("*.pp"))
    assert len(front_ends) >= 4, front_ends
    for path in front_ends:
        used = set(declared_types(dump(path)))
        assert used, f"{path} declares nothing"
        builtin = (used - {"class"}) & builtin_types  # a class is a backend's front door
        assert not builtin, f"{path} declares built-in {builtin}"


def test_the_lint_sees_a_builtin_type(tmp_path: Path, builtin_types: set[str]) -> None:
    """The check above can fail: a front end that writes a file is caught."""
    bad = tmp_path / "bad.pp"
    bad.write_text("define mozpuppet::bad() { file { '/tmp/x': content => 'x' } }\n")
    assert set(declared_types(dump(bad))) & builtin_types == {"file"}
