"""A kazoo client that creates every znode with the policy's ACL and says what
a refusal was.

ZooKeeper never inherits an ACL, so "the right ACL from birth" has to be in
every create: here, once, for the agent and the CLI alike, instead of at each
call site. The policy (``desired/acl.py``) is read with ``load_policy`` before
the writes of a step; creates never read it themselves, because kazoo calls
``create_async`` from its own event thread (``makepath``), where a read would
wait for itself.

A refused request raises ``Refused``, a ``NoAuthError`` whose text names the
request, the znode, the permission and the identity: "NoAuthError" alone tells
an operator nothing.
"""

from __future__ import annotations

import json
from typing import Any

from kazoo.client import KazooClient, TransactionRequest
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.protocol.serialization import CheckVersion, Create, Delete, SetData
from kazoo.security import ACL, Id

from mozagent.desired.acl import (
    POLICY_NODE,
    InvalidPolicy,
    Policy,
    acl_for,
    parse_policy,
    refusal,
)

POLICY_READ_TIMEOUT = 10.0
MAX_POLICY_BYTES = 1024 * 1024


class Refused(NoAuthError):
    """NoAuth, in words (``desired.acl.refusal``)."""


def to_kazoo(grants: dict[str, int]) -> list[ACL]:
    acls = []
    for identity, perms in sorted(grants.items()):
        scheme, _, ident = identity.partition(":")
        acls.append(ACL(perms, Id(scheme, ident)))
    return acls


def from_kazoo(acls: list[ACL]) -> dict[str, int]:
    grants: dict[str, int] = {}
    for acl in acls:
        key = f"{acl.id.scheme}:{acl.id.id}"
        grants[key] = grants.get(key, 0) | acl.perms
    return grants


def policy_path(root: str) -> str:
    return f"{root.rstrip('/')}/{POLICY_NODE}"


def parse_stored(raw: bytes, where: str) -> Policy:
    if len(raw) > MAX_POLICY_BYTES:
        raise InvalidPolicy(f"{where}: {len(raw)} bytes, over the 1 MiB limit")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidPolicy(f"{where}: not JSON ({type(exc).__name__})") from None
    return parse_policy(doc, where)


def first_refusal(results: list[Any]) -> Refused | None:
    """The refused operation of a failed transaction, if that is why it failed."""
    return next((r for r in results if isinstance(r, Refused)), None)


_UNLOADED = object()


class PolicyClient(KazooClient):
    """``root``: where the policy lives (None: no policy, kazoo's open ACL).
    ``who``: this client's identity in words, for refusals."""

    def __init__(
        self,
        *args: Any,
        root: str | None = None,
        who: str = "",
        identity_name: str = "anonymous",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.root = root
        self.who = who or "a client with no identity"
        self.identity_name = identity_name  # for the audit trail: digest:bob, x509:CN=…
        self._policy: Any = _UNLOADED if root is not None else None

    # --- the policy -------------------------------------------------------------------------

    def load_policy(self, timeout: float = POLICY_READ_TIMEOUT) -> Policy | None:
        """Read ``<root>/acl`` now. No policy: an open tree, as before roles.
        One that cannot be read or used raises: creating a znode with the
        wrong ACL would be worse than not creating it."""
        if self.root is None:
            return None
        path = policy_path(self.root)
        try:
            raw, _ = self.get_async(path).get(timeout=timeout)
        except NoNodeError:
            self._policy = None
            return None
        except Refused as exc:
            raise Refused(
                f"{exc}: every identity the policy names may read it, so this one is in none "
                "of its roles"
            ) from None
        self._policy = parse_stored(raw or b"", path)
        return self._policy

    def use_policy(self, policy: Policy | None) -> None:
        """``mozagent acl`` creates with the policy it is about to store."""
        self._policy = policy

    @property
    def policy(self) -> Policy | None:
        if self._policy is _UNLOADED:
            raise RuntimeError("load_policy() before the first create")
        return self._policy

    def acl_of(self, path: str) -> list[ACL] | None:
        """The ACL a new znode at ``path`` gets (None: kazoo's open default)."""
        policy = self.policy
        if policy is None or self.root is None:
            return None
        return to_kazoo(acl_for(policy, self.root, path.rstrip("/")))

    # --- requests ---------------------------------------------------------------------------

    def _named(self, result: Any, op: str, path: str) -> Any:
        out = self.handler.async_result()

        def done(r: Any) -> None:
            try:
                out.set(r.get())
            except Refused as exc:
                out.set_exception(exc)
            except NoAuthError:
                out.set_exception(Refused(refusal(op, path, self.who)))
            except Exception as exc:  # handed on to whoever waits for it
                out.set_exception(exc)

        result.rawlink(done)
        return out

    def create_async(self, path: str, value: bytes = b"", acl: Any = None, **kwargs: Any) -> Any:
        if acl is None:
            acl = self.acl_of(path)
        return self._named(super().create_async(path, value, acl, **kwargs), "create", path)

    def ensure_path_async(self, path: str, acl: Any = None) -> Any:
        # Each missing component gets its own ACL (create_async above), not
        # the one kazoo would hand down from the child being created.
        return super().ensure_path_async(path, None if self.root is not None else acl)

    def set_async(self, path: str, value: bytes, version: int = -1) -> Any:
        return self._named(super().set_async(path, value, version), "set", path)

    def delete_async(self, path: str, version: int = -1) -> Any:
        return self._named(super().delete_async(path, version), "delete", path)

    def get_async(self, path: str, watch: Any = None) -> Any:
        return self._named(super().get_async(path, watch), "get", path)

    def get_children_async(self, path: str, watch: Any = None, include_data: bool = False) -> Any:
        pending = super().get_children_async(path, watch, include_data)
        return self._named(pending, "children", path)

    def get_acls_async(self, path: str) -> Any:
        return self._named(super().get_acls_async(path), "get_acls", path)

    def set_acls_async(self, path: str, acls: Any, version: int = -1) -> Any:
        return self._named(super().set_acls_async(path, acls, version), "set_acls", path)

    def transaction(self) -> PolicyTransaction:
        return PolicyTransaction(self)


_OPS = {Create: "create", Delete: "delete", SetData: "set", CheckVersion: "check"}


class PolicyTransaction(TransactionRequest):
    """A transaction whose creates carry the policy's ACL, and whose refused
    operation is named among the results (the others say "rolled back")."""

    client: PolicyClient

    def create(self, path: str, value: bytes = b"", acl: Any = None, **kwargs: Any) -> None:
        super().create(path, value, acl if acl is not None else self.client.acl_of(path), **kwargs)

    def commit_async(self) -> Any:
        ops = [(_OPS.get(type(op), "set"), op.path) for op in self.operations]
        out = self.client.handler.async_result()

        def done(r: Any) -> None:
            try:
                results = r.get()
            except Exception as exc:  # the connection: handed on as it is
                out.set_exception(exc)
                return
            out.set(
                [
                    Refused(refusal(op, path, self.client.who))
                    if isinstance(res, NoAuthError) and not isinstance(res, Refused)
                    else res
                    for (op, path), res in zip(ops, results, strict=False)
                ]
            )

        super().commit_async().rawlink(done)
        return out
