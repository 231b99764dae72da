"""Secrets: an app's keys that only its agents and admins may read, set by
operators who cannot read them back, rendered only into the 0600 Hiera
files, never into facts, the install script's data, status, presence,
``fleet``, ``data`` output or the audit trail."""

from __future__ import annotations

import json
import stat

from mozagent.desired.audit import MASK
from tests.conftest import Sandbox
from tests.roles import Fleet

SECRET = "pw-9d8c7b6a-never-shown"


def test_a_secret_reaches_puppet_and_nothing_else(fleet: Fleet, sandbox: Sandbox) -> None:
    fleet.apply()
    run = fleet.cli
    code, out, err = run(
        "operator", "data", "set", "shop", "db_password", "-", "--secret", stdin=SECRET
    )
    assert code == 0, err
    assert run("operator", "data", "set", "shop", "greeting", "hi")[0] == 0
    # Write-only for the operator: names, never values.
    code, _, err = run("operator", "data", "get", "shop", "db_password", "--secret")
    assert code == 1 and "lacks the read (r) permission" in err
    code, out, _ = run("operator", "data", "list", "shop", "--secret")
    assert (code, out) == (0, "db_password\n")
    code, out, _ = run("operator", "data", "export", "shop", "--secret")
    assert code == 0 and SECRET not in out and MASK in out
    code, _, err = run("deployer", "data", "get", "shop", "db_password", "--secret")
    assert code == 1
    # Asked for explicitly by an identity allowed to read it: shown.
    code, out, _ = run("agent", "data", "get", "shop", "db_password", "--secret")
    assert (code, out) == (0, f"{SECRET}\n")
    # The agent renders it into a 0600 Hiera file for puppet, and nowhere else.
    fleet.as_agent(sandbox, "agent")
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sandbox.layer_file("secrets") == {"db_password": SECRET}
    hiera = next(sandbox.state.rglob("secrets.yaml"))
    assert stat.S_IMODE(hiera.stat().st_mode) == 0o600
    status = sandbox.cli("status", "--json").stdout
    assert json.loads(status)["layers"]["secrets"]["keys"] == 1
    _, fleet_out, _ = run("operator", "fleet", "shop", "--json")
    _, audit_out, _ = run("operator", "audit", "shop", "--json")
    shown = [status, fleet_out, audit_out, res.stdout, res.stderr, sandbox.cli("status").stdout]
    assert not [(i, text[:300]) for i, text in enumerate(shown) if SECRET in text]
    # On disk: only the secrets layer (and its run's copy) and the last good
    # data, each 0600, in the agent's own state dir.
    holding = {
        path.relative_to(sandbox.root): stat.S_IMODE(path.stat().st_mode)
        for path in sandbox.root.rglob("*")
        if path.is_file() and SECRET in path.read_text(errors="replace")
    }
    assert holding and all(mode == 0o600 for mode in holding.values()), holding
    assert {p.name for p in holding} <= {"secrets.yaml", "lastgood.json"}, holding


def test_secrets_are_set_one_by_one_and_never_diffed(fleet: Fleet) -> None:
    code, _, err = fleet.cli("operator", "data", "set", "shop", "k", "-", "--secret", stdin="v")
    assert code == 1 and "no ACL policy" in err  # open tree: it would be anyone's
    fleet.apply()
    code, _, err = fleet.cli("operator", "data", "set", "shop", "k", "v", "--secret")
    assert code == 2 and "on stdin" in err
    layer = fleet.tmp / "s.yaml"
    layer.write_text("db_password: x\n")
    code, _, err = fleet.cli("operator", "data", "import", "shop", str(layer), "--secret")
    assert code == 2 and "one by one" in err
    code, _, err = fleet.cli(
        "operator", "data", "set", "shop", "k", "-", "--secret", "--dry-run", stdin="v"
    )
    assert code == 2 and "no diff" in err
    code, _, err = fleet.cli(
        "operator", "data", "set", "shop", "k", "-", "--secret", "--node", "x", stdin="v"
    )
    assert code == 2
    assert fleet.cli("operator", "data", "set", "shop", "k", "-", "--secret", stdin="v1")[0] == 0
    assert fleet.cli("operator", "data", "set", "shop", "k", "-", "--secret", stdin="v2")[0] == 0
    assert fleet.cli("agent", "data", "get", "shop", "k", "--secret")[1] == "v2\n"
    assert fleet.cli("operator", "data", "delete", "shop", "k", "--secret")[0] == 0
    code, out, _ = fleet.cli("operator", "audit", "shop", "--json")
    changes = [e["changes"][0] for e in json.loads(out)]
    assert changes == [
        {"what": "k", "before": None, "after": MASK},
        {"what": "k", "before": MASK, "after": MASK},
        {"what": "k", "before": MASK, "after": None},
    ]
