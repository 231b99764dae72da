"""A host's presence (``hosts/<node>``): the one definition its writer (the
agent's fleet report) and its readers (``fleet``, ``--wait``) share.

A report in the sense of ``schema``: readers take the fields they know and
ignore the rest, so a presence from a newer agent (schema 2, fields this
release has never heard of) is read as well as one from this release.
Everything read is untrusted (any ZooKeeper client can write a znode):
every field is type-checked, and what does not fit is ``Unreadable`` with
the field it is about, never an exception.

To add a field: add it to the dataclass it belongs to, with a default, in
``to_doc`` and ``parse``; the agent fills it in ``HostFacts`` (what the
executor and the release job know), the readers decide with it in
``convergence``. Adding fields needs no new schema number; changing what a
field means does (and a new name for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mozagent.desired.keys import InvalidValue, parse_value
from mozagent.desired.schema import SCHEMA_KEY, Fields, Unreadable, clean, schema_of

SCHEMA = 1


class _Flat:
    """A part of the presence whose document is its fields, by name."""

    def to_doc(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class LastApply(_Flat):
    """The last puppet run, as far as the fleet needs it."""

    ok: bool
    data_version: int | None
    ended: float | None
    message: str

    @classmethod
    def parse(cls, f: Fields) -> LastApply:
        return cls(
            bool(f.flag("ok", False)), f.integer("data_version"), f.number("ended"),
            f.text("message") or "",
        )  # fmt: skip


@dataclass(frozen=True)
class FollowedRelease(_Flat):
    """The release znode a host follows (its path tells app release from
    override), at the version it read; ``error`` when it could not use it."""

    ref: str | None
    path: str
    version: int
    source: str | None = None  # shown without credentials
    error: str | None = None

    @classmethod
    def parse(cls, f: Fields) -> FollowedRelease:
        return cls(
            f.text("ref"), str(f.text("path", False)), int(f.integer("version", False) or 0),
            f.text("source"), f.text("error"),
        )  # fmt: skip


@dataclass(frozen=True)
class Installed(_Flat):
    """What ``current`` points to on the host."""

    ref: str
    commit: str | None
    source: str | None
    installed: float | None = None  # when, epoch seconds
    dir: str | None = None

    @classmethod
    def parse(cls, f: Fields) -> Installed:
        return cls(
            str(f.text("ref", False)), f.text("commit"), f.text("source"), f.number("installed"),
            f.text("dir"),
        )  # fmt: skip


@dataclass(frozen=True)
class LastInstall(_Flat):
    """How the last install went; ``version`` is the release znode's version
    it acted on, which ``deploy --wait`` compares with the one it wrote."""

    ok: bool
    ref: str | None
    commit: str | None
    version: int | None
    ended: float | None
    message: str
    log: str | None
    source: str | None = None
    path: str | None = None
    started: float | None = None
    returncode: int | None = None

    @classmethod
    def parse(cls, f: Fields) -> LastInstall:
        return cls(
            bool(f.flag("ok", False)), f.text("ref"), f.text("commit"), f.integer("version"),
            f.number("ended"), f.text("message") or "", f.text("log"), f.text("source"),
            f.text("path"), f.number("started"), f.integer("returncode"),
        )  # fmt: skip


@dataclass(frozen=True)
class ReleaseStanding:
    """The app's code on a host: what it should run, runs, and how the last install went."""

    desired: FollowedRelease | None = None
    installed: Installed | None = None
    last_install: LastInstall | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "desired": _doc(self.desired),
            "installed": _doc(self.installed),
            "last_install": _doc(self.last_install),
        }

    @classmethod
    def parse(cls, f: Fields | None) -> ReleaseStanding:
        if f is None:
            return cls()
        d, i, li = f.sub("desired"), f.sub("installed"), f.sub("last_install")
        return cls(
            None if d is None else FollowedRelease.parse(d),
            None if i is None else Installed.parse(i),
            None if li is None else LastInstall.parse(li),
        )


@dataclass(frozen=True)
class HostFacts:
    """What the agent's jobs know that the fleet is told: the executor's
    applied data version and last run, the release job's standing."""

    data_version: int | None = None
    last_apply: LastApply | None = None
    release: ReleaseStanding = field(default_factory=ReleaseStanding)


@dataclass(frozen=True)
class Presence:
    """One host's presence document. ``node`` and ``app`` must be the
    znode's own (a body naming another host is foreign)."""

    node: str
    agent_version: str
    pid: int | None
    updated: float | None
    data_version: int | None
    last_apply: LastApply | None
    desired: FollowedRelease | None
    installed: Installed | None
    last_install: LastInstall | None
    app: str = ""
    host: str | None = None
    boot_id: str | None = None
    schema: int = SCHEMA

    @classmethod
    def of(
        cls,
        facts: HostFacts,
        app: str,
        node: str,
        agent_version: str,
        pid: int,
        host: str | None,
        boot_id: str | None,
    ) -> Presence:
        """This agent's presence, from what its jobs know (not from status.json)."""
        r = facts.release
        return cls(
            node, agent_version, pid, None, facts.data_version, facts.last_apply,
            r.desired, r.installed, r.last_install, app, host, boot_id,
        )  # fmt: skip

    @property
    def release(self) -> ReleaseStanding:
        return ReleaseStanding(self.desired, self.installed, self.last_install)

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            SCHEMA_KEY: self.schema,
            "node": self.node,
            "app": self.app,
            "agent_version": self.agent_version,
            "pid": self.pid,
            "host": self.host,
            "boot_id": self.boot_id,
            "data_version": self.data_version,
            "last_apply": _doc(self.last_apply),
            "release": self.release.to_doc(),
        }
        if self.updated is not None:
            doc["updated"] = self.updated
        return doc

    @classmethod
    def parse(cls, raw: bytes | None, node: str, app: str) -> Presence | Unreadable:
        """A host's presence, or why it cannot be used."""
        try:
            f = Fields(parse_value(raw, "presence"), "presence")
            if f.text("node", False) != node:
                raise InvalidValue(f"presence names node {clean(f.doc.get('node'))!r}")
            if f.text("app", False) != app:
                raise InvalidValue(f"presence names app {clean(f.doc.get('app'))!r}")
            la = f.sub("last_apply")
            release = ReleaseStanding.parse(f.sub("release"))
            return cls(
                node, f.text("agent_version") or "?", f.integer("pid"), f.number("updated"),
                f.integer("data_version"), None if la is None else LastApply.parse(la),
                release.desired, release.installed, release.last_install, app,
                f.text("host"), f.text("boot_id"), schema_of(f.doc, "presence"),
            )  # fmt: skip
        except InvalidValue as exc:
            return Unreadable(str(exc))


def _doc(part: Any) -> dict[str, Any] | None:
    return None if part is None else part.to_doc()


def last_apply_of(record: Any) -> LastApply | None:
    """The fleet's view of a run record kept in status.json (which holds more:
    each config's result); None for no record or a damaged one."""
    if record is None:
        return None
    try:
        return LastApply.parse(Fields(record, "last_apply"))
    except InvalidValue:
        return None
