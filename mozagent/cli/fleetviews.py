"""The operator's text and JSON views of a fleet, an order and a wait.

Only presentation: every judgement shown here (done, failed, lagging, a
canary) was made by ``desired.convergence``, so ``fleet``, the ``--wait``
progress lines and ``order status`` say the same thing in the same words.
Everything a host wrote passes through ``convergence.clean`` before it
reaches a terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mozagent.desired.convergence import (
    ABSENT,
    DONE,
    FAILED,
    GONE,
    PENDING,
    SKIPPED,
    HostState,
    NotLive,
    Presence,
    Standing,
    Unreadable,
    clean,
)
from mozagent.desired.fleet import DesiredRelease
from mozagent.desired.orders import Order, OrderResult
from mozagent.desired.release import display_source


def age(seconds_ago: float | None) -> str:
    if seconds_ago is None:
        return "?"
    s = max(0.0, seconds_ago)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    if s < 172800:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _release_cell(wanted: DesiredRelease | None) -> str:
    if wanted is None:
        return "-"
    if wanted.release is None:
        return "UNREADABLE"
    return clean(wanted.release.ref, 40) + (" (node)" if "/nodes/" in wanted.path else "")


def _fleet_row(state: HostState, now: float) -> list[str]:
    p = state.presence
    desired = _release_cell(state.release)
    if not isinstance(p, Presence):
        return [state.node, "?", "?", "?", "?", desired, "; ".join(state.problems)]
    last = "-"
    if p.last_apply is not None:
        ended = None if p.last_apply.ended is None else now - p.last_apply.ended
        last = f"{'ok' if p.last_apply.ok else 'FAILED'} {age(ended)}"
    installed = "-"
    if p.installed is not None:
        installed = clean(p.installed.ref, 40)
        if p.installed.commit:
            installed += " " + clean(p.installed.commit[:8])
    return [
        state.node,
        clean(p.agent_version, 20),
        "-" if p.data_version is None else str(p.data_version),
        last,
        installed,
        desired,
        ", ".join(state.problems) or "ok",
    ]


FLEET_HEADER = ("NODE", "AGENT", "DATA VERSION", "LAST APPLY", "INSTALLED", "DESIRED", "STATE")


def describe_release(wanted: DesiredRelease | None) -> str:
    if wanted is None:
        return "none"
    if wanted.release is None:
        return f"UNREADABLE ({clean(wanted.error)})"
    rel = wanted.release
    return (
        f"{clean(rel.ref, 40)} from {clean(display_source(rel.source))}"
        f" (release version {wanted.version})"
    )


def format_fleet(
    app: str,
    shared_data: int,
    app_release: DesiredRelease | None,
    states: Sequence[HostState],
    now: float,
) -> str:
    lines = [
        f"app {app}: data version {shared_data} (app + global layers), "
        f"release {describe_release(app_release)}"
    ]
    if states:
        lines += _table(FLEET_HEADER, [_fleet_row(s, now) for s in states])
    live = [s for s in states if s.live]
    if live:
        converged = sum(1 for s in live if not s.problems)
        lines.append(f"{converged} of {len(live)} hosts converged")
    else:
        lines.append("no live hosts")
    ghosts = [s.node for s in states if not s.live and s.presence == NotLive()]
    if ghosts:
        lines.append(
            f"not live agents, not counted (persistent znodes under hosts/, which no "
            f"agent writes: remove them): {', '.join(ghosts)}"
        )
    for s in states:
        if not s.live and isinstance(s.presence, NotLive) and s.presence != NotLive():
            lines.append(f"not counted: {s.node}: {s.presence.reason}")
    for s in states:
        lines.extend(_explain(s))
    return "\n".join(lines) + "\n"


def _explain(state: HostState) -> list[str]:
    """The why behind a mark, one line each, so the table stays narrow."""
    p = state.presence
    if not isinstance(p, Presence):
        return []
    lines = []
    if "FAILED: apply" in state.problems and p.last_apply is not None:
        lines.append(f"{state.node}: apply failed: {clean(p.last_apply.message)}")
    if "LAGGING: data" in state.problems:
        lines.append(
            f"{state.node}: at data version {p.data_version}, current {state.expected_data}"
        )
    if "FAILED: install" in state.problems and p.last_install is not None:
        log = f" (log {clean(p.last_install.log)})" if p.last_install.log else ""
        lines.append(f"{state.node}: install failed: {clean(p.last_install.message)}{log}")
    release = state.outcomes[1:]
    if "LAGGING: release" in state.problems and release:
        lines.append(f"{state.node}: release: {clean(release[0].text)}")
    return lines


def _wanted_json(wanted: DesiredRelease | None) -> dict[str, Any] | None:
    if wanted is None:
        return None
    doc = wanted.as_dict()
    if isinstance(doc.get("source"), str):
        doc["source"] = display_source(doc["source"])
    return doc


def fleet_json(
    app: str,
    shared_data: int,
    app_release: DesiredRelease | None,
    states: Sequence[HostState],
) -> dict[str, Any]:
    hosts = []
    for s in states:
        entry: dict[str, Any] = {
            "node": s.node,
            "expected_data_version": s.expected_data,
            "release": _wanted_json(s.release),
            "problems": list(s.problems),
            "converged": not s.problems,
            "live": s.live,
        }
        if isinstance(s.presence, Unreadable):
            entry["unreadable"] = s.presence.reason
        elif isinstance(s.presence, NotLive):
            entry["not_live"] = s.presence.reason
        else:
            entry["presence"] = s.presence.to_doc()
        hosts.append(entry)
    return {
        "app": app,
        "data_version": shared_data,
        "release": _wanted_json(app_release),
        "hosts": hosts,
        "converged": bool(states) and all(not s.problems for s in states),
    }


def format_order(
    name: str,
    order: Order,
    outcomes: Mapping[str, Standing],
    results: Mapping[str, OrderResult | Unreadable],
    now: float,
) -> str:
    """One line per host, and the last lines of what each command printed."""
    by = f", by {clean(order.by)}" if order.by else ""
    when = f" {age(now - order.at)}" if order.at is not None else ""
    nodes = "all live hosts" if order.nodes is None else ", ".join(map(clean, order.nodes))
    lines = [f"{name}: {clean(order.command)}{by}{when}, for {nodes or 'no hosts'}"]
    if not outcomes:
        lines.append("no targeted hosts are live, and no host has answered")
    width = max((len(node) for node in outcomes), default=0)
    for node, outcome in outcomes.items():
        lines.append(f"{node.ljust(width)}  {clean(outcome.text)}")
        result = results.get(node)
        if isinstance(result, OrderResult) and result.output.strip():
            lines.extend(
                f"{' ' * width}  | {clean(line)}" for line in result.output.splitlines()[-3:]
            )
    return "\n".join(lines) + "\n"


def _result_json(result: OrderResult | Unreadable | None) -> dict[str, Any] | None:
    if isinstance(result, Unreadable):
        return {"unreadable": result.reason}
    return None if result is None else result.to_doc()


def order_json(
    name: str,
    order: Order,
    outcomes: Mapping[str, Standing],
    results: Mapping[str, OrderResult | Unreadable],
) -> dict[str, Any]:
    return {
        "order": name,
        "command": order.command,
        "by": order.by,
        "at": order.at,
        "nodes": None if order.nodes is None else list(order.nodes),
        "hosts": {
            node: {
                "state": outcome.state,
                "text": outcome.text,
                "result": _result_json(results.get(node)),
            }
            for node, outcome in outcomes.items()
        },
    }


def progress_line(label: str, outcome: Standing, elapsed: float) -> str:
    timing = f" in {elapsed:.1f} s" if outcome.state in (DONE, FAILED) else ""
    return f"{label}: {clean(outcome.text)}{timing}"


def wait_summary(outcomes: Mapping[str, Standing], timeout: float) -> str:
    """One line: how many are done, and the others named by why."""
    groups: dict[str, list[str]] = {}
    why = {
        FAILED: "failed",
        GONE: "went away",
        ABSENT: "not live (no such host)",
        PENDING: f"did not answer within {timeout:g} s",
    }
    for label, outcome in sorted(outcomes.items()):
        if outcome.state not in (DONE, SKIPPED):
            groups.setdefault(why[outcome.state], []).append(label)
    waited = sum(1 for o in outcomes.values() if o.state != SKIPPED)
    done = sum(1 for o in outcomes.values() if o.state == DONE)
    if not groups:
        return f"all {waited} hosts done"
    return f"{done} of {waited} hosts done; " + "; ".join(
        f"{reason}: {', '.join(labels)}" for reason, labels in groups.items()
    )
