"""The ``mozagent`` command line: ``main`` and which module runs each command.

One concern a file: ``parser`` (every command's words, options and help),
``local`` (``daemon``, ``status``, ``apply``: this host), ``session`` (one
command's ZooKeeper session and time budget), ``data`` (``data …``),
``fleet`` (``fleet``, ``deploy``, ``order`` and every ``--wait``) and
``fleetviews`` (how those show). A new command is its words in ``parser``,
a ``cmd_<name>(args)`` in the module of its concern, and one line in
``_command``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from mozagent.cli.parser import Usage, build_parser, fail, parse_args
from mozagent.config import ConfigError
from mozagent.report.status import EXIT_USAGE

Command = Callable[[argparse.Namespace], int]


def _command(name: str) -> Command:
    """A command's module is imported when it runs, not before: ``status``
    and ``apply`` must stay quick and work where the ZooKeeper client or
    logging is what is broken."""
    if name in ("daemon", "status", "apply"):
        from mozagent.cli import local

        return {
            "daemon": local.cmd_daemon,
            "status": local.cmd_status,
            "apply": local.cmd_apply,
        }[name]
    if name == "data":
        from mozagent.cli import data

        return data.cmd_data
    if name == "acl":
        from mozagent.cli import acl

        return acl.cmd_acl
    if name == "audit":
        from mozagent.cli import audit

        return audit.cmd_audit
    from mozagent.cli import fleet

    return {
        "fleet": fleet.cmd_fleet,
        "deploy": fleet.cmd_deploy,
        "order": fleet.cmd_order,
    }[name]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return _command(args.command)(args)
    except (ConfigError, Usage) as exc:
        return fail(str(exc))
    except BrokenPipeError:
        # `mozagent status | head -3`: end quietly like other Unix tools. Not by
        # restoring SIGPIPE's default: that would also kill the command on a
        # socket ZooKeeper closed (and the process that called main()).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit's flush must not fail again
        return 141
