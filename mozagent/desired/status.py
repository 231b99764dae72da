"""``status.json``: the document the daemon writes and ``mozagent status``
(and people, and their tools) read, defined once.

A report in the sense of ``desired/schema.py``: sections a reader does not
know (a newer agent's) are kept and ignored, and a known section of the wrong
type is dropped and reported, so a damaged or hand-edited file never reads as
a healthy host. The sections the fleet also sees have their typed definitions
in ``desired/presence.py`` (``last_apply``'s summary, ``release``).
"""

from __future__ import annotations

from typing import Any

from mozagent.desired.schema import SCHEMA_KEY

STATUS_SCHEMA = 1

# The type each section must have; anything else in a status file (a hand
# edit, a bug, a disk error) is dropped rather than trusted or crashed on.
SECTIONS: dict[str, type | tuple[type, ...]] = {
    "agent": dict,
    "zookeeper": dict,
    "layers": dict,
    "last_apply": dict,
    "applying": dict,
    "errors": dict,
    "deployments": list,
    "heat": dict,
    "release": dict,
    "orders": list,
    "puppet_runner": dict,
    "applied_data_version": int,
    "app": str,
    "node": str,
    "puppet_ref": str,
    "config_file": str,
    "data_version": int,
    "next_apply": (int, float),
    "apply_budget": str,
    "updated": (int, float),
    SCHEMA_KEY: int,
}


def sanitize(doc: Any) -> dict[str, Any] | None:
    """A status document whose every known section has the right type, or None.

    Sections of the wrong type are dropped and reported as an error of the
    status file itself: a damaged file must never read as a healthy host.
    """
    if not isinstance(doc, dict):
        return None
    out: dict[str, Any] = {}
    damaged: list[str] = []
    for key, value in doc.items():
        kind = SECTIONS.get(key)
        if kind is None or value is None or isinstance(value, kind):
            out[key] = value
        else:
            damaged.append(f"{key!r} is a {type(value).__name__}")
    errors = out.get("errors") or {}
    clean: dict[str, list[dict[str, str]]] = {}
    for group, items in errors.items():
        good = [e for e in items if _is_error(e)] if isinstance(items, list) else []
        if good:
            clean[group] = good
        if not isinstance(items, list) or len(good) != len(items):
            damaged.append(f"errors.{group} is not a list of errors")
    if not isinstance(out.get("agent"), dict) or not out["agent"].get("pid"):
        damaged.append("no agent section")
    if damaged:
        clean["status_file"] = [
            {
                "where": "status.json",
                "message": f"the status file is damaged ({'; '.join(damaged)}); what it says "
                "may be wrong until the agent rewrites it",
            }
        ]
    out["errors"] = clean
    for key in ("agent", "zookeeper", "layers"):
        if not isinstance(out.get(key), dict):
            out[key] = {}
    return out


def _is_error(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("where"), str)
        and isinstance(item.get("message"), str)
    )
