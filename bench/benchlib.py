"""What both benchmarks share: how a report names the code it measured, and
how its figures become JSON."""

from __future__ import annotations

import math
import subprocess
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any


def to_json(value: Any) -> Any:
    """Dataclasses (with the computed figures they name in ``json_extra``) and
    NaN made JSON-safe."""
    if is_dataclass(value) and not isinstance(value, type):
        doc = {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
        for name in getattr(value, "json_extra", ()):
            doc[name] = to_json(getattr(value, name))
        return doc
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def code_version() -> str:
    """The commit measured (and whether mozagent/ had local changes): figures drift with code."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "mozagent"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + local changes' if dirty else ''}"
