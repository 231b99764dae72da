"""The words of the ``mozagent`` command: every command's options, arguments
and help, and how bad words are answered (one line, exit 2).

Options go anywhere: ``mozagent --config X status`` and ``mozagent data
--zookeeper H set …`` work as well as options after the last word, because a
person debugging a host types them where they think of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from mozagent import __version__
from mozagent.config import DEFAULT_CONFIG_PATH, Config, config_path, load_config
from mozagent.report.status import EXIT_USAGE

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
EPILOG_ACL = """A policy file (YAML) names identities per role:

  admins: ["digest:root:HASH"]
  apps:
    shop:
      deployers: ["digest:alice:HASH"]
      operators: ["digest:bob:HASH", "x509:CN=ops1"]
      agents: ["x509:CN=shop-agent"]

`mozagent acl id CREDENTIALS_FILE` prints a digest identity; `acl table`
what each role may do. apply must run as one of the policy's admins.
"""

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
        # Every command that waits is one that changes something: it says why.
        p.add_argument(
            "--reason",
            default=S,
            help="why, for the audit trail (`mozagent audit`); the policy can require it",
        )
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
            "--secret",
            dest="is_secret",
            action="store_true",
            default=S,
            help="work on APP's secrets: only its agents and admins read them",
        )
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

    _local_parsers(sub, config)
    _data_parsers(sub)
    _fleet_parsers(sub)
    _security_parsers(sub)
    return parser


def _local_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
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


def _data_parsers(sub: Any) -> None:
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


ACL_HELP = {
    "apply": "store a policy and make every znode's ACL its: apply FILE [--dry-run]",
    "check": "list every znode whose ACL is not the policy's (exit 1): check [FILE]",
    "id": "print the identity a credentials file gives, for the policy: id FILE",
    "table": "print who may read, write, create and delete what",
}


def _security_parsers(sub: Any) -> None:
    target = _options("config", "zookeeper")
    acl = sub.add_parser(
        "acl",
        help="who may change what: apply and check the ACL policy",
        epilog=EPILOG_ACL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[target],
    )
    acl_sub = acl.add_subparsers(dest="acl_command", metavar="ACTION", required=True)
    for name, help_text in ACL_HELP.items():
        p = acl_sub.add_parser(name, help=help_text, description=help_text, parents=[target])
        p.add_argument("words", nargs="*", metavar="ARG")
        if name == "apply":
            p.add_argument("--dry-run", action="store_true", help="say what would change")
    p = sub.add_parser(
        "audit",
        help="who changed what, when and why: audit [APP] (no APP: the global layer)",
        description="The audit trail of APP (deploys, canaries, orders, data changes), "
        "oldest first; without APP, the global layer's.",
        parents=[target],
    )
    p.add_argument("words", nargs="*", metavar="APP")
    p.add_argument("--since", help="only entries since: 30m, 12h, 7d, or a date (UTC)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--prune",
        metavar="AGE",
        help="remove the entries older than AGE (90d, or a date), admins only; "
        "the prune is itself an entry",
    )
    p.add_argument("--all", action="store_true", help="with --prune: every app's and the global")
    p.add_argument("--dry-run", action="store_true", help="with --prune: say what would go")
    p.add_argument("--reason", help="why, for the audit trail; the policy can require it")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    # argparse stops filling a positional list at the first option, so
    # `data import APP --node N FILE` would leave FILE over: put such words back.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "words") or any(e.startswith("-") and e != "-" for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.words = [*args.words, *extra]
    return args


class Usage(Exception):
    """Bad words or options: exit 2, one line, before connecting."""


def fail(message: str, code: int = EXIT_USAGE) -> int:
    """Say what went wrong the way every command does, and give its exit code."""
    print(f"mozagent: error: {message}", file=sys.stderr)
    return code


def check_word(kind: str, value: str) -> str:
    """Names and releases from the command line, refused with the validators' words."""
    from mozagent.desired import convergence
    from mozagent.desired.keys import InvalidValue, check_name

    try:
        if kind == "order":
            return convergence.order_name(value)
        return check_name(kind, value)
    except InvalidValue as exc:
        raise Usage(str(exc)) from None


def config_of(args: argparse.Namespace, required: bool = True) -> Config | None:
    """The config; with ``required=False``, None only when no file was asked for
    and the default one does not exist. A file that exists but is invalid is
    always an error: silently using defaults would write somewhere else."""
    explicit = getattr(args, "config", None)
    path = config_path(explicit)
    defaulted = not explicit and not os.environ.get("MOZAGENT_CONFIG")
    if not required and defaulted and not os.path.exists(path):
        return None
    return load_config(path)
