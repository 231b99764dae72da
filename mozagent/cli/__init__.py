"""The ``mozagent`` command line: daemon, status, apply, and operators' data commands
(``cli.data``).

Options go anywhere: ``mozagent --config X status`` and ``mozagent data
--zookeeper H set …`` work as well as options after the last word, because a
person debugging a host types them where they think of them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mozagent import __version__
from mozagent.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_ROOT,
    Config,
    ConfigError,
    config_path,
    load_config,
    parse_zk_hosts,
    parse_zk_root,
)
from mozagent.report.status import EXIT_ERRORS, EXIT_USAGE, exit_code, format_status, load_status

if TYPE_CHECKING:
    from mozagent.cli import fleet as fleetcli

EPILOG_STATUS = """exit codes: 0 healthy; 1 last apply failed; 2 bad usage or config;
3 current errors (bad data, ZooKeeper unreachable, agent not running or not responding);
4 no status yet"""
EPILOG_DATA = """exit codes: 0 done; 1 failed (not found, ZooKeeper unreachable or not
answering); 2 bad usage or input"""
EPILOG_APPLY = """exit codes: 0 the run succeeded; 1 it failed; 2 bad usage or config;
3 no daemon running, it stopped, or no result within --timeout"""
EPILOG_FLEET = """exit codes: 0 every live host converged; 1 some host lags, failed or
is unreadable (or ZooKeeper unreachable / not answering); 2 bad usage or config;
3 no live hosts"""
EPILOG_WAIT = """--wait follows the hosts until each one is done or failed, one line per
host as it finishes; --timeout bounds the whole command, the wait included
(default 300 s with --wait, else 30 s).
exit codes: 0 done (with --wait: every host done); 1 failed (with --wait: some
host failed, did not answer in time, or went away, and they are named; or
ZooKeeper unreachable / not answering); 2 bad usage or input, nothing written;
3 with --wait: the change is written but no live host is there to wait for"""
EPILOG_ORDER = """`mozagent order APP NAME` pushes command NAME to the app's live hosts (or to
each --node) and prints the order's name; `mozagent order status APP [SEQ]`
shows what each host did with the newest order (or order SEQ: a number or
the full name). The first word `status` always means the status command: for
an app named "status" use --app (`order --app status NAME`, `order status
--app status`); an order command cannot be named "status".
With --wait both follow until every targeted live host has finished;
--timeout bounds the whole command, the wait included (default 300 s with
--wait, else 30 s).
exit codes: 0 every targeted host done with rc 0; 1 some host failed, refused,
expired, answered with rc != 0, went away, is targeted but not live, or did not
answer in time (named); or ZooKeeper unreachable; 2 bad usage; 3 no such order,
or no targeted host live; 4 (status without --wait) some hosts not finished yet"""
ZOOKEEPER_ENV = "MOZAGENT_ZOOKEEPER"
ROOT_ENV = "MOZAGENT_ROOT"
DEFAULT_STATE_DIR = "/var/lib/mozagent"
DEFAULT_TIMEOUT = 30.0
DEFAULT_WAIT_TIMEOUT = 300.0


def _options(*names: str) -> argparse.ArgumentParser:
    """Options shared by several levels of the command. ``SUPPRESS`` defaults
    let an option given at one level survive the parsing of the next."""
    p = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    if "config" in names:
        p.add_argument(
            "--config",
            default=S,
            help=f"config file (default: $MOZAGENT_CONFIG or {DEFAULT_CONFIG_PATH})",
        )
    if "zookeeper" in names:
        p.add_argument(
            "--zookeeper",
            metavar="HOSTS",
            default=S,
            help=f"ZooKeeper hosts (default: ${ZOOKEEPER_ENV}, else zookeeper.hosts of the config)",
        )
        p.add_argument(
            "--root",
            default=S,
            help=f"znode root (default: ${ROOT_ENV}, the config's, or /mozagent)",
        )
        p.add_argument(
            "--timeout",
            type=float,
            default=S,
            help="the most the command may take, connecting (and any --wait) included "
            f"(seconds, default {DEFAULT_TIMEOUT:g}; {DEFAULT_WAIT_TIMEOUT:g} with --wait)",
        )
    if "wait" in names:
        p.add_argument(
            "--wait",
            action="store_true",
            default=S,
            help="then follow the live hosts until each has acted on it, one line per host",
        )
    if "layer" in names:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--node", default=S, help="work on this node's layer of APP")
        group.add_argument(
            "--global",
            dest="is_global",
            action="store_true",
            default=S,
            help="work on the global layer (give no APP)",
        )
    return p


DATA_HELP = {
    "set": "set a key: set APP KEY VALUE (VALUE is YAML or JSON; '-' reads stdin)",
    "get": "print a key's value: get APP KEY",
    "delete": "delete a key: delete APP KEY; or a whole layer: delete APP --force",
    "list": "list a layer's keys: list APP",
    "export": "print a layer as YAML: export APP",
    "import": "replace a layer's keys from a YAML file, in one transaction: import APP FILE",
}
# Positional arguments each data action takes after APP (APP is absent with --global).
DATA_ARITY = {
    "set": ["KEY", "VALUE"],
    "get": ["KEY"],
    "delete": ["KEY"],
    "list": [],
    "export": [],
    "import": ["FILE"],
}


def build_parser() -> argparse.ArgumentParser:
    config = _options("config")
    parser = argparse.ArgumentParser(
        prog="mozagent",
        description="Configuration agent: ZooKeeper app data -> Hiera/facts -> puppet apply.",
        parents=[config],
    )
    parser.add_argument("--version", action="version", version=f"mozagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    daemon = sub.add_parser("daemon", help="run the agent (until SIGTERM/SIGINT)", parents=[config])
    daemon.add_argument(
        "--once",
        action="store_true",
        help="one full cycle (read ZooKeeper, render, apply), then exit",
    )

    status = sub.add_parser(
        "status",
        help="what the agent is doing and whether it is healthy",
        epilog=EPILOG_STATUS,
        parents=[config],
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--state-dir", help="read the status from this state dir instead")

    apply = sub.add_parser(
        "apply",
        help="ask the running daemon for a run now, wait for it and print its result",
        description="Like `puppet agent -t`: the daemon runs every config once on the "
        "current data; this command prints the result and exits with its status.",
        epilog=EPILOG_APPLY,
        parents=[config],
    )
    apply.add_argument("--state-dir", help="the daemon's state dir (default: the config's)")
    apply.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds to wait for the result (3600)"
    )
    apply.add_argument("--json", action="store_true", help="print the run's record as JSON")

    common = _options("config", "zookeeper", "layer")
    waiting = _options("wait")
    data = sub.add_parser(
        "data", help="read and write app data in ZooKeeper", parents=[common, waiting]
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, help_text in DATA_HELP.items():
        writes = name in ("set", "import", "delete")
        p = data_sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common, waiting] if writes else [common],
            epilog=EPILOG_WAIT if writes else EPILOG_DATA,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("words", nargs="*", metavar="ARG")
        if name in ("set", "import"):
            p.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
        if name == "set":
            p.add_argument(
                "--string",
                action="store_true",
                help="store VALUE as a literal string, not parsed as YAML",
            )
        if name == "delete":
            p.add_argument(
                "--force", action="store_true", help="needed to delete a whole layer (no KEY)"
            )
    _fleet_parsers(sub)
    return parser


def _fleet_parsers(sub: Any) -> None:
    target = _options("config", "zookeeper")
    waiting = _options("config", "zookeeper", "wait")
    p = sub.add_parser(
        "fleet",
        help="the app's live hosts and whether they converged: fleet APP",
        description="Each live host of APP (its presence in ZooKeeper): agent version, data\n"
        "version, last apply, installed and desired release, and LAGGING/FAILED marks.",
        epilog=EPILOG_FLEET,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[target],
    )
    p.add_argument("words", nargs="*", metavar="APP")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "deploy",
        help="set the app's release (or one node's): deploy APP REF",
        description="Writes the release znode with compare-and-set: if someone else changes\n"
        "it between our read and our write, nothing is written. --source and\n"
        "--install-script default to the current release's (for --node: the node's\n"
        "override, else the app's).",
        epilog=EPILOG_WAIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[waiting],
    )
    p.add_argument("words", nargs="*", metavar="APP REF")
    p.add_argument("--source", help="git URL or path to install from")
    p.add_argument("--install-script", help="script the hosts run after checking out")
    p.add_argument("--node", help="a per-node override (a canary) instead of the app's release")

    p = sub.add_parser(
        "order",
        help="push a command to the app's hosts: order APP NAME; order status APP [SEQ]",
        description="order APP NAME [--node N ...]: create an order;\n"
        "order status APP [SEQ]: what each host did with it.",
        epilog=EPILOG_ORDER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[waiting],
    )
    p.add_argument("words", nargs="*", metavar="ARG")
    p.add_argument("--app", help="the app, as an option (for an app named 'status')")
    p.add_argument(
        "--node",
        action="append",
        dest="nodes",
        metavar="NODE",
        help="only this node (repeat for several; default: every live host)",
    )
    p.add_argument("--json", action="store_true", help="order status as JSON")


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"mozagent: error: {message}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace, required: bool = True) -> Config | None:
    """The config; with ``required=False``, None only when no file was asked for
    and the default one does not exist. A file that exists but is invalid is
    always an error: silently using defaults would write somewhere else."""
    explicit = getattr(args, "config", None)
    path = config_path(explicit)
    defaulted = not explicit and not os.environ.get("MOZAGENT_CONFIG")
    if not required and defaulted and not os.path.exists(path):
        return None
    return load_config(path)


def cmd_daemon(args: argparse.Namespace) -> int:
    from mozagent.config import check_runnable
    from mozagent.daemon import Daemon
    from mozagent.logs import setup_logging

    cfg = _load(args)
    assert cfg is not None
    check_runnable(cfg)
    setup_logging(cfg.log_level, cfg.log_format)
    agent = Daemon(cfg, mode="once" if args.once else "daemon")
    if not args.once:
        return agent.run_daemon()
    if not agent.acquire_lock(wait=False):
        from mozagent.fileio import lock_holder

        return _fail(
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
        cfg = _load(args)
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
        _fail(f"{config_error} (showing the status in {state_dir})")
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
        return _fail(f"{path} is damaged ({exc!r}); `mozagent status --json` shows it", 3)
    print(text)
    return code


def cmd_apply(args: argparse.Namespace) -> int:
    from mozagent.report.status import format_last_apply, pid_alive
    from mozagent.sources.runrequests import RunRequests

    state_dir = args.state_dir
    if not state_dir:
        cfg = _load(args)
        assert cfg is not None
        state_dir = cfg.state_dir
    path = os.path.join(state_dir, "status.json")
    agent = ((load_status(path) or {}).get("agent")) or {}
    pid = agent.get("pid")
    if agent.get("mode") != "daemon" or agent.get("stopped") or not pid_alive(pid):
        return _fail(
            f"no mozagent daemon is running with state dir {state_dir}; "
            "`mozagent daemon --once` runs once without one",
            EXIT_ERRORS,
        )
    try:
        request = RunRequests(state_dir).make()
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        return _fail(f"cannot ask the daemon (pid {pid}) for a run: {exc}", EXIT_ERRORS)
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
            return _fail(f"the daemon (pid {pid}) stopped before running", EXIT_ERRORS)
        time.sleep(0.2)
    return _fail(f"no result within {args.timeout:g} s; the run may still come", EXIT_ERRORS)


class _Deadline(Exception):
    pass


@contextmanager
def _total_time(seconds: float) -> Iterator[None]:
    """Bound a whole command, not only its connect: kazoo waits without a limit
    for a server that accepted the session and then stopped answering."""

    def expire(signum: int, frame: object) -> None:
        raise _Deadline()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _close_quietly(client: Any) -> None:
    """Closing a session on a server that does not answer can itself block."""

    def close() -> None:
        try:
            client.stop()
            client.close()
        except Exception as exc:  # best effort on the way out
            print(f"mozagent: closing the session failed: {exc!r}", file=sys.stderr)

    thread = threading.Thread(target=close, daemon=True)
    thread.start()
    thread.join(timeout=2)


def _data_target(args: argparse.Namespace) -> tuple[str, str]:
    """ZooKeeper hosts and root: option, then environment, then config file."""
    cfg = _load(args, required=False)
    zk_cfg = cfg.zookeeper if cfg else None
    hosts = getattr(args, "zookeeper", None) or os.environ.get(ZOOKEEPER_ENV)
    if hosts:
        parse_zk_hosts("command line", "--zookeeper", hosts)
    elif zk_cfg:
        hosts = zk_cfg.hosts
    else:
        raise ConfigError(
            f"no ZooKeeper hosts: pass --zookeeper HOSTS, set ${ZOOKEEPER_ENV}, or set "
            f"zookeeper.hosts in {config_path(getattr(args, 'config', None))}"
        )
    root = getattr(args, "root", None) or os.environ.get(ROOT_ENV)
    if root:
        root = parse_zk_root("command line", "--root", root)
    else:
        root = zk_cfg.root if zk_cfg else DEFAULT_ROOT
    return hosts, root


def _timeout(args: argparse.Namespace, wait: bool) -> float:
    timeout = getattr(args, "timeout", DEFAULT_WAIT_TIMEOUT if wait else DEFAULT_TIMEOUT)
    if not 0 < timeout < float("inf"):
        raise _Usage(f"--timeout must be a positive number of seconds, got {timeout!r}")
    return timeout


class _Usage(Exception):
    """Bad words or options: exit 2, one line, before connecting."""


def _check(kind: str, value: str) -> str:
    """Names and releases from the command line, refused with the validators' words."""
    from mozagent.desired import convergence
    from mozagent.desired.keys import InvalidValue, check_name

    try:
        if kind == "order":
            return convergence.order_name(value)
        return check_name(kind, value)
    except InvalidValue as exc:
        raise _Usage(str(exc)) from None


def _connected(
    args: argparse.Namespace,
    timeout: float,
    writes: bool,
    work: Callable[[fleetcli.Session], int],
    target: tuple[str, str] | None = None,
) -> int:
    """Run ``work`` on a ZooKeeper session, the whole of it bounded by ``timeout``.
    Shared by every command that talks to ZooKeeper, so that each one fails the
    same way: one line, exit 1, saying whether a change may have been made."""
    from kazoo.client import KazooClient
    from kazoo.exceptions import KazooException
    from kazoo.handlers.threading import KazooTimeoutError

    from mozagent.cli import data as datacli
    from mozagent.cli import fleet as fleet_cli
    from mozagent.logs import route_client_logs
    from mozagent.zkclient import CONNECTION_ERRORS, describe

    hosts, root = target or _data_target(args)
    started = time.monotonic()
    client = KazooClient(hosts=hosts, timeout=min(timeout, 10.0), logger=route_client_logs())
    session = fleet_cli.Session(client, root, started, timeout, hosts=hosts)
    timed_out = connected = False
    try:
        with _total_time(timeout):
            try:
                client.start(timeout=timeout)
            except KazooTimeoutError:
                return _fail(f"cannot connect to ZooKeeper at {hosts} within {timeout:g} s", 1)
            connected = True
            return work(session)
    except _Deadline:
        timed_out = True
        if not connected:
            return _fail(f"cannot connect to ZooKeeper at {hosts} within {timeout:g} s", 1)
        return _fail(
            f"ZooKeeper at {hosts} did not answer within {timeout:g} s (--timeout)"
            + _what_was_written(session.written, writes),
            1,
        )
    except datacli.DataError as exc:
        return _fail(str(exc), exc.code)
    except CONNECTION_ERRORS as exc:
        return _fail(describe(exc, hosts) + _what_was_written(session.written, writes), 1)
    except KazooException as exc:
        return _fail(f"ZooKeeper refused the request: {type(exc).__name__} {exc}".strip(), 1)
    finally:
        client.logger.disabled = True  # the command has said what happened: no epilogue
        if timed_out:
            _close_quietly(client)
        else:
            client.stop()
            client.close()


def _what_was_written(written: bool, writes: bool) -> str:
    """After a command was cut short: whether its change was made."""
    if written:
        return "; the change was made, but following the hosts was cut short"
    if writes:
        return "; the change may or may not have been made: check with `data get/export`"
    return ""


def cmd_data(args: argparse.Namespace) -> int:
    from mozagent.cli import data as datacli

    cmd = args.data_command
    is_global = getattr(args, "is_global", False)
    node = getattr(args, "node", None)
    wait = getattr(args, "wait", False)
    timeout = _timeout(args, wait)
    names = DATA_ARITY[cmd]
    expected = names if is_global else ["APP", *names]
    whole_layer = cmd == "delete" and len(args.words) == len(expected) - 1
    if whole_layer:
        expected = expected[:-1]
    if len(args.words) != len(expected):
        usage = " ".join(expected) + (" --global" if is_global else "")
        return _fail(f"data {cmd} takes {usage} (got {len(args.words)} arguments)")
    words = dict(zip(expected, args.words, strict=False))
    if "APP" in words:
        _check("app", words["APP"])
    if wait and (
        cmd not in ("set", "import", "delete") or whole_layer or getattr(args, "dry_run", False)
    ):
        raise _Usage(
            "--wait follows a set, an import or a key's delete: "
            "not a read, a --dry-run or a whole-layer delete"
        )
    target = _data_target(args)

    try:
        ref = datacli.layer_ref(target[1], words.get("APP"), node, is_global)
        value = None
        if cmd == "set":
            datacli._check_key(words["KEY"])
            text = datacli.read_stdin_value() if words["VALUE"] == "-" else words["VALUE"]
            value = datacli.parse_cli_value(text, args.string, words["KEY"])
        elif cmd == "import":
            datacli.load_import_file(words["FILE"]) if words["FILE"] != "-" else None
        elif "KEY" in words:
            datacli._check_key(words["KEY"])
        if whole_layer and not args.force:
            raise datacli.DataError(
                f"`data delete` without a KEY deletes the whole {ref.label} ({ref.path}); "
                "hosts then render it empty. Add --force to do that.",
                datacli.EXIT_INVALID,
            )
    except datacli.DataError as exc:
        return _fail(str(exc), exc.code)

    def work(session: fleetcli.Session) -> int:
        client = session.client
        if cmd == "set":
            code = datacli.cmd_set(client, ref, words["KEY"], value, args.dry_run)
        elif cmd == "get":
            return datacli.cmd_get(client, ref, words["KEY"])
        elif cmd == "delete" and whole_layer:
            return datacli.cmd_delete_layer(client, ref)
        elif cmd == "delete":
            code = datacli.cmd_delete(client, ref, words["KEY"])
        elif cmd == "list":
            return datacli.cmd_list(client, ref)
        elif cmd == "export":
            return datacli.cmd_export(client, ref)
        else:
            code = datacli.cmd_import(client, ref, words["FILE"], args.dry_run)
        if not wait or code != datacli.EXIT_OK:
            return code
        session.written = True
        from mozagent.cli import fleet as fleet_cli

        version = fleet_cli.layer_version(session, ref.path)
        app = None if is_global else words["APP"]
        return fleet_cli.wait_for_data(session, app, node, version, sys.stdout)

    changes = cmd in ("set", "delete", "import") and not getattr(args, "dry_run", False)
    return _connected(args, timeout, changes, work, target)


def _words(args: argparse.Namespace, command: str, names: Sequence[str]) -> list[str]:
    if len(args.words) != len(names):
        raise _Usage(f"{command} takes {' '.join(names)} (got {len(args.words)} arguments)")
    return list(args.words)


def cmd_fleet(args: argparse.Namespace) -> int:
    from mozagent.cli import fleet as fleet_cli

    (app,) = _words(args, "fleet", ["APP"])
    _check("app", app)
    timeout = _timeout(args, False)
    return _connected(args, timeout, False, lambda s: fleet_cli.cmd_fleet(s, app, args.json))


def cmd_deploy(args: argparse.Namespace) -> int:
    from mozagent.cli import fleet as fleet_cli
    from mozagent.desired.convergence import check_release
    from mozagent.desired.release import InvalidRelease

    app, ref = _words(args, "deploy", ["APP", "REF"])
    _check("app", app)
    try:
        check_release(ref, args.source, args.install_script)
    except InvalidRelease as exc:
        raise _Usage(str(exc)) from None
    if args.node is not None:
        _check("node", args.node)
    wait = getattr(args, "wait", False)
    timeout = _timeout(args, wait)

    def work(session: fleetcli.Session) -> int:
        return fleet_cli.cmd_deploy(
            session, app, ref, args.source, args.install_script, args.node, wait
        )

    return _connected(args, timeout, True, work)


def cmd_order(args: argparse.Namespace) -> int:
    """``order status APP [SEQ]`` or ``order APP NAME``: the word ``status`` first
    means the status command; ``--app`` takes the place of APP in both."""
    from mozagent.cli import fleet as fleet_cli

    words = list(args.words)
    wait = getattr(args, "wait", False)
    status = bool(words) and words[0] == "status"
    if status:
        words = words[1:]
    if args.app is None:
        if not words:
            raise _Usage("order takes APP NAME, or status APP [SEQ]")
        app, words = words[0], words[1:]
    else:
        app = args.app
    _check("app", app)
    nodes = [_check("node", n) for n in args.nodes] if args.nodes else None
    timeout = _timeout(args, wait)
    if status:
        if len(words) > 1:
            raise _Usage(f"order status takes APP [SEQ] (got {' '.join(args.words)})")
        if nodes is not None:
            raise _Usage("--node is for creating an order, not for order status")
        seq = _check("order", words[0]) if words else None

        def show(session: fleetcli.Session) -> int:
            return fleet_cli.cmd_order_status(session, app, seq, wait, args.json)

        return _connected(args, timeout, False, show)
    if len(words) != 1:
        raise _Usage(f"order takes APP NAME (got {' '.join(args.words) or 'nothing'})")
    command = _check("order command", words[0])

    def create(session: fleetcli.Session) -> int:
        return fleet_cli.cmd_order(session, app, command, nodes, wait, args.json)

    return _connected(args, timeout, True, create)


def _split_words(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    # argparse stops filling a positional list at the first option, so
    # `data import APP --node N FILE` would leave FILE over: put such words back.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "words") or any(e.startswith("-") and e != "-" for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.words = [*args.words, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _split_words(parser, argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command != "daemon":
        # `mozagent status | head -3`: die quietly like other Unix tools.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        if args.command == "daemon":
            return cmd_daemon(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "apply":
            return cmd_apply(args)
        if args.command == "fleet":
            return cmd_fleet(args)
        if args.command == "deploy":
            return cmd_deploy(args)
        if args.command == "order":
            return cmd_order(args)
        return cmd_data(args)
    except (ConfigError, _Usage) as exc:
        return _fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
