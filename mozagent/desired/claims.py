"""A host's claim on its name: what makes its presence and its results
trustworthy when each host has an identity of its own.

ZooKeeper's create and delete permissions are the parent's, for a child of
any name: every agent of an app may create ``hosts/<node>`` and
``results/<node>`` for any node. So with per-host identities, ``mozagent acl
apply`` gives each host a persistent ``claims/<node>`` that only that host's
identity may write, and the host records there the session that holds its
presence (written *before* the presence) and a digest of each result it
published. Readers (``fleet``, every ``--wait``, ``order status``) believe a
presence whose ephemeral owner is the claimed session and a result whose
digest is claimed; anything else is a forgery or a leftover, shown and never
counted. A host can still lie about itself; it can no longer lie about
another.

Pure: the document and the judgement.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from mozagent.desired.keys import InvalidValue
from mozagent.desired.orders import order_seq
from mozagent.desired.schema import SCHEMA_KEY, Fields

CLAIM_SCHEMA = 1
MAX_CLAIMED_RESULTS = 64  # the newest orders; older results are history by then
# 64 digests and a session are under 8 KiB: more is not a claim this agent wrote,
# and every `fleet` reads every claim.
MAX_CLAIM_BYTES = 16 * 1024


def digest_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class HostClaim:
    session: int = 0
    results: dict[str, str] = field(default_factory=dict)  # order name → digest

    def to_doc(self) -> dict[str, Any]:
        return {SCHEMA_KEY: CLAIM_SCHEMA, "session": self.session, "results": self.results}

    def encode(self) -> bytes:
        return json.dumps(self.to_doc(), sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes | None, where: str) -> HostClaim:
        """An empty znode (as ``acl apply`` makes it) claims nothing yet."""
        if not raw:
            return cls()
        if len(raw) > MAX_CLAIM_BYTES:
            raise InvalidValue(f"{where} is {len(raw)} bytes, over {MAX_CLAIM_BYTES}")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise InvalidValue(f"{where} is not JSON") from None
        f = Fields(doc, where)
        results = doc.get("results") or {}
        if not isinstance(results, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in results.items()
        ):
            raise InvalidValue(f"{where}: results is not a mapping of order to digest")
        return cls(f.integer("session") or 0, dict(results))

    def with_session(self, session: int) -> HostClaim:
        return HostClaim(session, self.results)

    def with_result(self, order: str, raw: bytes) -> HostClaim:
        results = {**self.results, order: digest_of(raw)}
        newest = sorted(results, key=_seq, reverse=True)[:MAX_CLAIMED_RESULTS]
        return HostClaim(self.session, {k: results[k] for k in sorted(newest, key=_seq)})


def _seq(order: str) -> int:
    try:
        return order_seq(order)
    except ValueError:
        return -1


def presence_untrusted(claim: HostClaim | str | None, ephemeral_owner: int) -> str | None:
    """Why a live presence is not to be believed, or None. ``claim``: the
    node's claim, why it could not be read, or None (the node has none)."""
    if claim is None:
        return "no claim of its own in the policy: any agent of the app could have written it"
    if isinstance(claim, str):
        return f"its claim is unreadable ({claim})"
    if claim.session != ephemeral_owner:
        return "not the session its claim names: written by another identity, or a leftover"
    return None


def result_untrusted(claim: HostClaim | str | None, order: str, raw: bytes) -> str | None:
    if claim is None:
        return "no claim of its own in the policy"
    if isinstance(claim, str):
        return f"its claim is unreadable ({claim})"
    if claim.results.get(order) != digest_of(raw):
        return "not the result its host claims: written by another identity"
    return None
