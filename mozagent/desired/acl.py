"""Who may do what where under the root: the role model, as data.

A write under the root is code running on hosts (a release names the git URL
every host installs from, an order names a command every host runs), so the
tree is guarded by ZooKeeper itself, znode by znode. ZooKeeper never inherits
an ACL: whoever creates a znode sets its ACL, so every creator (the CLI, the
agent, ``mozagent acl``) asks ``acl_for`` and nothing relies on a parent's.

The policy names identities per role and app; it is stored at
``<root>/acl`` so that every creator reads the same one. With no policy the
tree is open, as it was before roles existed. The table in the README is
``TABLE`` below, printed; a test holds the two together and checks every cell
on a real server.

Two ZooKeeper rules shape the table. ``c`` and ``d`` are permissions on the
*parent*, for a child of any name: so the agents of an app, who must create
their presence and their results, may create (and, for the predecessor rule
and order retention, delete) any host's; and fixed children (``data``,
``hosts``, ``orders`` ...) are created by ``mozagent acl`` with the app, so
that ``c`` on the app lets a deployer add its release and nothing that matters.

Pure: parsing and deciding; ``mozagent.zkacl`` talks to ZooKeeper.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mozagent.desired.keys import InvalidValue, check_name
from mozagent.desired.schema import SCHEMA_KEY, clean, obeyable

# ZooKeeper's permission bits (kazoo.security.Permissions has the same values).
R, W, C, D, A = 1, 2, 4, 8, 16
ALL = R | W | C | D | A
PERM_LETTERS = (("r", R), ("w", W), ("c", C), ("d", D), ("a", A))
PERM_WORDS = {R: "read", W: "write", C: "create", D: "delete", A: "admin"}
POLICY_SCHEMA = 1
POLICY_NODE = "acl"
ROLES = ("deployers", "operators", "agents")
_DIGEST_RE = re.compile(r"digest:([^:\s]+):([A-Za-z0-9+/]{27}=)")
_X509_RE = re.compile(r"x509:([^\x00-\x1f\x7f]{1,512})")
MAX_IDENTITIES = 1000
_MASKED = re.compile(r"digest:[^:]+:x")
_MASKED_DIGEST = re.compile(r"^(digest:[^:]+):.*$")


class InvalidPolicy(InvalidValue):
    """A policy that cannot be used; str() says where and what is wrong."""


def perms_text(perms: int) -> str:
    """``rwcda`` letters, as zkCli shows them."""
    return "".join(letter for letter, bit in PERM_LETTERS if perms & bit) or "-"


def digest_id(user: str, password: str) -> str:
    """The ACL id ZooKeeper's digest provider gives ``user:password``."""
    hashed = base64.b64encode(hashlib.sha1(f"{user}:{password}".encode()).digest()).decode()
    return f"digest:{user}:{hashed}"


def check_identity(text: Any, where: str) -> str:
    """``digest:user:HASH`` (see ``mozagent acl id``) or ``x509:SUBJECT``."""
    if not isinstance(text, str) or not (_DIGEST_RE.fullmatch(text) or _X509_RE.fullmatch(text)):
        raise InvalidPolicy(
            f"{where}: {clean(text, 80)!r} is not an identity: write digest:USER:HASH "
            "(`mozagent acl id CREDENTIALS_FILE` prints it) or x509:SUBJECT (CN=web1)"
        )
    return text


def shown(identity: str) -> str:
    """An identity as people read it: a digest's hash says nothing to them."""
    m = _DIGEST_RE.fullmatch(identity) or re.fullmatch(r"digest:([^:]+):x", identity)
    return f"digest:{m.group(1)}" if m else identity


@dataclass(frozen=True)
class AppRoles:
    """``hosts``: node → that host's own identity, when the app's agents are
    given per host (the strong setup); each then has a claim on its name
    (``claims/<node>``) that no other identity can write."""

    deployers: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    hosts: dict[str, str] = field(default_factory=dict)

    def everyone(self) -> tuple[str, ...]:
        return self.deployers + self.operators + self.agents


@dataclass(frozen=True)
class Policy:
    """Roles to identities: ``admins`` for the whole root, the rest per app."""

    admins: tuple[str, ...]
    apps: dict[str, AppRoles] = field(default_factory=dict)
    require_reason: bool = False  # every change's audit entry must say why (--reason)

    def everyone(self) -> tuple[str, ...]:
        ids = list(self.admins)
        for roles in self.apps.values():
            ids.extend(roles.everyone())
        return tuple(dict.fromkeys(ids))

    def roles(self, app: str) -> AppRoles:
        return self.apps.get(app, AppRoles())

    def to_doc(self) -> dict[str, Any]:
        return {
            SCHEMA_KEY: POLICY_SCHEMA,
            "admins": list(self.admins),
            "require_reason": self.require_reason,
            "apps": {
                app: {
                    "deployers": list(r.deployers),
                    "operators": list(r.operators),
                    "agents": dict(sorted(r.hosts.items())) if r.hosts else list(r.agents),
                }
                for app, r in sorted(self.apps.items())
            },
        }


def _identities(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidPolicy(f"{where} is not a list of identities")
    if len(value) > MAX_IDENTITIES:
        raise InvalidPolicy(f"{where} has over {MAX_IDENTITIES} identities")
    return tuple(dict.fromkeys(check_identity(v, f"{where}[{i}]") for i, v in enumerate(value)))


def _hosts(value: Any, where: str) -> dict[str, str]:
    """``agents`` as a mapping node → identity: one identity per host."""
    if not isinstance(value, dict):
        return {}
    if len(value) > MAX_IDENTITIES:
        raise InvalidPolicy(f"{where} has over {MAX_IDENTITIES} hosts")
    hosts: dict[str, str] = {}
    for node, identity in value.items():
        try:
            check_name("node", str(node))
        except InvalidValue as exc:
            raise InvalidPolicy(f"{where}: {exc}") from None
        hosts[str(node)] = check_identity(identity, f"{where}.{clean(node, 60)}")
    if len(set(hosts.values())) != len(hosts):
        raise InvalidPolicy(
            f"{where}: two hosts share an identity; give each its own, or "
            "list the app's agents' identities as a list"
        )
    return hosts


def parse_policy(doc: Any, where: str) -> Policy:
    """A policy from the operator's file or the ``acl`` znode; unknown keys are
    refused (a typo must not leave a role with no one, or someone in it)."""
    if not isinstance(doc, dict):
        raise InvalidPolicy(f"{where} is not a mapping with admins and apps")
    try:
        obeyable(doc, where, POLICY_SCHEMA)
    except InvalidValue as exc:
        raise InvalidPolicy(str(exc)) from None
    unknown = sorted(set(doc) - {"admins", "apps", "require_reason", SCHEMA_KEY})
    if unknown:
        raise InvalidPolicy(
            f"{where}: unknown key {clean(unknown[0], 60)!r} (admins, apps, require_reason)"
        )
    require_reason = doc.get("require_reason", False)
    if not isinstance(require_reason, bool):
        raise InvalidPolicy(f"{where}: require_reason is not true or false")
    admins = _identities(doc.get("admins"), f"{where}: admins")
    if not admins:
        raise InvalidPolicy(f"{where}: admins is empty: nobody could change the policy again")
    apps_doc = doc.get("apps") or {}
    if not isinstance(apps_doc, dict):
        raise InvalidPolicy(f"{where}: apps is not a mapping of app name to roles")
    apps: dict[str, AppRoles] = {}
    for app, roles in apps_doc.items():
        at = f"{where}: apps.{clean(app, 60)}"
        try:
            check_name("app", str(app))
        except InvalidValue as exc:
            raise InvalidPolicy(f"{at}: {exc}") from None
        if roles is None:
            roles = {}
        if not isinstance(roles, dict):
            raise InvalidPolicy(f"{at} is not a mapping of role to identities")
        bad = sorted(set(roles) - set(ROLES))
        if bad:
            raise InvalidPolicy(f"{at}: unknown role {clean(bad[0], 60)!r} ({', '.join(ROLES)})")
        hosts = _hosts(roles.get("agents"), f"{at}.agents")
        agents = tuple(dict.fromkeys(hosts.values())) if hosts else None
        apps[str(app)] = AppRoles(
            _identities(roles.get("deployers"), f"{at}.deployers"),
            _identities(roles.get("operators"), f"{at}.operators"),
            agents if agents is not None else _identities(roles.get("agents"), f"{at}.agents"),
            hosts,
        )
    return Policy(admins, apps, require_reason)


# --- the table -----------------------------------------------------------------------------------

# One row per kind of znode: its path pattern under the root ({app}, {node},
# {key}, {order}, {entry} stand for one component each) and who may do what,
# in zkCli's letters. "all" is every identity in the policy. Admins have every
# permission everywhere and are not repeated in the rows. README's table is
# this one, printed (a test holds them together).
TABLE: tuple[tuple[str, str, str], ...] = (
    ("", "all=r", "the root"),
    ("acl", "all=r", "the policy: admins only change it"),
    ("global", "all=r", ""),
    ("global/data", "all=r", "the global layer"),
    ("global/data/{key}", "all=r", ""),
    ("apps", "all=r", ""),
    ("apps/{app}", "deployers=rc operators=r agents=r", "deployers create the release"),
    ("apps/{app}/release", "deployers=rw operators=r agents=r", "the app's release"),
    ("apps/{app}/data", "operators=rwcd deployers=r agents=r", "the app's layer"),
    ("apps/{app}/data/{key}", "operators=rw deployers=r agents=r", ""),
    ("apps/{app}/canaries", "deployers=rcd operators=r agents=r", ""),
    ("apps/{app}/canaries/{node}", "deployers=rw operators=r agents=r", "a node's release"),
    ("apps/{app}/nodes", "operators=rc deployers=r agents=r", ""),
    ("apps/{app}/nodes/{node}", "operators=rcd deployers=r agents=r", ""),
    ("apps/{app}/nodes/{node}/data", "operators=rwcd deployers=r agents=r", "a node's layer"),
    ("apps/{app}/nodes/{node}/data/{key}", "operators=rw deployers=r agents=r", ""),
    ("apps/{app}/secrets", "operators=rcd deployers=r agents=r", "secrets: names only"),
    ("apps/{app}/secrets/{key}", "operators=w agents=r", "a secret: write-only for operators"),
    ("apps/{app}/hosts", "agents=rcd deployers=r operators=r", ""),
    ("apps/{app}/claims", "agents=r deployers=r operators=r", "with per-host identities"),
    (
        "apps/{app}/claims/{node}",
        "own=rw agents=r deployers=r operators=r",
        "a host's claim: its session, its results",
    ),
    (
        "apps/{app}/hosts/{node}",
        "shared=rw own=rw agents=r deployers=r operators=r",
        "a host's presence",
    ),
    ("apps/{app}/orders", "operators=rc agents=rd deployers=r", "agents prune old orders"),
    ("apps/{app}/orders/{order}", "agents=rcd operators=r deployers=r", "an order"),
    ("apps/{app}/orders/{order}/results", "agents=rcd operators=r deployers=r", ""),
    (
        "apps/{app}/orders/{order}/results/{node}",
        "shared=rw own=rw agents=r operators=r deployers=r",
        "a host's result",
    ),
    ("audit", "all=r", "the audit trail: only admins delete"),
    ("audit/global", "all=r", ""),
    ("audit/global/{entry}", "all=r", ""),
    ("audit/apps", "all=r", ""),
    ("audit/apps/{app}", "deployers=rc operators=rc agents=r", ""),
    ("audit/apps/{app}/{entry}", "deployers=r operators=r agents=r", "one change"),
)


def grants_of(text: str) -> list[tuple[str, int]]:
    """``deployers=rc agents=r`` as (who, permission bits)."""
    bits = dict(PERM_LETTERS)
    return [
        (who, sum(bits[letter] for letter in letters))
        for who, letters in (part.split("=") for part in text.split())
    ]


def table_text() -> str:
    """TABLE as the README shows it (an RST table): one line per znode kind."""
    letters = {"deployers": "deployer", "operators": "operator", "agents": "agent", "all": "all"}
    rows = [("znode under the root", "admin", "deployer", "operator", "agent", "others", "")]
    for pattern, grants, note in TABLE:
        cells = dict.fromkeys(("deployer", "operator", "agent"), "")
        own = shared = ""
        for who, perms in grants_of(grants):
            if who in ("own", "shared"):
                own, shared = (
                    (perms_text(perms), shared) if who == "own" else (own, perms_text(perms))
                )
                continue
            for role in ("deployer", "operator", "agent") if who == "all" else (letters[who],):
                cells[role] = perms_text(perms)
        if shared:  # with one identity for the app's hosts
            cells["agent"] = f"{shared} (shared)" + (
                f", {cells['agent']} per host" if cells["agent"] else ""
            )
        if own:  # the host the path names, with its own identity
            cells["agent"] += f", own {own}"
        rows.append(
            ("/" + pattern if pattern else "(the root)", "rwcda", *cells.values(), "-", note)
        )
    widths = [max(len(r[i]) for r in rows) or 1 for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [
        rule,
        "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=False)).rstrip(),
        rule,
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows[1:]
    ]
    return "\n".join([*lines, rule]) + "\n"


# What ``mozagent acl`` creates with each app in the policy, so that nobody's
# ``c`` on a parent can create them with an ACL of its own choosing.
APP_SKELETON = ("data", "secrets", "canaries", "nodes", "hosts", "orders")
ROOT_SKELETON = ("global", "global/data", "apps", "audit", "audit/global", "audit/apps")


def _match(pattern: str, parts: list[str]) -> dict[str, str] | None:
    want = pattern.split("/") if pattern else []
    if len(want) != len(parts):
        return None
    found: dict[str, str] = {}
    for w, p in zip(want, parts, strict=True):
        if w.startswith("{"):
            found[w[1:-1]] = p
        elif w != p:
            return None
    return found


def relative(root: str, path: str) -> list[str] | None:
    """``path``'s components under ``root``; None for a path outside it."""
    root = root.rstrip("/")
    if path == root or path == root + "/":
        return []
    if not path.startswith(root + "/"):
        return None
    return path[len(root) + 1 :].split("/")


def row_of(root: str, path: str) -> tuple[str, dict[str, str]] | None:
    parts = relative(root, path)
    if parts is None:
        return None
    for pattern, _, _ in TABLE:
        found = _match(pattern, parts)
        if found is not None:
            return pattern, found
    return None


def acl_for(policy: Policy, root: str, path: str) -> dict[str, int]:
    """identity → permissions that ``path`` must carry under ``policy``.

    A znode no row describes (zkCli's, a newer agent's) is the admins' alone:
    what nobody designed for nobody else gets."""
    grants: dict[str, int] = dict.fromkeys(policy.admins, ALL)
    row = row_of(root, path)
    if row is None:
        return grants
    pattern, names = row
    roles = policy.roles(names["app"]) if "app" in names else AppRoles()
    for who, perms in grants_of(next(g for p, g, _ in TABLE if p == pattern)):
        if who == "all":
            ids: tuple[str, ...] = policy.everyone()
        elif who == "own":  # the identity of the {node} in the path, and only it
            own = roles.hosts.get(names.get("node", ""))
            ids = (own,) if own else ()
        elif who == "shared":  # the app's agents, when they share their identities
            ids = () if roles.hosts else roles.agents
        else:
            ids = getattr(roles, who)
        for identity in ids:
            grants[identity] = grants.get(identity, 0) | perms
    return grants


def acl_text(grants: dict[str, int]) -> str:
    # Ids come from ZooKeeper, written by whoever made the znode: cleaned.
    return ", ".join(f"{clean(shown(i), 120)}:{perms_text(p)}" for i, p in sorted(grants.items()))


# --- refusals ------------------------------------------------------------------------------------

# What ZooKeeper checks for each request, and on which znode: c and d are the
# parent's, everything else the znode's own.
_NEEDS = {
    "create": (C, True),
    "delete": (D, True),
    "set": (W, False),
    "get": (R, False),
    "children": (R, False),
    "check": (R, False),
    "set_acls": (A, False),
    "get_acls": (R, False),
}


def needed(op: str, path: str) -> tuple[int, str]:
    """The permission ``op`` on ``path`` needs, and the znode that must grant it."""
    perm, on_parent = _NEEDS[op]
    return perm, (path.rsplit("/", 1)[0] or "/") if on_parent else path


def refusal(op: str, path: str, who: str) -> str:
    """NoAuth in words: which request, on which znode, lacking which permission, whose."""
    perm, where = needed(op, path)
    verb = {"children": "list", "get": "read"}.get(op, op.replace("_", " "))
    return (
        f"ZooKeeper refused to {verb} {path}: {who} lacks the {PERM_WORDS[perm]} "
        f"({perms_text(perm)}) permission on {where}"
    )


def differences(
    policy: Policy, root: str, actual: Iterable[tuple[str, dict[str, int] | None]]
) -> list[tuple[str, str]]:
    """(path, what is wrong) for every znode whose ACL is not the policy's;
    ``None`` ACLs (not readable with this identity) are the caller's to count."""
    wrong = []
    for path, grants in actual:
        want = acl_for(policy, root, path)
        if grants is not None and any(_MASKED.fullmatch(i) for i in grants):
            # ZooKeeper shows a digest's hash only to clients with ``a`` on the
            # znode; for the others, compare the users (and say so).
            want = {_MASKED_DIGEST.sub(r"\1:x", i): p for i, p in want.items()}
        if grants is not None and grants != want:
            wrong.append((path, f"has {acl_text(grants)}; the policy says {acl_text(want)}"))
    return wrong
