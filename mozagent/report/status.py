"""The agent's status: written by the daemon, read by ``mozagent status``.

It lives on disk (``<state_dir>/status.json``) so that a person debugging a host
gets answers when the daemon or ZooKeeper is down. It holds versions, results
and problems, never data values or credentials, so it can be world-readable.

Exit codes of ``mozagent status`` (and of ``mozagent daemon --once``):
0 healthy; 1 the last apply failed (a run aborted by a clean stop is not a
failure); 2 bad usage or config; 3 current errors
(bad data, ZooKeeper unreachable, agent not running); 4 no status yet.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from mozagent import __version__
from mozagent.desired.deployments import short
from mozagent.desired.schema import SCHEMA_KEY
from mozagent.desired.status import STATUS_SCHEMA, sanitize
from mozagent.fileio import LOW_SPACE_BYTES, read_json, write_json
from mozagent.report.health import HEARTBEAT_STALE

EXIT_OK = 0
EXIT_APPLY_FAILED = 1
EXIT_USAGE = 2
EXIT_ERRORS = 3
EXIT_NO_STATUS = 4


class StatusStore:
    """Thread-safe holder of the status document; every update is written atomically."""

    def __init__(self, path: str, base: dict[str, Any]) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._doc: dict[str, Any] = {
            SCHEMA_KEY: STATUS_SCHEMA,
            "agent": {"version": __version__, "pid": os.getpid(), "started": time.time()},
            "zookeeper": {"state": "not configured"},
            "layers": {},
            "last_apply": None,
            "errors": {},
        }
        self._doc.update(base)
        # Why the last write failed (a full disk), while the file is behind
        # the document; flush() tries again.
        self.write_error: str | None = None

    def update(self, **sections: Any) -> None:
        """Replace sections; the file is rewritten only when something changed.

        A new ``last_apply`` is written durably: after a power loss, a failed
        run must not come back as no run at all.
        """
        with self._lock:
            if all(self._doc.get(k) == v for k, v in sections.items()):
                return
            self._doc.update(_copy(sections))
            self._write(durable="last_apply" in sections)

    def set_errors(self, group: str, errors: list[dict[str, str]]) -> None:
        """Errors come in groups (``data``, ``zookeeper``...); each source replaces its own."""
        with self._lock:
            if self._doc["errors"].get(group, []) == errors:
                return
            if errors:
                self._doc["errors"][group] = errors
            else:
                self._doc["errors"].pop(group, None)
            self._write()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return _copy(self._doc)

    def flush(self) -> bool:
        """Write the document again if the last write failed; True when the file is current."""
        with self._lock:
            if self.write_error is not None:
                self._write(durable=True)
            return self.write_error is None

    def _write(self, durable: bool = False) -> None:
        """Never raises: a worker must not die because status.json cannot be
        written (a full disk). The document stays current in memory, the
        failure is logged once, and ``flush`` (the main loop, every few
        seconds) writes it when space returns; ``mozagent status`` checks the
        state dir's free space itself meanwhile."""
        self._doc["updated"] = time.time()
        try:
            write_json(self._path, self._doc, 0o644, durable=durable)
        except OSError as exc:
            if self.write_error is None:
                import structlog  # here, so that `mozagent status` needs no logging stack

                structlog.get_logger("mozagent").error(
                    "status_write_failed", path=self._path, error=str(exc)
                )
            self.write_error = str(exc)
            return
        if self.write_error is not None:
            import structlog

            structlog.get_logger("mozagent").info("status_written_again", path=self._path)
        self.write_error = None


def _copy(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _copy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_copy(v) for v in doc]
    return doc


def load_status(path: str) -> dict[str, Any] | None:
    """The status document, or None when there is none or it is unusable."""
    try:
        return sanitize(read_json(path))
    except (ValueError, OSError):
        return None


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"mozagent" in fh.read()
    except OSError:
        return True


def heartbeat_stale(doc: dict[str, Any]) -> bool:
    """A live daemon whose heartbeat is old: stopped (SIGSTOP) or stuck."""
    age = doc.get("heartbeat_age")
    agent = doc.get("agent") or {}
    return (
        agent.get("mode") == "daemon"
        and not agent.get("stopped")
        and isinstance(age, (int, float))
        and age > HEARTBEAT_STALE
        and pid_alive(agent.get("pid"))
    )


def all_errors(doc: dict[str, Any]) -> list[dict[str, str]]:
    """Every current error; ``heartbeat_age`` (added by the reader) is checked too."""
    out: list[dict[str, str]] = []
    for group in sorted(doc.get("errors") or {}):
        out.extend(doc["errors"][group])
    agent = doc.get("agent") or {}
    if (
        agent.get("mode") == "daemon"
        and not agent.get("stopped")
        and not pid_alive(agent.get("pid"))
    ):
        out.append(
            {
                "where": "agent",
                "message": f"daemon pid {agent.get('pid')} is not running and did not stop cleanly",
            }
        )
    elif heartbeat_stale(doc):
        out.append(
            {
                "where": "agent",
                "message": f"daemon pid {agent.get('pid')} is not making progress: no heartbeat "
                f"for {doc['heartbeat_age']:.0f} s (stopped, or a worker is stuck); what "
                "status shows may be out of date",
            }
        )
    space = doc.get("state_dir_space")
    if isinstance(space, dict) and (
        space.get("bytes", LOW_SPACE_BYTES) < LOW_SPACE_BYTES or space.get("inodes") == 0
    ):
        out.append(
            {
                "where": "disk",
                "message": f"the file system of {space.get('path')} is full "
                f"({space.get('bytes')} bytes, {space.get('inodes')} inodes free): the agent "
                "cannot record what it does; what status shows may be out of date",
            }
        )
    return out


def exit_code(doc: dict[str, Any] | None) -> int:
    if doc is None:
        return EXIT_NO_STATUS
    last = doc.get("last_apply")
    if last is not None and not last.get("ok") and not last.get("aborted"):
        return EXIT_APPLY_FAILED
    if any(
        isinstance(d, dict) and d.get("latest") and d.get("state") == "failed"
        for d in doc.get("deployments") or []
    ):
        return EXIT_APPLY_FAILED
    if all_errors(doc):
        return EXIT_ERRORS
    return EXIT_OK


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dur(result: dict[str, Any]) -> str:
    if result.get("started") and result.get("ended"):
        return f"{result['ended'] - result['started']:.1f}s"
    return "-"


def format_last_apply(last: dict[str, Any] | None) -> list[str]:
    """The last run and each config's result (``status`` and ``apply`` print it)."""
    if last is None:
        return ["  last apply: none yet"]
    verdict = "OK" if last.get("ok") else "ABORTED" if last.get("aborted") else "FAILED"
    lines = [
        f"  last apply: {verdict} at {when(last.get('ended'))} ({_dur(last)}), "
        f"data version {last.get('data_version', '-')}"
    ]
    if last.get("message") not in ("ok", "failed", None):
        lines.append(f"    {last['message']}")
    for res in last.get("results") or []:
        counts = ""
        if res.get("changed") is not None:
            counts = f", {res['changed']} changed, {res.get('failed') or 0} failed"
        lines.append(
            f"    {res.get('name')}: {res.get('message')} "
            f"(exit {res.get('exit_code')}{counts}, {_dur(res)})"
        )
        if not res.get("ok"):
            lines += [f"      {err}" for err in puppet_errors(res.get("output_tail") or [])]
    return lines


def puppet_errors(tail: list[str], most: int = 3) -> list[str]:
    """Puppet's own errors in a failed run's output, each with the lines it
    continues on: what a person debugging the host needs first (a type
    mismatch names the parameter on the next line). Facter's complaints about
    what it may not read are not the run's failure."""
    found: list[str] = []
    current: list[str] | None = None
    for line in tail:
        if not isinstance(line, str):
            continue
        if line.startswith("Error:") and not line.startswith("Error: Facter:"):
            if len(found) >= most:
                break
            current = [line.strip()]
            found.append("")
        elif current is not None and line[:1].isspace() and line.strip():
            current.append(line.strip())
        else:
            current = None
        if current is not None:
            found[-1] = " ".join(current)[:400]
    return found


def format_runner(runner: dict[str, Any] | None, alive: bool) -> list[str]:
    """The warm puppet parent (``apply/warm.py``): up or not, its size, its
    runs, and the last time a run went to a plain ``puppet apply`` instead."""
    if not runner:
        return []
    state = runner.get("state") if alive else "not running (the agent is not)"
    line = f"  puppet runner: warm, {state}"
    if alive and state == "warm":
        line += (
            f" (pid {runner.get('pid')}, {runner.get('rss_mib', '?')} MiB, "
            f"{runner.get('runs', 0)} runs since {when(runner.get('since'))})"
        )
    lines = [line + f"; {runner.get('runs_served', 0)} warm runs in all"]
    if runner.get("last_end"):
        lines.append(f"    last parent ended {runner['last_end']}")
    fallback = runner.get("last_fallback")
    if isinstance(fallback, dict):
        lines.append(
            f"    last run with puppet apply instead: {when(fallback.get('at'))}: "
            f"{fallback.get('reason')}"
        )
    return lines


def format_heat(doc: dict[str, Any]) -> list[str]:
    """The metadata source and the deployments, newest last."""
    heat = doc.get("heat")
    deployments = [d for d in doc.get("deployments") or [] if isinstance(d, dict)]
    if not heat and not deployments:
        return []
    lines = []
    if isinstance(heat, dict):
        collectors = [c for c in heat.get("collectors") or [] if isinstance(c, dict)]
        by_name = {c.get("collector"): c for c in collectors}
        # "last success" is the last poll that found a usable document, of the
        # collector in use (else the first one polled).
        source = by_name.get(heat.get("in_use")) or next(
            (by_name[n] for n in heat.get("polling") or [] if n in by_name), {}
        )
        polling = ", ".join(heat.get("polling") or []) or "local metadata only"
        lines.append(
            f"  heat metadata: polling {polling}; last success {when(source.get('last_ok'))}"
        )
        for c in collectors:
            if c.get("unusable"):
                lines.append(
                    f"    {c.get('collector')}: UNUSABLE since {when(c.get('unusable_since'))}"
                    " (last good metadata in use)"
                )
    if deployments:
        lines.append("  deployments:")
    for d in deployments[-10:]:
        sig = d.get("signal") or {}
        signal = sig.get("state", "-")
        if signal == "pending" and sig.get("attempts"):
            signal += f" ({sig['attempts']} attempts: {sig.get('last_error')})"
        state = str(d.get("state"))
        if d.get("removed"):
            state += f", removed from metadata at {when(d['removed'])}"
        lines.append(
            f"    {short(str(d.get('name')))} [{d.get('group')} {d.get('action')}] {state}"
            f" — {d.get('message') or '-'}; signal {signal}  ({short(str(d.get('id')))})"
        )
    return lines


def _release_line(label: str, rel: Any) -> str:
    if not isinstance(rel, dict) or not rel.get("ref"):
        return f"    {label}: none"
    commit = str(rel.get("commit") or "")[:12]
    return (
        f"    {label}: {rel.get('ref')}"
        + (f" ({commit})" if commit else "")
        + (f" from {rel['source']}" if rel.get("source") else "")
    )


def format_release(doc: dict[str, Any]) -> list[str]:
    """The app's code: what should run, what runs, and how the last install went."""
    release = doc.get("release")
    orders = [o for o in doc.get("orders") or [] if isinstance(o, dict)]
    lines: list[str] = []
    if isinstance(release, dict):
        lines.append("  release:")
        desired = release.get("desired")
        lines.append(_release_line("desired", desired))
        if isinstance(desired, dict) and desired.get("path"):
            lines[-1] += f"  [{desired['path']}]"
        installed = release.get("installed")
        lines.append(_release_line("installed", installed))
        if isinstance(installed, dict) and installed.get("installed"):
            lines[-1] += f" at {when(installed['installed'])}"
        last = release.get("last_install")
        if isinstance(last, dict):
            verdict = "OK" if last.get("ok") else "FAILED"
            lines.append(
                f"    last install: {verdict} {last.get('ref') or '-'} at "
                f"{when(last.get('ended'))} ({_dur(last)}): {last.get('message') or '-'}"
            )
            if last.get("log") and last["log"] not in str(last.get("message")):
                lines.append(f"      log: {last['log']}")
    if orders:
        lines.append("  orders (newest first):")
        for o in orders[:5]:
            rc = "" if o.get("returncode") is None else f" rc {o['returncode']}"
            lines.append(
                f"    {o.get('order')} {o.get('command')}: {o.get('state')}{rc} at "
                f"{when(o.get('ended') or o.get('started'))} — {o.get('message') or '-'}"
            )
    return lines


def format_status(doc: dict[str, Any]) -> str:
    """The human form: short, like a ``puppet agent --test`` summary."""
    agent = doc.get("agent") or {}
    alive = pid_alive(agent.get("pid"))
    if agent.get("mode") == "once":
        state = "last ran once (mozagent daemon --once)"
    elif alive and heartbeat_stale(doc):
        age = doc["heartbeat_age"]
        state = f"NOT RESPONDING (pid {agent.get('pid')}, no heartbeat for {age:.0f} s)"
    elif alive:
        state = f"running (pid {agent.get('pid')})"
    elif agent.get("stopped"):
        state = f"stopped at {when(agent.get('stopped'))}"
    else:
        state = f"NOT RUNNING (pid {agent.get('pid')} gone)"
    lines = [
        f"mozagent {agent.get('version', '?')}: {state}",
        f"  app: {doc.get('app') or '-'}   node: {doc.get('node') or '-'}",
    ]
    if doc.get("puppet_ref"):
        lines.append(f"  puppet tree: {doc['puppet_ref']}")
    if agent.get("containment"):
        lines.append(f"  runs held by: {agent['containment']}")
    zk = doc.get("zookeeper") or {}
    zk_line = f"  zookeeper: {zk.get('state', '?')}"
    if zk.get("hosts"):
        zk_line += f" ({zk['hosts']})"
    if zk.get("session_id"):
        zk_line += f" (session {zk['session_id']})"
    if zk.get("since"):
        zk_line += f" since {when(zk['since'])}"
    lines.append(zk_line)
    layers = doc.get("layers") or {}
    if layers:
        lines.append("  data rendered:")
        for name in ("node", "secrets", "app", "global"):  # desired.layers.LAYERS
            layer = layers.get(name)
            if layer:
                extra = " (last good copy: layer unreadable)" if layer.get("stale") else ""
                lines.append(
                    f"    {name:<7} version {layer.get('version', 0):<10} "
                    f"{layer.get('keys', 0)} keys  {layer.get('path', '')}{extra}"
                )
    lines.extend(format_last_apply(doc.get("last_apply")))
    lines.extend(format_runner(doc.get("puppet_runner"), alive))
    lines.extend(format_release(doc))
    lines.extend(format_heat(doc))
    applying = doc.get("applying")
    if applying and alive:
        lines.append(
            f"  applying now: {', '.join(applying.get('configs') or []) or '-'} "
            f"(since {when(applying.get('started'))})"
        )
    if doc.get("next_apply"):
        held = doc.get("apply_budget")
        budget = f" (held by the run budget: {held})" if held else ""
        lines.append(f"  next apply: {when(doc['next_apply'])}{budget}")
    errors = all_errors(doc)
    if errors:
        lines.append(f"  errors ({len(errors)}):")
        for err in errors:
            lines.append(f"    {err['where']}: {err['message']}")
    else:
        lines.append("  errors: none")
    return "\n".join(lines)
