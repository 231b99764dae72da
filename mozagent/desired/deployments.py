"""Heat SoftwareDeployments: what the metadata asks for, validated, and kept apart
from the credentials that come with it.

Pure: metadata (JSON text decoded with ``loads_bounded``) in, ``Deployment``
objects and problems out. Heat metadata is untrusted input like ZooKeeper data:
anything malformed becomes a problem naming the entry, never an exception, and
an entry that can still be signalled is kept so that Heat hears it FAILED
instead of waiting for a timeout. Bounds (nesting, size, output names) are
checked per entry, so one bad deployment fails alone and the others run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from mozagent.desired.keys import MAX_DEPTH
from mozagent.desired.layers import Problem

# Inputs Heat adds that carry credentials or where to signal: they reach the
# signal sender (through the 0600 state) and nothing else: no facts, no Hiera,
# no script environment, no log, no status.
SECRET_INPUTS = frozenset(
    {
        "deploy_signal_id",
        "deploy_auth_url",
        "deploy_username",
        "deploy_user_id",
        "deploy_password",
        "deploy_project_id",
        "deploy_region_name",
        "deploy_queue_id",
    }
)
TRANSPORTS = ("CFN_SIGNAL", "TEMP_URL_SIGNAL", "HEAT_SIGNAL", "ZAQAR_SIGNAL", "NO_SIGNAL")
INPUT_TYPES = ("String", "Number", "CommaDelimitedList", "Json", "Boolean")
MAX_DEPLOYMENTS = 1000
# One entry's JSON: Heat's API takes request bodies of at most 1 MiB, so no
# config and inputs Heat accepted come near this; above it, the entry is a bug
# or an attack, and it fails alone.
MAX_DEPLOYMENT_BYTES = 2 * 1024 * 1024
# Values nested deeper than this in a whole document are cut while decoding
# (replaced by TOO_DEEP): far below Python's recursion limit, so neither the
# decoder nor anything that walks the document later can overflow the stack,
# and far above an entry's own bound (MAX_DEPTH levels below its fields), so a
# cut part always makes its entry fail that bound.
DOCUMENT_DEPTH = 128
TOO_DEEP = "\x00mozagent: nested too deep"
_TOO_DEEP_JSON = json.dumps(TOO_DEEP)
# Where the nesting can change: a bracket, or the quote that opens a string.
_SPECIAL = re.compile(r'["\[\]{}]')
# The rest of a string after its opening quote, up to (not including) the
# closing quote or the end of the text. Possessive: it never gives back, so a
# string that never closes costs one pass, not one pass per later quote.
_STRING_REST = re.compile(r'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
# heat-config reads output NAME from the file ``<heat_outputs_path>.NAME``.
_OUTPUT_NAME = re.compile(r"[^/\x00]{1,200}")
SHORT = 64
_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_URL_SECRET = re.compile(r"(?P<keep>(?:https?://|/)[^\s?'\"]*)\?[^\s'\")]*")
_AUTH = re.compile(r"(?i)(password|token|secret|signature)([=:]\s*)[^\s&'\",)]+")


def safe_id(dep_id: str) -> str:
    """Deployment ids become file names: anything else is hashed into one."""
    if _ID.fullmatch(dep_id) and dep_id not in (".", ".."):
        return dep_id
    return "id-" + hashlib.sha256(dep_id.encode()).hexdigest()[:32]


def short(text: str, limit: int = SHORT) -> str:
    """An id or name fit for a line of status: a 5,000-character id stays the
    id everywhere else (records, signals); only its display is trimmed."""
    return text if len(text) <= limit else text[:limit] + "…"


def loads_bounded(text: str | bytes, max_depth: int = DOCUMENT_DEPTH) -> Any:
    """JSON in which every value nested deeper than ``max_depth`` is replaced by
    ``TOO_DEEP``; ValueError when it is not JSON, never RecursionError.

    Python's decoder recurses once per level: a document with one input nested
    1,000 deep would fail as a whole. Cutting the deep parts first keeps the
    rest of the document, so the entry holding them fails alone."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if text.count("[") + text.count("{") > max_depth:
        text = _cut_deep(text, max_depth)
    try:
        return json.loads(text)
    except RecursionError:  # brackets that never close: nothing was cut
        raise ValueError(f"nested deeper than {max_depth} levels") from None


def _cut_deep(text: str, max_depth: int) -> str:
    """``text`` with every bracketed part that opens below ``max_depth`` levels
    replaced by ``TOO_DEEP``'s JSON. One pass: each character is looked at once
    (a string is skipped by one regex match, escapes included), so the time is
    linear in the length whatever the text holds. A string that never closes
    ends the scan: the rest is inside it, the text is not JSON, and the
    decoder says so."""
    pieces: list[str] = []
    depth, start, kept, pos = 0, -1, 0, 0
    while (match := _SPECIAL.search(text, pos)) is not None:
        char, pos = match.group(), match.end()
        if char == '"':
            pos = _STRING_REST.match(text, pos).end()  # type: ignore[union-attr]
            if pos == len(text) or text[pos] != '"':
                break  # unterminated (or ends in a lone backslash)
            pos += 1
        elif char in "[{":
            depth += 1
            if depth == max_depth + 1:
                start = match.start()
        else:
            if depth == max_depth + 1 and start >= 0:
                pieces += (text[kept:start], _TOO_DEEP_JSON)
                kept, start = pos, -1
            depth -= 1
    return "".join(pieces) + text[kept:] if pieces else text


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests more than ``limit`` lists and mappings (or holds a
    part cut as too deep while decoding). Iterative: no recursion to overflow."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if item == TOO_DEEP:
            return True
        if not isinstance(item, (dict, list)):
            continue
        if level > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list, str)):
                stack.append((child, level + 1))
    return False


def redact(text: str) -> str:
    """An error message fit for logs and status: a pre-signed URL's query (its
    signature) and anything that looks like a password or token are cut out.
    Library errors quote the URL they failed on, credentials included."""
    text = _URL_SECRET.sub(lambda m: m.group("keep") + "?[redacted]", text)
    return _AUTH.sub(lambda m: m.group(1) + m.group(2) + "[redacted]", text)


@dataclass(frozen=True)
class SignalTarget:
    """Where and how to report one deployment. Holds credentials: never log it."""

    transport: str
    url: str | None = None
    verb: str = "POST"
    auth_url: str | None = None
    username: str | None = None
    user_id: str | None = None
    password: str | None = None
    project_id: str | None = None
    region_name: str | None = None
    queue_id: str | None = None
    stack_id: str | None = None  # "name/id"
    resource_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SignalTarget:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass(frozen=True)
class Deployment:
    id: str
    name: str
    group: str
    config: Any
    action: str
    inputs: dict[str, Any]  # public inputs, typed
    outputs: tuple[dict[str, Any], ...]
    options: dict[str, Any]
    target: SignalTarget
    creation_time: str | None = None
    # Set when the entry is malformed but can still be signalled as FAILED.
    invalid: str | None = None

    def hook_input(self) -> dict[str, Any]:
        """The JSON a heat-config hook reads on stdin, without the credentials."""
        return {
            "id": self.id,
            "name": self.name,
            "group": self.group,
            "config": self.config,
            "creation_time": self.creation_time,
            "options": self.options,
            "outputs": list(self.outputs),
            "inputs": [{"name": k, "value": v} for k, v in self.inputs.items()],
        }

    @property
    def error_outputs(self) -> list[str]:
        return [o["name"] for o in self.outputs if o.get("error_output")]


def typed_value(kind: str, value: Any) -> Any:
    """A Heat input's value with its declared type, never a Python repr.

    Heat sends typed JSON most of the time, but strings for some types in some
    paths (a Number as "8", a list as "a,b"); both forms give the same value.
    """
    if kind == "Number" and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value else number
    if kind == "Boolean" and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "t", "yes", "y", "on", "1"):
            return True
        if lowered in ("false", "f", "no", "n", "off", "0", ""):
            return False
        return value
    if kind == "CommaDelimitedList" and isinstance(value, str):
        return [part.strip() for part in value.split(",")] if value else []
    if kind == "Json" and isinstance(value, str):
        try:
            return loads_bounded(value, MAX_DEPTH)
        except ValueError:
            return value
    return value


def _string(entry: dict[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return value if isinstance(value, str) and value else None


def _inputs(raw: Any, where: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Public inputs (typed), Heat's own deploy_* inputs, and what was wrong."""
    public: dict[str, Any] = {}
    heat: dict[str, Any] = {}
    wrong: list[str] = []
    if raw is None:
        return public, heat, wrong
    if not isinstance(raw, list):
        return public, heat, [f"{where}: inputs is not a list"]
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            wrong.append(f"{where}: input {i} has no name")
            continue
        name = item["name"]
        kind = item.get("type", "String")
        value = item.get("value", item.get("default"))
        if name in SECRET_INPUTS or name in ("deploy_signal_verb", "deploy_signal_transport"):
            heat[name] = value
            continue
        if kind not in INPUT_TYPES:
            wrong.append(f"{where}: input {short(name)!r} has unknown type {kind!r}")
        typed = typed_value(kind, value)
        if too_deep(typed):
            wrong.append(f"{where}: input {short(name)!r} is nested deeper than {MAX_DEPTH} levels")
            typed = None
        public[name] = typed
    return public, heat, wrong


def _bounds(entry: dict[str, Any], where: str) -> list[str]:
    """What makes one entry too big or too deep to run (its inputs are judged
    one by one in ``_inputs``)."""
    try:
        size = len(json.dumps(entry))
    except RecursionError:  # decoded without loads_bounded: refused all the same
        return [f"{where}: is nested too deep to be used"]
    if size > MAX_DEPLOYMENT_BYTES:
        return [
            f"{where}: is {size} bytes of JSON, over the "
            f"{MAX_DEPLOYMENT_BYTES // (1024 * 1024)} MiB limit for one deployment"
        ]
    return [
        f"{where}: {key} is nested deeper than {MAX_DEPTH} levels"
        for key in ("config", "options", "outputs")
        if too_deep(entry.get(key))
    ]


def _outputs(raw: Any, where: str) -> tuple[tuple[dict[str, Any], ...], list[str]]:
    """Named outputs whose names are plain file names: output NAME is read from
    ``<heat_outputs_path>.NAME``, and ``../x`` would read outside that directory."""
    outputs = raw or []
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        return (), [f"{where}: outputs is not a list of named outputs"]
    wrong = [
        f"{where}: output name {short(o['name'])!r} is not a plain file name "
        "(no '/', no NUL, 1 to 200 characters)"
        for o in outputs
        if not _OUTPUT_NAME.fullmatch(o["name"])
    ]
    return (() if wrong else tuple(outputs)), wrong


def parse_deployments(
    metadata: Any, where: str = "metadata"
) -> tuple[list[Deployment], list[Problem]]:
    """Every deployment Heat asks for, in list order; each id once."""
    problems: list[Problem] = []
    if not isinstance(metadata, dict):
        return [], [Problem(where, f"metadata is a {type(metadata).__name__}, not a mapping")]
    raw = metadata.get("deployments")
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], [Problem(f"{where}.deployments", "is not a list")]
    if len(raw) > MAX_DEPLOYMENTS:
        problems.append(
            Problem(
                f"{where}.deployments",
                f"{len(raw)} entries: only the first {MAX_DEPLOYMENTS} are used",
            )
        )
        raw = raw[:MAX_DEPLOYMENTS]
    out: list[Deployment] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        here = f"{where}.deployments[{i}]"
        if not isinstance(entry, dict):
            problems.append(Problem(here, f"is a {type(entry).__name__}, not a mapping"))
            continue
        dep_id = _string(entry, "id")
        if dep_id is None:
            problems.append(Problem(here, "has no id: it cannot be run or signalled"))
            continue
        here = f"{where}.deployments[{short(dep_id)}]"
        if dep_id in seen:
            problems.append(Problem(here, "duplicate id: only its first entry is used"))
            continue
        seen.add(dep_id)
        bounds = _bounds(entry, here)
        public, heat, wrong = _inputs(entry.get("inputs"), here)
        target = _target(heat, public)
        if bounds:
            # Kept only to be signalled FAILED: nothing of it is run or stored.
            entry = {"name": entry.get("name"), "group": entry.get("group"), "config": None}
            public = {k: v for k, v in public.items() if k.startswith("deploy_")}
            wrong = bounds + wrong
        name = _string(entry, "name") or dep_id
        group = _string(entry, "group")
        if group is None:
            wrong.append(f"{here}: has no group")
        if "config" not in entry:
            wrong.append(f"{here}: has no config")
        outputs, bad_outputs = _outputs(entry.get("outputs"), here)
        wrong += bad_outputs
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            wrong.append(f"{here}: options is not a mapping")
            options = {}
        if target.transport not in TRANSPORTS:
            wrong.append(f"{here}: unknown signal transport {target.transport!r}")
        action = public.get("deploy_action")
        out.append(
            Deployment(
                id=dep_id,
                name=name,
                group=group or "",
                config=entry.get("config"),
                action=action if isinstance(action, str) else "CREATE",
                inputs=public,
                outputs=outputs,
                options=options,
                target=target,
                creation_time=_string(entry, "creation_time"),
                invalid="; ".join(wrong) or None,
            )
        )
        for why in wrong:
            problems.append(Problem(here, why.removeprefix(f"{here}: ")))
    return out, problems


def _target(heat: dict[str, Any], public: dict[str, Any]) -> SignalTarget:
    def s(key: str) -> str | None:
        value = heat.get(key)
        return value if isinstance(value, str) and value else None

    transport = heat.get("deploy_signal_transport") or public.get("deploy_signal_transport")
    if not isinstance(transport, str) or not transport:
        # Heat always says; without it a URL means CFN, nothing means no signal.
        transport = "CFN_SIGNAL" if s("deploy_signal_id") else "NO_SIGNAL"
    verb = s("deploy_signal_verb") or ("PUT" if transport == "TEMP_URL_SIGNAL" else "POST")
    stack = public.get("deploy_stack_id")
    resource = public.get("deploy_resource_name")
    return SignalTarget(
        transport=transport,
        url=s("deploy_signal_id"),
        verb=verb.upper(),
        auth_url=s("deploy_auth_url"),
        username=s("deploy_username"),
        user_id=s("deploy_user_id"),
        password=s("deploy_password"),
        project_id=s("deploy_project_id"),
        region_name=s("deploy_region_name"),
        queue_id=s("deploy_queue_id"),
        stack_id=stack if isinstance(stack, str) else None,
        resource_name=resource if isinstance(resource, str) else None,
    )
