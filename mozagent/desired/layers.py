"""The three Hiera layers and how raw ZooKeeper reads become the data we render.

Pure: no ZooKeeper, no files. The reader (``zkwatch``) fills a ``LayerView`` per
layer with what it saw; ``resolve_layer`` turns that, plus the last good data,
into the values to render and the problems to report. Keeping this free of I/O
is what lets the bad-input rules be tested exhaustively without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mozagent.desired.keys import Entry, InvalidValue, check_key, parse_value

# Most specific first: the order of Hiera's hierarchy. ``secrets`` is the
# app's keys only its agents and admins may read (desired/acl.py): rendered
# into the 0600 Hiera files for puppet, never into facts, the install
# script's data, status, presence or logs.
LAYERS: tuple[str, ...] = ("node", "secrets", "app", "global")
SECRET_LAYERS = frozenset({"secrets"})


def layer_paths(root: str, app: str, node: str) -> dict[str, str]:
    """The znode that holds each layer's keys, as documented in the README."""
    base = root.rstrip("/")
    return {
        "node": f"{base}/apps/{app}/nodes/{node}/data",
        "secrets": f"{base}/apps/{app}/secrets",
        "app": f"{base}/apps/{app}/data",
        "global": f"{base}/global/data",
    }


@dataclass(frozen=True)
class Problem:
    """Something wrong in the input that a person must fix; shown in status and logs."""

    where: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"where": self.where, "message": self.message}


@dataclass
class LayerView:
    """What the reader currently knows of one layer in ZooKeeper.

    ``version`` is the layer znode's pzxid (last change to its children), so a
    deleted key moves the version even though no remaining entry changed.
    """

    name: str
    path: str
    exists: bool = False
    version: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)
    bad_names: set[str] = field(default_factory=set)
    # Set when the layer exists but cannot be listed (e.g. no READ permission).
    error: str | None = None

    def data_version(self) -> int:
        newest = max((e.mzxid for e in self.entries.values()), default=0)
        return max(self.version, newest)


@dataclass(frozen=True)
class LastGood:
    """The data last rendered for a layer; survives restarts in the state dir."""

    path: str
    version: int
    values: dict[str, Any]


@dataclass
class ResolvedLayer:
    name: str
    path: str
    version: int
    values: dict[str, Any]
    problems: list[Problem]
    # True when the values are the last good copy because the layer cannot be read.
    stale: bool = False
    exists: bool = True


class ValueCache:
    """Parses each (key, zxid) once: a 1,000-key layer must not be re-parsed per change."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[int, Any, str | None]] = {}

    def parse(self, path: str, key: str, entry: Entry) -> tuple[Any, str | None]:
        cached = self._cache.get((path, key))
        if entry.error is not None:
            return None, entry.error
        if cached is not None and cached[0] == entry.mzxid:
            return cached[1], cached[2]
        try:
            value, error = parse_value(entry.raw), None
        except InvalidValue as exc:
            value, error = None, str(exc)
        self._cache[(path, key)] = (entry.mzxid, value, error)
        return value, error

    def forget_missing(self, path: str, keys: set[str]) -> None:
        for cache_key in [k for k in self._cache if k[0] == path and k[1] not in keys]:
            del self._cache[cache_key]


def resolve_layer(
    view: LayerView, last: LastGood | None, cache: ValueCache | None = None
) -> ResolvedLayer:
    """Decide what to render for a layer.

    Rules (the README's "Bad input"): ZooKeeper is the source of truth, so a
    layer that does not exist (never created, or deleted) renders empty, like
    any other change. What cannot be *read* keeps its last good data and is
    reported: a bad value keeps its key's last good value, and a layer that
    exists but cannot be listed (ACL) keeps the whole layer's.
    """
    cache = cache or ValueCache()
    if last is not None and last.path != view.path:
        last = None  # the config now points elsewhere: old data is not "last good" here
    if view.error is not None:
        if last is not None:
            problem = Problem(
                view.path, f"{view.error}; keeping its last good data (version {last.version})"
            )
            return ResolvedLayer(
                view.name, view.path, last.version, dict(last.values), [problem], True
            )
        return ResolvedLayer(view.name, view.path, 0, {}, [Problem(view.path, view.error)])
    if not view.exists:
        return ResolvedLayer(view.name, view.path, view.version, {}, [], exists=False)

    problems: list[Problem] = []
    for name in sorted(view.bad_names):
        try:
            check_key(name)
        except InvalidValue as exc:
            problems.append(Problem(f"{view.path}/{name}", f"znode ignored: {exc}"))

    values: dict[str, Any] = {}
    for key in sorted(view.entries):
        entry = view.entries[key]
        if entry.children:
            problems.append(
                Problem(
                    f"{view.path}/{key}",
                    f"has {entry.children} child znode(s), which are ignored: a key's value is "
                    "its own data (use a YAML mapping for structured values)",
                )
            )
        value, error = cache.parse(view.path, key, entry)
        if error is None:
            values[key] = value
            continue
        if view.name in SECRET_LAYERS and not entry.error:
            # A parser's words may quote the text (an alias, a tag): not a secret's.
            error = "the value is not valid YAML (not shown: it is a secret)"
        if last is not None and key in last.values:
            values[key] = last.values[key]
            error += "; keeping its last good value"
        else:
            error += "; key left out"
        problems.append(Problem(f"{view.path}/{key}", error))
    cache.forget_missing(view.path, set(view.entries))
    return ResolvedLayer(view.name, view.path, view.data_version(), values, problems)
