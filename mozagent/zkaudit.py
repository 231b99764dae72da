"""An audit entry as one more operation of the change it records, for every
writer alike (the operator CLI, and an agent writing data a Heat deployment
handed it): the entry and its change are one ZooKeeper transaction, so a
writer killed between the two leaves neither. ``desired/audit.py`` has the
document and its rules."""

from __future__ import annotations

import getpass
import json
import socket

from kazoo.client import TransactionRequest

from mozagent.desired.audit import ENTRY_PREFIX, AuditEntry, audit_dir
from mozagent.zkacl import PolicyClient


def os_user() -> str:
    """The OS user and host a writer runs as, for the record: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def add_entry(txn: TransactionRequest, client: PolicyClient, root: str, entry: AuditEntry) -> None:
    where = audit_dir(root, entry.app)
    client.ensure_path(where)  # `mozagent acl apply` makes it under a policy
    doc = json.dumps(entry.to_doc(), sort_keys=True).encode()
    txn.create(f"{where}/{ENTRY_PREFIX}", doc, sequence=True)
