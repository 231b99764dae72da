"""Orders: a command an operator pushes to every host of an app (issue 9).

They replace Mozilla's Shove, and the rules here exist because of how Shove
failed. Shove ran whatever name arrived if the project's procfile had it, and
consumed orders without acknowledgement, so a crash lost them and nobody knew.
Here an order is a sequential znode that stays in ZooKeeper; each host decides
for itself, from the order and its own durable record, whether to run it, and
says what it did in a result. Nothing from the order is ever executed: it only
*names* a line of the app's own ``bin/commands.procfile``.

Pure: parsing and deciding only; running and recording live in
``mozagent.apply.orders``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from mozagent.desired.fleet import ORDER_PREFIX
from mozagent.desired.keys import NAME_RE, InvalidValue, check_name, parse_value
from mozagent.desired.schema import SCHEMA_KEY, obeyable, schema_of

ORDER_NAME_RE = re.compile(re.escape(ORDER_PREFIX) + r"([0-9]{1,19})")
# A result is a znode every host writes and the operator reads in a terminal:
# the end of the output (where errors are) is enough, and 8 KiB per host keeps
# a 100-host order well under what a CLI wants to fetch.
MAX_OUTPUT_BYTES = 8 * 1024
# A procfile is a handful of lines; a bound keeps a hostile release (a
# multi-gigabyte file, a FIFO) from costing the agent its memory.
MAX_PROCFILE_BYTES = 64 * 1024
MAX_BY_CHARS = 256
# A command name is a word an operator types: the bound keeps status, results
# and the CLI's tables readable whatever a release or an order carries.
MAX_COMMAND_NAME = 64

STATES = ("running", "done", "failed", "refused", "expired")
FINAL_STATES = frozenset(STATES) - {"running"}
ORDER_FIELDS = ("command", "by", "at", "nodes", SCHEMA_KEY)
# An order is a command (desired/schema.py): a newer schema is refused. A
# result is a report: readers take what they know of any schema.
ORDER_SCHEMA = 1
RESULT_SCHEMA = 1


class InvalidOrder(ValueError):
    """An order znode that cannot be used; str() says where and what is wrong."""


@dataclass(frozen=True)
class Order:
    """One order as this host sees it.

    ``created`` is the znode's ctime from the server, not the operator's ``at``:
    ages are judged on a clock no operator's laptop can skew or fake.
    ``nodes`` None means every host of the app.
    """

    name: str
    command: str
    by: str
    at: float
    nodes: tuple[str, ...] | None
    created: float


def order_doc(command: str, by: str, at: float, nodes: list[str] | None) -> dict[str, Any]:
    """An order znode's content as ``mozagent order`` writes it (schema 1 is
    left implicit: agents from before schemas refuse a key they do not know)."""
    return {"command": command, "by": by, "at": at, "nodes": nodes}


def order_seq(name: str) -> int:
    """The sequence number: orders run in the order ZooKeeper created them."""
    match = ORDER_NAME_RE.fullmatch(name)
    if match is None:
        raise InvalidOrder(
            f"{name!r} is not an order name: it must be {ORDER_PREFIX}<digits> "
            "(a sequential znode made by `mozagent order`)"
        )
    return int(match.group(1))


def _number(value: Any) -> bool:
    # bool is an int in Python, but `"at": true` is an operator's mistake.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_order(name: str, raw: bytes | None, created: float, where: str) -> Order:
    """An order from its znode, or InvalidOrder naming ``where`` and the fault.

    Unknown fields are refused rather than ignored: ``"node": ["web1"]`` (a
    typo of ``nodes``) must not quietly become an order for every host.
    ``by`` and ``at`` may be left out so that an order can be made by hand with
    zkCli.sh; ``at`` then defaults to the znode's ctime.
    """
    order_seq(name)
    try:
        doc = parse_value(raw, where)
    except InvalidValue as exc:
        raise InvalidOrder(str(exc)) from None
    if not isinstance(doc, dict):
        kind = "empty" if doc is None else f"a {type(doc).__name__}"
        raise InvalidOrder(
            f'{where}: an order must be a JSON object like {{"command": "<name>"}}, not {kind}'
        )
    unknown = sorted(str(k) for k in doc if k not in ORDER_FIELDS)
    if unknown:
        raise InvalidOrder(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"an order has only {', '.join(ORDER_FIELDS)}"
        )
    try:
        obeyable(doc, where, ORDER_SCHEMA)
    except InvalidValue as exc:
        raise InvalidOrder(str(exc)) from None
    command = doc.get("command")
    if not isinstance(command, str) or not command:
        raise InvalidOrder(f"{where}: 'command' must be the name of a command, got {command!r}")
    if not NAME_RE.fullmatch(command) or len(command) > MAX_COMMAND_NAME:
        raise InvalidOrder(
            f"{where}: command {command!r:.80} is not a command name "
            f"(letters, digits, '.', '_' and '-' only, at most {MAX_COMMAND_NAME})"
        )
    by = doc.get("by", "")
    if not isinstance(by, str) or len(by) > MAX_BY_CHARS:
        raise InvalidOrder(f"{where}: 'by' must be a string like user@host, got {by!r:.60}")
    at = doc.get("at", created)
    if not _number(at):
        raise InvalidOrder(f"{where}: 'at' must be a time in epoch seconds, got {at!r:.60}")
    return Order(name, command, by, float(at), _parse_nodes(doc.get("nodes"), where), created)


def _parse_nodes(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidOrder(
            f"{where}: 'nodes' must be a list of node names, or null for every host, "
            f"got {value!r:.60}"
        )
    if not value:
        raise InvalidOrder(
            f"{where}: 'nodes' is an empty list, so no host would run it; "
            "leave it out (or null) for every host"
        )
    for node in value:
        if not isinstance(node, str):
            raise InvalidOrder(f"{where}: 'nodes' holds {node!r:.60}, not a node name")
        try:
            check_name("node", node)
        except InvalidValue as exc:
            raise InvalidOrder(f"{where}: 'nodes': {exc}") from None
    return tuple(value)


@dataclass(frozen=True)
class Procfile:
    """The commands an app allows, and why any line of it is not usable.

    ``unusable`` maps a name to the reason it cannot run (declared twice, or
    with no command line), so an order naming it is refused with that reason
    rather than a puzzling "no such command".
    """

    commands: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unusable: dict[str, str] = field(default_factory=dict)

    def why_not(self, name: str, where: str) -> str | None:
        """None when ``name`` can run; else what to tell the operator."""
        if name in self.commands:
            return None
        if name in self.unusable:
            return self.unusable[name]
        known = ", ".join(sorted(self.commands)) or "none"
        return f"{where} has no command {name!r} (it has: {known})"


PROCFILE_LINE_RE = re.compile(r"([^:\s]*)\s*:(.*)")


def parse_procfile(text: str, where: str) -> Procfile:
    """Procfile lines ``name: command``, as Heroku and Shove read them.

    A bad line is reported with its number and skipped, so one typo does not
    take every other command away (Shove's behaviour). A name declared twice
    is unusable: running either line could be the wrong one.
    """
    commands: dict[str, str] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
    unusable: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        at = f"{where}:{number}"
        match = PROCFILE_LINE_RE.fullmatch(stripped)
        if match is None:
            problems.append(f"{at}: not a 'name: command' line: {stripped!r:.80}")
            continue
        name, command = match.group(1), match.group(2).strip()
        if not NAME_RE.fullmatch(name) or len(name) > MAX_COMMAND_NAME:
            problems.append(
                f"{at}: {name!r:.40} is not a command name (letters, digits, '.', '_' and '-', "
                f"at most {MAX_COMMAND_NAME})"
            )
            continue
        if name in first_line:
            why = (
                f"{at}: command {name!r} is declared again (first at line {first_line[name]}); "
                "neither line is used"
            )
            problems.append(why)
            unusable[name] = why
            commands.pop(name, None)
            continue
        first_line[name] = number
        if not command or "\0" in command:
            # A NUL cannot reach a shell (exec refuses it): the line is unusable,
            # said here rather than found when an order tries to start it.
            why = f"{at}: command {name!r} " + (
                "contains a NUL byte" if command else "has no command line"
            )
            problems.append(why)
            unusable[name] = why
            continue
        commands[name] = command
    return Procfile(commands, problems, unusable)


def expiry(created: float, now: float, joined: float, max_age: float) -> str | None:
    """Why an order created at ``created`` is too old for this host, or None.

    An order made before the host first joined is history, not a request to
    it: a new host must not replay every migration ever ordered. One older than
    ``max_age`` was meant for hosts up at the time; running it hours late, after
    the operator has moved on, surprises more than it helps.
    """
    if created < joined:
        return (
            f"the order was created before this host first started (by {joined - created:.0f} s); "
            "a new host does not replay old orders"
        )
    age = now - created
    if age > max_age:
        return (
            f"the order is {age:.0f} s old, over max_age ({max_age:g} s), "
            "when this host first saw it"
        )
    return None


def targets(order: Order, node: str) -> bool:
    return order.nodes is None or node in order.nodes


def decide(order: Order, node: str, now: float, joined: float, max_age: float) -> str:
    """ "run", "expired", or "skip" (not for this node: no result at all)."""
    if not targets(order, node):
        return "skip"
    if expiry(order.created, now, joined, max_age) is not None:
        return "expired"
    return "run"


def bound_output(text: str, trimmed: bool = False, limit: int = MAX_OUTPUT_BYTES) -> str:
    """The end of ``text`` in at most ``limit`` UTF-8 bytes, saying so when cut.

    ``trimmed`` says the text is already the end of a longer output (the
    process runner keeps only a tail), so the notice is due even if it fits.
    """
    data = text.encode("utf-8")
    if len(data) <= limit and not trimmed:
        return text
    notice = "[mozagent: output trimmed: only its end is kept]\n"
    room = limit - len(notice.encode("utf-8"))
    tail = data[-room:] if len(data) > room else data
    # Cutting may split a character: drop its continuation bytes, not garble it.
    return notice + tail.decode("utf-8", errors="ignore")


@dataclass
class OrderResult:
    """What one host did with one order: the document published under results/."""

    node: str
    order: str
    command: str
    state: str
    returncode: int | None = None
    output: str = ""
    started: float | None = None
    ended: float | None = None
    message: str = ""

    def to_doc(self) -> dict[str, Any]:
        return {
            SCHEMA_KEY: RESULT_SCHEMA,
            "node": self.node,
            "order": self.order,
            "command": self.command,
            "state": self.state,
            "returncode": self.returncode,
            "output": self.output,
            "started": self.started,
            "ended": self.ended,
            "message": self.message,
        }

    @staticmethod
    def parse(doc: Any) -> OrderResult | None:
        """None for anything that is not a whole result: a damaged record must
        be noticed by the caller, not crash it or pass as a real outcome.
        Fields it does not know (a newer agent's) are ignored."""
        if not isinstance(doc, dict):
            return None
        try:
            schema_of(doc, "result")
        except InvalidValue:
            return None
        strings = ("node", "order", "command", "state", "output", "message")
        if not all(isinstance(doc.get(k), str) for k in strings):
            return None
        if doc["state"] not in STATES or ORDER_NAME_RE.fullmatch(doc["order"]) is None:
            return None
        code = doc.get("returncode")
        if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
            return None
        times = [doc.get("started"), doc.get("ended")]
        if not all(t is None or _number(t) for t in times):
            return None
        return OrderResult(
            doc["node"],
            doc["order"],
            doc["command"],
            doc["state"],
            code,
            doc["output"],
            None if times[0] is None else float(times[0]),
            None if times[1] is None else float(times[1]),
            doc["message"],
        )
