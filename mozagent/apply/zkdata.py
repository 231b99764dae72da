"""``group: zookeeper``: a Heat deployment's inputs written into an app's data.

The applier side of ``desired/heatdata.py``: on the agent's own ZooKeeper
session (so with its identity: the ACL policy says whether this host may
write that layer), in one transaction with its audit entry, each key's op
conditional on the version it was planned from. Heat never retries a hook,
so a lost connection or a concurrent writer is retried here, within
``deadline`` seconds; a write that cannot be made fails the deployment with
words for ``deploy_stderr``. A retry after a commit whose answer was lost
re-reads the layer and finds nothing left to write: never a second entry.

What a deployment wrote is kept in the state dir (``heat/zookeeper/``), so
that its UPDATE or DELETE removes the keys it no longer sets.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import structlog
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from mozagent.apply.deployments import Applier, DeploymentResult
from mozagent.desired.audit import AuditEntry, Change, shown_value
from mozagent.desired.deployments import Deployment, safe_id
from mozagent.desired.heatdata import (
    GROUP,
    HeatDataError,
    Plan,
    Target,
    data_of,
    digest,
    parse_target,
    plan,
)
from mozagent.fileio import read_json_object, write_json
from mozagent.zkacl import PolicyClient, Refused, first_refusal
from mozagent.zkaudit import add_entry, os_user

log = structlog.get_logger("mozagent")

TRANSIENT = (
    ConnectionLoss,
    ConnectionClosedError,
    SessionExpiredError,
    OperationTimeoutError,
    KazooTimeoutError,
)
CONFLICTS = (BadVersionError, NodeExistsError, NoNodeError, NotEmptyError)
ATTEMPTS = 8
REQUEST_TIMEOUT = 10.0  # one request; kazoo alone would wait for ever on a stalled server


class _Conflict(Exception):
    """Someone changed the layer between our read and our commit: plan again."""


class ZooKeeperDataApplier(Applier):
    group = GROUP

    def __init__(
        self,
        state_dir: str,
        client_of: Callable[[], PolicyClient | None],
        root: str,
        deadline: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.dir = os.path.join(state_dir, "heat", "zookeeper")
        self.client_of = client_of
        self.root = root
        self.deadline = deadline
        self.sleep = sleep

    def run(self, dep: Deployment, outputs_path: str) -> DeploymentResult:
        deleting = dep.action == "DELETE"
        try:
            target = parse_target(dep.config, self.root)
            wanted = data_of(dep.inputs)
        except HeatDataError as exc:
            return _failed(f"{exc}; nothing written")
        record = self._record(dep)
        if record is not None and record.get("path") == target.path:
            keys = record.get("keys")
            owned = {str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {}
        else:  # no record (a rebuilt host): what Heat says it set
            owned = {k: digest(v) for k, v in wanted.items()} if deleting else {}
        if deleting:
            wanted = {}
        client = self.client_of()
        if client is None:
            return _failed(
                "this agent has no ZooKeeper session to write with (its config needs a "
                "zookeeper section and an app); nothing written"
            )
        try:
            done, version = self._write(client, dep, target, wanted, owned)
        except Refused as exc:
            return _failed(
                f"{exc}: the ACL policy must let this host's identity "
                f"({client.identity_name}) write {target.path}; nothing written"
            )
        except RetryError as exc:
            why = exc.last_attempt.exception()
            what = (
                "the layer kept changing while it was written"
                if isinstance(why, _Conflict)
                else f"ZooKeeper did not take the write ({type(why).__name__} {why})".rstrip()
            )
            return _failed(f"{what}, for {self.deadline:g} s or {ATTEMPTS} tries; nothing written")
        self._remember(dep, target, wanted)
        text = done.summary(f"{target.label} ({target.path})")
        log.info("heat_data_written", deployment=dep.id, path=target.path, data_version=version)
        outputs = {"data_version": version, "zookeeper_path": target.path}
        return DeploymentResult(0, f"{text}; data version {version}\n", "", outputs)

    # -- ZooKeeper ---------------------------------------------------------------

    def _write(
        self,
        client: PolicyClient,
        dep: Deployment,
        target: Target,
        wanted: dict[str, bytes],
        owned: dict[str, str],
    ) -> tuple[Plan, int]:
        """Each attempt reads and plans again: after a conflict, or a commit
        whose answer was lost (then it finds nothing left to write)."""
        retrying = Retrying(
            stop=stop_after_delay(self.deadline) | stop_after_attempt(ATTEMPTS),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type((*TRANSIENT, _Conflict)),
            sleep=self.sleep,
        )
        return retrying(lambda: self._attempt(client, dep, target, plan_for=(wanted, owned)))

    def _attempt(
        self,
        client: PolicyClient,
        dep: Deployment,
        target: Target,
        plan_for: tuple[dict[str, bytes], dict[str, str]],
    ) -> tuple[Plan, int]:
        wanted, owned = plan_for
        client.load_policy()  # creates carry the policy's ACL as it is now
        layer, current, version = _read_layer(client, target.path)
        todo = plan(current, wanted, owned)
        if todo.empty:
            return todo, version
        txn = client.transaction()
        if layer is None:
            client.ensure_path_async(target.path.rsplit("/", 1)[0]).get(timeout=REQUEST_TIMEOUT)
            txn.create(target.path, b"")
        else:
            # Bumping the layer znode makes this write conflict with an import.
            txn.set_data(target.path, b"", version=layer.version)
        for name, data in todo.creates.items():
            txn.create(f"{target.path}/{name}", data)
        for name, (data, v) in todo.sets.items():
            txn.set_data(f"{target.path}/{name}", data, version=v)
        for name, v in todo.deletes.items():
            txn.delete(f"{target.path}/{name}", version=v)
        add_entry(txn, client, self.root, self._entry(client, dep, target, todo, current))
        results = txn.commit_async().get(timeout=REQUEST_TIMEOUT)
        refused = first_refusal(results)
        if refused is not None:
            raise refused
        if any(isinstance(r, CONFLICTS) for r in results):
            raise _Conflict()
        failed = next((r for r in results if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed
        first = results[0]
        if isinstance(first, ZnodeStat):
            return todo, first.mzxid
        stat = client.exists_async(target.path).get(timeout=REQUEST_TIMEOUT)
        return todo, stat.mzxid if stat is not None else 0

    def _entry(
        self,
        client: PolicyClient,
        dep: Deployment,
        target: Target,
        todo: Plan,
        current: dict[str, tuple[bytes, int]],
    ) -> AuditEntry:
        def shown(key: str, data: bytes | None) -> str | None:
            if data is None:
                return None
            return shown_value(key, data.decode("utf-8", "replace").rstrip("\n"))

        changes = [Change(k, None, shown(k, v)) for k, v in todo.creates.items()]
        changes += [
            Change(k, shown(k, current[k][0]), shown(k, v)) for k, (v, _) in todo.sets.items()
        ]
        changes += [Change(k, shown(k, current[k][0]), None) for k in todo.deletes]
        return AuditEntry(
            action="heat.data.delete" if dep.action == "DELETE" else "heat.data",
            app=target.app,
            node=target.node,
            target=target.path,
            who=client.identity_name,
            user=os_user(),
            at=time.time(),
            reason=f"heat deployment {dep.name[:200]} ({dep.id[:80]}) {dep.action}",
            changes=tuple(changes),
        )

    # -- what each deployment wrote --------------------------------------------------

    def _path(self, dep: Deployment) -> str:
        return os.path.join(self.dir, f"{safe_id(dep.id)}.json")

    def _record(self, dep: Deployment) -> dict[str, Any] | None:
        try:
            return read_json_object(self._path(dep))
        except ValueError:
            return None  # a damaged record: what Heat says it set stands in

    def _remember(self, dep: Deployment, target: Target, wanted: dict[str, bytes]) -> None:
        if not wanted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(dep))
            return
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        keys = {k: digest(v) for k, v in wanted.items()}
        write_json(self._path(dep), {"path": target.path, "keys": keys}, 0o600)


def _read_layer(
    client: PolicyClient, path: str
) -> tuple[ZnodeStat | None, dict[str, tuple[bytes, int]], int]:
    """The layer znode's stat, each key's bytes and version, and the layer's
    data version as hosts report it (the newest of its children's changes)."""
    try:
        names, stat = client.get_children_async(path, include_data=True).get(
            timeout=REQUEST_TIMEOUT
        )
    except NoNodeError:
        return None, {}, 0
    pending = {name: client.get_async(f"{path}/{name}") for name in names}
    current: dict[str, tuple[bytes, int]] = {}
    version = stat.pzxid
    for name, result in pending.items():
        try:
            data, kstat = result.get(timeout=REQUEST_TIMEOUT)
        except NoNodeError:
            continue
        current[name] = (data or b"", kstat.version)
        version = max(version, kstat.mzxid)
    return stat, current, version


def _failed(message: str) -> DeploymentResult:
    return DeploymentResult(1, "", f"mozagent: {message}\n", {})
