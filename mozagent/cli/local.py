"""The commands about this host: ``daemon`` (run the agent), ``status`` (what
it is doing, from its state dir) and ``apply`` (ask the running daemon for a
run and wait for its result).

``status`` is what a person types when something is wrong, so it imports
only what it reads with: no ZooKeeper client, no logging setup.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from mozagent.cli.parser import config_of, fail
from mozagent.config import ConfigError, config_path
from mozagent.report.status import EXIT_ERRORS, EXIT_USAGE, exit_code, format_status, load_status

DEFAULT_STATE_DIR = "/var/lib/mozagent"


def cmd_daemon(args: argparse.Namespace) -> int:
    from mozagent import logs  # first (sorted so): it imports structlog without rich
    from mozagent.config import check_runnable
    from mozagent.daemon import Daemon

    cfg = config_of(args)
    assert cfg is not None
    check_runnable(cfg)
    logs.setup_logging(cfg.log_level, cfg.log_format)
    agent = Daemon(cfg, mode="once" if args.once else "daemon")
    if not args.once:
        return agent.run_daemon()
    if not agent.acquire_lock(wait=False):
        from mozagent.fileio import lock_holder

        return fail(
            f"another mozagent (pid {lock_holder(agent.lock_file)}) is using {cfg.state_dir}; "
            "ask it for a run with `mozagent apply` (waits for the result) or "
            "`systemctl reload mozagent`",
            1,
        )
    return agent.run_once()


def _state_dir(args: argparse.Namespace) -> tuple[str, str | None]:
    """The state dir to read, and the config's error if the config is unusable.

    ``status`` must work when a bad config is the very problem: it then reads
    the state dir named in the file if it can, else the default, and says why.
    """
    if args.state_dir:
        return args.state_dir, None
    try:
        cfg = config_of(args)
        assert cfg is not None
        return cfg.state_dir, None
    except ConfigError as exc:
        return _state_dir_of_broken(config_path(getattr(args, "config", None))), str(exc)


def _state_dir_of_broken(path: str) -> str:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh.read(1024 * 1024))
        value = raw.get("state_dir") if isinstance(raw, dict) else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        value = None
    return value if isinstance(value, str) and value else DEFAULT_STATE_DIR


def _with_health(doc: dict[str, Any], state_dir: str) -> dict[str, Any]:
    from mozagent.fileio import free_space
    from mozagent.report.health import heartbeat_age

    doc = dict(doc)
    doc["heartbeat_age"] = heartbeat_age(state_dir)
    free = free_space(state_dir)
    doc["state_dir_space"] = (
        None if free is None else {"path": state_dir, "bytes": free[0], "inodes": free[1]}
    )
    return doc


def cmd_status(args: argparse.Namespace) -> int:
    from mozagent.report.status import all_errors, pid_alive

    state_dir, config_error = _state_dir(args)
    if config_error:
        fail(f"{config_error} (showing the status in {state_dir})")
    path = os.path.join(state_dir, "status.json")
    doc = load_status(path)
    if doc is None:
        problem = (
            f"no status at {path}: the agent has not run with this state dir "
            "(or the file is not a status document)"
        )
        if args.json:
            print(json.dumps({"error": problem, "config_error": config_error}))
        else:
            print(f"mozagent: {problem}")
        return EXIT_USAGE if config_error else exit_code(None)
    doc = _with_health(doc, state_dir)
    code = EXIT_USAGE if config_error else exit_code(doc)
    if args.json:
        doc["running"] = pid_alive((doc.get("agent") or {}).get("pid"))
        doc["all_errors"] = all_errors(doc)
        doc["config_error"] = config_error
        doc["exit_code"] = code
        print(json.dumps(doc, indent=2, sort_keys=True))
        return code
    try:
        text = format_status(doc)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return fail(f"{path} is damaged ({exc!r}); `mozagent status --json` shows it", 3)
    print(text)
    return code


def cmd_apply(args: argparse.Namespace) -> int:
    from mozagent.report.status import format_last_apply, pid_alive
    from mozagent.sources.runrequests import RunRequests

    state_dir = args.state_dir
    if not state_dir:
        cfg = config_of(args)
        assert cfg is not None
        state_dir = cfg.state_dir
    path = os.path.join(state_dir, "status.json")
    agent = ((load_status(path) or {}).get("agent")) or {}
    pid = agent.get("pid")
    if agent.get("mode") != "daemon" or agent.get("stopped") or not pid_alive(pid):
        return fail(
            f"no mozagent daemon is running with state dir {state_dir}; "
            "`mozagent daemon --once` runs once without one",
            EXIT_ERRORS,
        )
    try:
        request = RunRequests(state_dir).make()
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        return fail(f"cannot ask the daemon (pid {pid}) for a run: {exc}", EXIT_ERRORS)
    print(f"mozagent: asked the daemon (pid {pid}) for a run; waiting for it", file=sys.stderr)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        doc = load_status(path) or {}
        last = doc.get("last_apply") or {}
        if request in (last.get("requests") or []):
            if args.json:
                print(json.dumps(last, indent=2, sort_keys=True))
            else:
                print("\n".join(line[2:] for line in format_last_apply(last)))
            return 0 if last.get("ok") else 1
        if not pid_alive(pid):
            return fail(f"the daemon (pid {pid}) stopped before running", EXIT_ERRORS)
        time.sleep(0.2)
    return fail(f"no result within {args.timeout:g} s; the run may still come", EXIT_ERRORS)
