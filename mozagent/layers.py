"""The three Hiera layers and how raw ZooKeeper reads become the data we render.

Pure: no ZooKeeper, no files. The reader (``zkwatch``) fills a ``LayerView`` per
layer with what it saw; ``resolve_layer`` turns that, plus the last good data,
into the values to render and the problems to report. Keeping this free of I/O
is what lets the bad-input rules be tested exhaustively without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mozagent.keys import Entry, InvalidValue, check_key, parse_value

# Most specific first: the order of Hiera's hierarchy.
LAYERS: tuple[str, ...] = ("node", "app", "global")


def layer_paths(root: str, app: str, node: str) -> dict[str, str]:
    """The znode that holds each layer's keys, as documented in the README."""
    base = root.rstrip("/")
    return {
        "node": f"{base}/apps/{app}/nodes/{node}/data",
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
    # True when the values are the last good copy because the layer vanished.
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

    Rules (the README's "Bad input"): a bad znode keeps its last good value if it
    had one, and is reported; a layer that existed and disappeared keeps its
    whole last good data, and is reported; a layer that never existed is empty.
    """
    cache = cache or ValueCache()
    if last is not None and last.path != view.path:
        last = None  # the config now points elsewhere: old data is not "last good" here
    if view.error is not None or not view.exists:
        if view.error is not None:
            why = f"{view.error}; keeping its last good data"
        else:
            why = (
                f"{view.name} layer disappeared from ZooKeeper; keeping its last good data "
                "until the znode is created again"
            )
        if last is not None:
            problem = Problem(view.path, f"{why} (version {last.version})")
            return ResolvedLayer(
                view.name, view.path, last.version, dict(last.values), [problem], True
            )
        problems = [] if view.error is None else [Problem(view.path, view.error)]
        return ResolvedLayer(view.name, view.path, 0, {}, problems, exists=False)

    problems: list[Problem] = []
    for name in sorted(view.bad_names):
        try:
            check_key(name)
        except InvalidValue as exc:
            problems.append(Problem(f"{view.path}/{name}", f"znode ignored: {exc}"))

    values: dict[str, Any] = {}
    for key in sorted(view.entries):
        value, error = cache.parse(view.path, key, view.entries[key])
        if error is None:
            values[key] = value
            continue
        if last is not None and key in last.values:
            values[key] = last.values[key]
            error += "; keeping its last good value"
        else:
            error += "; key left out"
        problems.append(Problem(f"{view.path}/{key}", error))
    cache.forget_missing(view.path, set(view.entries))
    return ResolvedLayer(view.name, view.path, view.data_version(), values, problems)
