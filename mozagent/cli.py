"""The ``mozagent`` command line: daemon, status, and operators' data commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mozagent import __version__
from mozagent.config import DEFAULT_ROOT, Config, ConfigError, config_path, load_config
from mozagent.status import EXIT_USAGE, exit_code, format_status, load_status

EPILOG_STATUS = """exit codes: 0 healthy; 1 last apply failed; 2 bad usage or config;
3 current errors (bad data, ZooKeeper unreachable, agent not running); 4 no status yet"""


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="config file (default: $MOZAGENT_CONFIG or /etc/mozagent/mozagent.yaml)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mozagent",
        description="Configuration agent: ZooKeeper app data -> Hiera/facts -> puppet apply.",
    )
    parser.add_argument("--version", action="version", version=f"mozagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    daemon = sub.add_parser("daemon", help="run the agent (until SIGTERM/SIGINT)")
    _add_config(daemon)
    daemon.add_argument(
        "--once",
        action="store_true",
        help="one full cycle (read ZooKeeper, render, apply), then exit",
    )

    status = sub.add_parser(
        "status", help="what the agent is doing and whether it is healthy", epilog=EPILOG_STATUS
    )
    _add_config(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--state-dir", help="read the status from this state dir instead")

    data = sub.add_parser("data", help="read and write app data in ZooKeeper")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def layer_args(p: argparse.ArgumentParser) -> None:
        _add_config(p)
        p.add_argument(
            "--zookeeper",
            metavar="HOSTS",
            help="ZooKeeper hosts (default: zookeeper.hosts from the config)",
        )
        p.add_argument("--root", help=f"znode root (default: the config's, or {DEFAULT_ROOT})")
        p.add_argument(
            "--timeout", type=float, default=10.0, help="seconds to wait for ZooKeeper (default 10)"
        )
        group = p.add_mutually_exclusive_group()
        group.add_argument("--node", help="work on this node's layer of APP")
        group.add_argument(
            "--global",
            dest="is_global",
            action="store_true",
            help="work on the global layer (give no APP)",
        )

    specs = {
        "set": (
            "set a key: set APP KEY VALUE (VALUE is YAML or JSON; '-' reads stdin)",
            ["words"],
            True,
        ),
        "get": ("print a key's value: get APP KEY", ["words"], False),
        "delete": ("delete a key: delete APP KEY", ["words"], False),
        "list": ("list a layer's keys: list APP", ["words"], False),
        "export": ("print a layer as YAML: export APP", ["words"], False),
        "import": (
            "replace a layer's keys from a YAML file, in one transaction: import APP FILE",
            ["words"],
            True,
        ),
    }
    for name, (help_text, _, dry) in specs.items():
        p = data_sub.add_parser(name, help=help_text, description=help_text)
        layer_args(p)
        p.add_argument("words", nargs="*", metavar="ARG")
        if dry:
            p.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
        if name == "set":
            p.add_argument(
                "--string",
                action="store_true",
                help="store VALUE as a literal string, not parsed as YAML",
            )
    return parser


# Positional arguments each data action takes after APP (APP is absent with --global).
DATA_ARITY = {
    "set": ["KEY", "VALUE"],
    "get": ["KEY"],
    "delete": ["KEY"],
    "list": [],
    "export": [],
    "import": ["FILE"],
}


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"mozagent: error: {message}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace, required: bool = True) -> Config | None:
    path = config_path(args.config)
    try:
        return load_config(path)
    except ConfigError:
        if required or args.config:
            raise
        return None


def cmd_daemon(args: argparse.Namespace) -> int:
    from mozagent.agent import Agent
    from mozagent.logs import setup_logging

    cfg = _load(args)
    assert cfg is not None
    setup_logging(cfg.log_level, cfg.log_format)
    agent = Agent(cfg, mode="once" if args.once else "daemon")
    if not args.once:
        return agent.run_daemon()
    if not agent.acquire_lock(wait=False):
        from mozagent.fileio import lock_holder

        return _fail(
            f"another mozagent (pid {lock_holder(agent.lock_file)}) is using {cfg.state_dir}; "
            "ask the daemon for a run with SIGHUP (systemctl reload mozagent)",
            1,
        )
    return agent.run_once()


def cmd_status(args: argparse.Namespace) -> int:
    import os

    if args.state_dir:
        path = os.path.join(args.state_dir, "status.json")
    else:
        cfg = _load(args)
        assert cfg is not None
        path = cfg.status_file
    doc = load_status(path)
    if doc is None:
        if args.json:
            print(json.dumps({"error": f"no status at {path}"}))
        else:
            print(f"mozagent: no status at {path}: the agent has not run with this state dir")
        return exit_code(None)
    if args.json:
        from mozagent.status import all_errors, pid_alive

        doc = dict(doc)
        doc["running"] = pid_alive((doc.get("agent") or {}).get("pid"))
        doc["all_errors"] = all_errors(doc)
        doc["exit_code"] = exit_code(doc)
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(format_status(doc))
    return exit_code(doc)


def cmd_data(args: argparse.Namespace) -> int:
    from mozagent import datacli
    from mozagent.keys import InvalidValue, check_name

    names = DATA_ARITY[args.data_command]
    expected = names if args.is_global else ["APP", *names]
    if len(args.words) != len(expected):
        usage = " ".join(expected) + (" --global" if args.is_global else "")
        return _fail(f"data {args.data_command} takes {usage} (got {len(args.words)} arguments)")
    words = dict(zip(expected, args.words, strict=False))
    try:
        if "APP" in words:
            check_name("app", words["APP"])
    except InvalidValue as exc:
        return _fail(str(exc))

    cfg = _load(args, required=False)
    hosts = args.zookeeper or (cfg.zookeeper.hosts if cfg and cfg.zookeeper else None)
    if not hosts:
        return _fail(
            f"no ZooKeeper hosts: pass --zookeeper HOSTS or set zookeeper.hosts in "
            f"{config_path(args.config)}"
        )
    root = args.root or (cfg.zookeeper.root if cfg and cfg.zookeeper else DEFAULT_ROOT)

    try:
        ref = datacli.layer_ref(root, words.get("APP"), args.node, args.is_global)
        value = None
        if args.data_command == "set":
            datacli._check_key(words["KEY"])
            text = sys.stdin.read() if words["VALUE"] == "-" else words["VALUE"]
            value = datacli.parse_cli_value(text, args.string, words["KEY"])
        elif args.data_command == "import":
            datacli.load_import_file(words["FILE"]) if words["FILE"] != "-" else None
        elif "KEY" in words:
            datacli._check_key(words["KEY"])
    except datacli.DataError as exc:
        return _fail(str(exc), exc.code)

    from kazoo.client import KazooClient
    from kazoo.exceptions import KazooException
    from kazoo.handlers.threading import KazooTimeoutError

    client = KazooClient(hosts=hosts, timeout=args.timeout)
    try:
        client.start(timeout=args.timeout)
    except KazooTimeoutError:
        return _fail(f"cannot connect to ZooKeeper at {hosts} within {args.timeout:g} s", 1)
    try:
        cmd = args.data_command
        if cmd == "set":
            return datacli.cmd_set(client, ref, words["KEY"], value, args.dry_run)
        if cmd == "get":
            return datacli.cmd_get(client, ref, words["KEY"])
        if cmd == "delete":
            return datacli.cmd_delete(client, ref, words["KEY"])
        if cmd == "list":
            return datacli.cmd_list(client, ref)
        if cmd == "export":
            return datacli.cmd_export(client, ref)
        return datacli.cmd_import(client, ref, words["FILE"], args.dry_run)
    except datacli.DataError as exc:
        return _fail(str(exc), exc.code)
    except KazooException as exc:
        return _fail(f"ZooKeeper refused the request: {type(exc).__name__} {exc}".strip(), 1)
    finally:
        client.stop()
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # argparse stops filling a positional list at the first option, so
    # `data import APP --node N FILE` would leave FILE over: put such words back.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "data" or any(e.startswith("-") and e != "-" for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.words = [*args.words, *extra]
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "daemon":
            return cmd_daemon(args)
        if args.command == "status":
            return cmd_status(args)
        return cmd_data(args)
    except ConfigError as exc:
        return _fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
