"""An app's desired release: which code, from where, installed how.

Pure: the bytes of ``<root>/apps/<app>/release`` in, a ``Release`` (or an
``InvalidRelease`` naming the znode) out. The znode is written by operators
and read by every host of the app, and its values end up on git's command line
and as a path under the release dir, so everything that could turn them into
something else is refused here, before any host acts on them: option
injection (a leading ``-``), refspec syntax in a ref, git transports that run
commands, and an install script outside the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from mozagent.desired.keys import InvalidValue, parse_value
from mozagent.desired.schema import SCHEMA_KEY, obeyable

DEFAULT_INSTALL_SCRIPT = "bin/install"
REQUIRED_KEYS = ("ref", "source")
OPTIONAL_KEYS = ("install_script", "by", "at", SCHEMA_KEY)
# A release znode is a command (desired/schema.py): a newer schema is refused.
RELEASE_SCHEMA = 1
MAX_REF_CHARS = 255
MAX_SOURCE_CHARS = 2048
COMMIT_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# What git's check-ref-format refuses anywhere in a name, plus ':' (a refspec
# separator: ``a:b`` would make a fetch write refs of its own choosing).
_REF_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")
# Remote helpers that run a local command (``ext::sh -c ...``) or read a file
# descriptor: git refuses them by default, and a release never needs them.
_COMMAND_TRANSPORTS = re.compile(r"(?i)(ext|fd)::")
# Up to the LAST "@" before the path: a password may itself hold an "@".
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")


class InvalidRelease(ValueError):
    """A release that cannot be used; str() says what is wrong and where."""


def is_commit(ref: str) -> bool:
    """A full commit id: it names the code by itself, so no server has to resolve it."""
    return COMMIT_RE.fullmatch(ref) is not None


def split_userinfo(source: str) -> tuple[str, str | None, str | None]:
    """``https://user:token@host/repo`` as (``https://host/repo``, user, token):
    git is given the URL without them, and them by a helper, never on argv."""
    m = _USERINFO.match(source)
    if m is None or m.group("scheme").lower() not in ("http://", "https://"):
        return source, None, None  # ssh://git@host: a user name, not a credential
    userinfo = m.group(0)[len(m.group("scheme")) : -1]
    user, _, password = userinfo.partition(":")
    return m.group("scheme") + source[m.end() :], unquote(user), unquote(password) or None


def display_source(source: str) -> str:
    """The source as status and logs may show it: without the password or token
    an https URL can carry (``https://user:token@host/repo``)."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", source)


def _check_ref(ref: str) -> None:
    if not ref:
        raise InvalidRelease("ref is empty: name a tag, a branch or a full commit id")
    if len(ref) > MAX_REF_CHARS:
        raise InvalidRelease(f"ref is {len(ref)} characters long, over {MAX_REF_CHARS}")
    if ref.startswith("-"):
        raise InvalidRelease(f"ref {ref!r} starts with '-': git would read it as an option")
    if (
        _REF_BAD.search(ref)
        or ref.startswith("/")
        or ref.endswith(("/", ".", ".lock"))
        or ref == "@"
        or "/." in ref
        or ref.startswith(".")
    ):
        raise InvalidRelease(
            f"ref {ref!r} is not a git ref name (no spaces, '~', '^', ':', '?', '*', '[', "
            "'\\', '..' or '@{'): name a tag, a branch or a full commit id"
        )


def _check_source(source: str) -> None:
    if not source:
        raise InvalidRelease("source is empty: give the git URL of the app's repository")
    if len(source) > MAX_SOURCE_CHARS:
        raise InvalidRelease(f"source is {len(source)} characters long, over {MAX_SOURCE_CHARS}")
    shown = display_source(source)
    if source.startswith("-"):
        raise InvalidRelease(f"source {shown!r} starts with '-': git would read it as an option")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in source):
        raise InvalidRelease(f"source {shown!r} holds whitespace or control characters")
    if _COMMAND_TRANSPORTS.match(source):
        raise InvalidRelease(
            f"source {shown!r} uses a git transport that runs commands: give a git URL"
        )


def _check_install_script(path: str) -> None:
    if not path:
        raise InvalidRelease("install_script is empty")
    if "\x00" in path:
        raise InvalidRelease("install_script holds a NUL character")
    if path.startswith("/"):
        raise InvalidRelease(
            f"install_script {path!r} is absolute: give a path relative to the code root"
        )
    if ".." in path.split("/"):
        raise InvalidRelease(
            f"install_script {path!r} leaves the code root ('..'): "
            "give a path inside the repository"
        )
    if all(part in ("", ".") for part in path.split("/")):
        raise InvalidRelease(f"install_script {path!r} names the code root, not a program")


@dataclass(frozen=True)
class Release:
    """A valid release: constructing one checks it, so an invalid one cannot exist.

    ``by`` and ``at`` (who asked for it, and when) are for people reading
    status; they take no part in equality, so re-writing the same release does
    not look like a new one.
    """

    ref: str
    source: str
    install_script: str = DEFAULT_INSTALL_SCRIPT
    by: str | None = field(default=None, compare=False)
    at: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_ref(self.ref)
        _check_source(self.source)
        _check_install_script(self.install_script)

    def to_doc(self) -> dict[str, Any]:
        """The znode's content; credentials in the source stay in (this is what
        is written), unlike ``display_source``. Schema 1 is left implicit:
        agents from before schemas refuse a key they do not know."""
        doc: dict[str, Any] = {
            "ref": self.ref,
            "source": self.source,
            "install_script": self.install_script,
        }
        if self.by is not None:
            doc["by"] = self.by
        if self.at is not None:
            doc["at"] = self.at
        return doc


def _string(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        kind = "nothing" if value is None else type(value).__name__
        raise InvalidRelease(
            f"{key} must be a string, not {kind} (quote it: {key}: '{value}')"
            if isinstance(value, int | float)
            else f"{key} must be a string, not {kind}"
        )
    return value


def release_from_doc(doc: Any) -> Release:
    """A Release from already-parsed data (a mapping), or InvalidRelease without a path."""
    if not isinstance(doc, dict):
        kind = "nothing" if doc is None else type(doc).__name__
        raise InvalidRelease(
            f"must be a mapping with ref and source (and optionally install_script), not {kind}"
        )
    unknown = sorted(str(k) for k in doc if k not in REQUIRED_KEYS + OPTIONAL_KEYS)
    if unknown:
        raise InvalidRelease(
            f"unknown key(s) {', '.join(unknown)}: a release has "
            f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}"
        )
    try:
        obeyable(doc, "release", RELEASE_SCHEMA)
    except InvalidValue as exc:
        raise InvalidRelease(str(exc).removeprefix("release ")) from None
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise InvalidRelease(f"lacks {' and '.join(missing)}")
    by = _string(doc, "by") if "by" in doc else None
    at = doc.get("at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)):
        raise InvalidRelease(f"at must be a time in epoch seconds (a number), not {at!r}")
    return Release(
        ref=_string(doc, "ref"),
        source=_string(doc, "source"),
        install_script=(
            _string(doc, "install_script") if "install_script" in doc else DEFAULT_INSTALL_SCRIPT
        ),
        by=by,
        at=float(at) if at is not None else None,
    )


def parse_release(raw: bytes | None, where: str) -> Release | None:
    """The release a znode asks for; None when the znode does not exist (no
    release is desired, nothing is installed or removed).

    An empty znode is an error, not "no release": unlike a Hiera key, where
    empty means undef, an operator who empties the release most likely made a
    mistake, and the hosts must keep what they run rather than guess.
    """
    if raw is None:
        return None
    if not raw.strip():
        raise InvalidRelease(f"{where}: the release is empty: it needs ref and source")
    try:
        doc = parse_value(raw, where)
    except InvalidValue as exc:
        raise InvalidRelease(str(exc)) from None
    try:
        return release_from_doc(doc)
    except InvalidRelease as exc:
        raise InvalidRelease(f"{where}: {exc}") from None


def pick_ref(listing: str, ref: str) -> tuple[str, str] | None:
    """(full ref name, commit) that ``ref`` names in ``git ls-remote`` output.

    Tried in git's own order (the name as given, then under refs/, refs/tags/
    and refs/heads/), so a ref means here what it means to ``git fetch``. An
    annotated tag is peeled to its commit (the ``^{}`` line).
    """
    direct: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.strip().partition("\t")
        if not is_commit(sha) or not name:
            continue
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        else:
            direct[name] = sha
    for name in (ref, f"refs/{ref}", f"refs/tags/{ref}", f"refs/heads/{ref}"):
        if name in direct:
            return name, peeled.get(name, direct[name])
    return None
