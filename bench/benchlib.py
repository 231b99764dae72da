"""What the benchmarks share: their common options, how a report names the
code it measured, and how its figures become JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

# The checkout's root, where mozagent_dev (the loopback ZooKeeper, the Heat
# stand-in) and tests/ live: neither is installed, so no image carries them.
# Every bench imports this module before those (isort puts it with the
# third-party imports), so this is the one place that makes them importable.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def bench_parser(doc: str | None, quick: str, keep: str) -> argparse.ArgumentParser:
    """--quick, --json PATH and --keep, worded for each bench, the same in all."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="also write JSON here")
    parser.add_argument("--keep", action="store_true", help=keep)
    return parser


class LoggedProcess:
    """A process a bench started with its output in a log: its pid, and a
    clear failure, with the end of its log, the moment it has died."""

    label: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return "\n".join(text.splitlines()[-lines:]) or "(no log)"

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"{self.label} exited with {self.proc.returncode}; log tail:\n{self.log_tail()}"
            )


def write_report(report: str, doc: Any, json_path: str | None) -> int:
    """The end of every bench: the report on stdout, the figures as JSON where
    asked; the exit code of a bench that got this far."""
    print(report, flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"JSON written to {json_path}", flush=True)
    return 0


class BenchError(RuntimeError):
    """A benchmark cannot go on: a bounded wait expired, a process died, setup failed."""


def read_rss_mib(pid: int) -> float:
    """VmRSS from /proc: what the process holds resident now (not its children)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise BenchError(f"no VmRSS for pid {pid}")


def read_cpu_seconds(pid: int) -> float:
    """utime+stime of the process (its own threads only), to show what a phase cost."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        raise BenchError(f"no /proc/{pid}/stat") from None
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


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
