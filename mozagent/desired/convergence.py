"""Who in a fleet has converged, from what the agents publish in ZooKeeper.

Pure: bytes in, decisions out. The CLI does the reading (``cli.fleet``) and
the showing (``cli.fleetviews``); keeping the rules here lets every odd case
(a damaged presence, a canary, a host that vanished) be tested without a
server, and keeps ``fleet``, ``deploy --wait``, ``data --wait`` and ``order
status`` agreeing on what "done" means.

Everything read from ZooKeeper is untrusted: any znode may be damaged or
written by something that is not an agent, so parsing goes through the
documents' own definitions (``desired.presence``, ``desired.orders``:
bounded, every field type-checked); what does not fit becomes an
``Unreadable`` to show, never an exception to crash on. Only
an ephemeral znode is an agent's presence (it lives and dies with the agent's
session): a persistent one, which any client can leave behind with any
claims, is ``NotLive`` and never counts as a host that converged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mozagent.desired.fleet import ORDER_PREFIX, DesiredRelease
from mozagent.desired.keys import InvalidValue, parse_value
from mozagent.desired.orders import Order, OrderResult
from mozagent.desired.presence import Presence
from mozagent.desired.release import DEFAULT_INSTALL_SCRIPT, Release, display_source
from mozagent.desired.schema import Unreadable, clean

# --- checking what an operator writes -------------------------------------------------------


def check_release(ref: str, source: str | None, install_script: str | None) -> None:
    """Refuse a bad REF, --source or --install-script before connecting, with
    the agent's own rules (``release.Release``): what the CLI writes, hosts use.
    Raises InvalidRelease; a missing source or script is checked later, once
    the current release (which supplies them) has been read."""
    Release(ref, source or "placeholder", install_script or DEFAULT_INSTALL_SCRIPT)


def order_name(seq: str) -> str:
    """``7``, ``0000000007`` and ``order-0000000007`` all name the same order."""
    digits = seq.removeprefix(ORDER_PREFIX)
    if not digits.isdigit() or len(digits) > 10:
        raise InvalidValue(
            f"order {seq!r} is not an order number or name (like 7 or order-0000000007)"
        )
    return f"{ORDER_PREFIX}{int(digits):010d}"


# --- reading what agents and operators wrote ------------------------------------------------


@dataclass(frozen=True)
class NotLive:
    """A znode under ``hosts/`` that no session holds: not a live agent,
    whatever it claims. Shown, never waited for, never converged."""

    reason: str = "not a live agent (persistent znode)"
    mark: str = "NOT LIVE: persistent znode"


Seen = Presence | Unreadable | NotLive


def judge_presence(raw: bytes | None, ephemeral_owner: int, node: str, app: str) -> Seen:
    """A ``hosts/<node>`` znode as the fleet's tools take it: only an
    ephemeral one (``ephemeralOwner`` != 0) is a live agent's presence."""
    if not ephemeral_owner:
        return NotLive()
    return Presence.parse(raw, node, app)


def is_live(seen: Seen | None) -> bool:
    """Held by a live session, readable or not."""
    return isinstance(seen, Presence | Unreadable)


def parse_result(raw: bytes | None, node: str, order: str) -> OrderResult | Unreadable:
    """A host's result for ``order``: ``OrderResult.parse`` decides what a
    whole result is; a body naming another host or order is foreign."""
    try:
        result = OrderResult.parse(parse_value(raw, "result"))
    except InvalidValue as exc:
        return Unreadable(str(exc))
    if result is None:
        return Unreadable("not a result document")
    if (result.node, result.order) != (node, order):
        return Unreadable(f"result names {clean(result.node)}/{clean(result.order)}")
    return result


# --- decisions ------------------------------------------------------------------------------

DONE, FAILED, PENDING, GONE, SKIPPED = "done", "failed", "pending", "gone", "skipped"
ABSENT = "absent"  # targeted, but not live at any point we looked: no such host now
FINAL = (DONE, FAILED, GONE, ABSENT, SKIPPED)


@dataclass(frozen=True)
class Standing:
    """Where one host stands in a wait. ``state`` decides, ``text`` is what
    the operator reads ("done (data version 5)", "refused (unknown command)")."""

    state: str
    text: str
    mark: str = ""  # the fleet table's mark for a host not done ("LAGGING: data", ...)


GONE_PRESENCE = Standing(GONE, "went away (its presence vanished)")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _not_decidable(presence: Seen | None) -> Standing | None:
    """The outcome of a host whose presence says nothing usable, else None."""
    if presence is None:
        return GONE_PRESENCE
    if isinstance(presence, NotLive):
        return Standing(GONE, presence.reason, presence.mark)
    if isinstance(presence, Unreadable):
        return Standing(
            PENDING,
            f"pending (unreadable presence: {presence.reason})",
            f"UNREADABLE: presence: {presence.reason}",
        )
    return None


def data_outcome(presence: Seen | None, version: int) -> Standing:
    """Done once the host has applied ``version`` (or newer) and its last
    apply did not fail since; failed once its apply of that version (or a
    newer one) failed. ``fleet`` (with the current version) and ``--wait``
    (with the version written) both judge by this."""
    if (undecided := _not_decidable(presence)) is not None:
        return undecided
    assert isinstance(presence, Presence)
    applied = presence.data_version or 0
    last = presence.last_apply
    failing = last is not None and not last.ok and (last.data_version or 0) >= applied
    if failing and last is not None and (last.data_version or 0) >= version:
        return Standing(
            FAILED,
            f"FAILED: {last.message or 'apply failed'} (data version {last.data_version})",
            "FAILED: apply",
        )
    if applied >= version:
        return Standing(DONE, f"done (data version {presence.data_version})")
    return Standing(
        PENDING,
        f"pending (at data version {presence.data_version})",
        "FAILED: apply" if failing else "LAGGING: data",
    )


def canary_path(presence: Presence | Unreadable | None, app_release_path: str) -> str | None:
    """The node override a host follows instead of the app's release, if any."""
    if isinstance(presence, Presence) and presence.desired is not None:
        path = presence.desired.path
        if path != app_release_path:
            return path
    return None


def release_outcome(presence: Seen | None, wanted: DesiredRelease) -> Standing:
    """Done once the host acted on release znode ``wanted`` (its path, at its
    version) and installed exactly that: the ref of the release, at the
    commit the host itself resolved for the version it acted on (the full
    commit, when the ref is one), from the release's source. A newer
    version acted on supersedes ``wanted``. ``fleet`` and ``--wait`` both
    judge by this."""
    if (undecided := _not_decidable(presence)) is not None:
        return undecided
    assert isinstance(presence, Presence)
    version, rel = wanted.version, wanted.release
    desired, installed, last = presence.desired, presence.installed, presence.last_install
    lagging = "LAGGING: release"
    if (
        desired is None
        or desired.path != wanted.path
        or desired.version < version
        or last is None
        or (last.version or 0) < version
    ):
        return Standing(PENDING, f"pending (has not installed release version {version})", lagging)
    if (last.version or 0) > version:
        return Standing(
            FAILED, f"superseded: the host acted on newer release version {last.version}", lagging
        )
    if not last.ok:
        log = f" (log {last.log})" if last.log else ""
        return Standing(
            FAILED, f"FAILED: {last.message or 'install failed'}{log}", "FAILED: install"
        )
    if rel is None:  # an unreadable release "installed" fine: not something a host does
        return Standing(FAILED, "FAILED: reports installing an unreadable release", lagging)
    shown = (rel.source, display_source(rel.source))
    commit = last.commit or ""
    wrong = None
    if not _COMMIT_RE.fullmatch(commit):
        wrong = f"reports commit {clean(commit, 50)!r}, not a commit id"
    elif installed is None:
        wrong = "reports installing it, but nothing is installed"
    elif (last.ref, installed.ref) != (rel.ref, rel.ref):
        wrong = f"installed ref {clean(installed.ref, 40)!r}, the release is {clean(rel.ref, 40)!r}"
    elif installed.commit != commit:
        wrong = (
            f"installed commit {clean((installed.commit or '?')[:12])}, "
            f"not {commit[:12]} it resolved {clean(rel.ref, 40)} to"
        )
    elif _COMMIT_RE.fullmatch(rel.ref) and commit != rel.ref:
        wrong = f"resolved commit {rel.ref[:12]} to {commit[:12]}"
    elif installed.source is not None and installed.source not in shown:
        wrong = f"installed from {clean(installed.source, 80)}, not {clean(shown[1], 80)}"
    if wrong is not None:
        return Standing(FAILED, f"FAILED: {wrong}", lagging)
    return Standing(DONE, f"done ({clean(rel.ref, 40)} at {commit[:10]})")


def order_outcome(
    result: OrderResult | Unreadable | None, live: bool, was_live: bool = False
) -> Standing:
    """Done only for rc 0 (or no rc): any other end is named at the end of a
    wait. ``was_live``: the host was live earlier in this command (it went
    away), rather than never (no such host, as far as we can tell)."""
    if result is None:
        if live:
            return Standing(PENDING, "pending")
        if was_live:
            return GONE_PRESENCE
        return Standing(ABSENT, "not live, no result (no such host now)")
    if isinstance(result, Unreadable):
        return Standing(FAILED, f"unreadable result: {result.reason}")
    rc = None if result.returncode is None else f"rc {result.returncode}"
    if result.state == "running":
        if not live:
            return Standing(GONE, "running, but the host is no longer live")
        return Standing(PENDING, "running")
    if result.state == "done" and result.returncode in (0, None):
        return Standing(DONE, f"done ({rc or 'no rc'})")
    words = [w for w in (rc, result.message) if w]
    return Standing(FAILED, result.state + (f" ({', '.join(words)})" if words else ""))


def order_targets(order: Order, live: Iterable[str]) -> set[str]:
    """An order without nodes is for every host live when it is looked at."""
    return set(live) if order.nodes is None else set(order.nodes)


def order_outcomes(
    order: Order,
    live: set[str],
    results: Mapping[str, OrderResult | Unreadable],
    was_live: Iterable[str] = (),
) -> dict[str, Standing]:
    """Every targeted host, plus every host that answered (even if no longer
    live or never targeted: what it did still happened). ``was_live``: hosts
    seen live earlier in this command."""
    targets = order_targets(order, live)
    earlier = set(was_live)
    outcomes = {}
    for node in sorted(targets | set(results)):
        outcome = order_outcome(results.get(node), node in live, node in earlier)
        notes = []
        if node in results and node not in live and outcome.state != GONE:
            notes.append("host no longer live")
        if order.nodes is not None and node not in order.nodes:
            notes.append("not targeted")
        if notes:
            outcome = Standing(outcome.state, f"{outcome.text} [{', '.join(notes)}]")
        outcomes[node] = outcome
    return outcomes


def exit_code(outcomes: Mapping[str, Standing], still_waiting_code: int) -> int:
    """0 all done; 1 any failed, gone or absent; else ``still_waiting_code`` (pending)."""
    states = {o.state for o in outcomes.values()}
    if states <= {DONE, SKIPPED}:
        return 0
    if states & {FAILED, GONE, ABSENT}:
        return 1
    return still_waiting_code


@dataclass(frozen=True)
class HostState:
    """One host in the fleet view: its problems, empty when converged.
    ``release`` is the release znode it should follow (its override, else
    the app's), None when there is none; ``outcomes`` are the judgements
    (data, release) behind the marks, as ``--wait`` would make them."""

    node: str
    presence: Seen
    expected_data: int
    release: DesiredRelease | None
    problems: tuple[str, ...]
    outcomes: tuple[Standing, ...] = ()

    @property
    def live(self) -> bool:
        return is_live(self.presence)


def host_judgement(
    presence: Seen, expected_data: int, wanted: DesiredRelease | None
) -> tuple[tuple[str, ...], tuple[Standing, ...]]:
    """The marks of the fleet table and the outcomes they come from: the
    very ``data_outcome`` and ``release_outcome`` that ``--wait`` uses, so a
    host is converged here exactly when a wait for the current data version
    and release would say "done". ``expected_data`` is the newest data
    version of the host's three layers now."""
    if not isinstance(presence, Presence):
        undecided = _not_decidable(presence)
        assert undecided is not None
        return (undecided.mark,), (undecided,)
    outcomes = [data_outcome(presence, expected_data)]
    marks = [outcomes[0].mark] if outcomes[0].state != DONE else []
    if wanted is not None and wanted.error is not None:
        marks.append(f"UNREADABLE: release: {wanted.error}")
    elif wanted is not None and wanted.release is not None:
        outcomes.append(release_outcome(presence, wanted))
        if outcomes[-1].state != DONE:
            marks.append(outcomes[-1].mark)
    return tuple(marks), tuple(outcomes)


def host_problems(
    presence: Seen, expected_data: int, wanted: DesiredRelease | None
) -> tuple[str, ...]:
    return host_judgement(presence, expected_data, wanted)[0]


def fleet_states(
    presences: Mapping[str, Seen],
    shared_data: int,
    node_data: Mapping[str, int],
    app_release: DesiredRelease | None,
    node_releases: Mapping[str, DesiredRelease],
) -> list[HostState]:
    """``shared_data``: the app and global layers' newest version; ``node_data``
    and ``node_releases``: each node's layer version and override, if any."""
    states = []
    for node in sorted(presences):
        expected = max(shared_data, node_data.get(node, 0))
        wanted = node_releases.get(node, app_release)
        problems, outcomes = host_judgement(presences[node], expected, wanted)
        states.append(HostState(node, presences[node], expected, wanted, problems, outcomes))
    return states
