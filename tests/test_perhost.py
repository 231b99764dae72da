"""Per-host identities: a host cannot speak for another. Every agent of an app
may create any ``hosts/<node>`` and ``results/<node>`` (ZooKeeper's create is
the parent's), so each host's claim, writable by its identity alone, says
which presence and which results are its own; ``fleet``, ``--wait`` and
``order status`` believe nothing else."""

from __future__ import annotations

import json

import pytest
from kazoo.exceptions import NoAuthError

from mozagent.desired.acl import InvalidPolicy, parse_policy
from mozagent.desired.claims import HostClaim, presence_untrusted, result_untrusted
from mozagent.desired.keys import InvalidValue
from mozagent.desired.orders import OrderResult
from tests.conftest import Sandbox, wait_for
from tests.roles import Fleet, ident


def per_host(fleet: Fleet) -> None:
    doc = json.loads(fleet.policy_file.read_text())
    doc["apps"]["shop"]["agents"] = {"web1": ident("web1"), "web2": ident("web2")}
    fleet.policy_file.write_text(json.dumps(doc))
    fleet.apply()


def test_claims_vouch_only_for_their_own_session_and_results() -> None:
    claim = HostClaim(0x1234).with_result("order-0000000003", b"done")
    assert presence_untrusted(claim, 0x1234) is None
    assert "another identity" in (presence_untrusted(claim, 0x9999) or "")
    assert result_untrusted(claim, "order-0000000003", b"done") is None
    assert result_untrusted(claim, "order-0000000003", b"forged") is not None
    assert "no claim" in (presence_untrusted(None, 1) or "")
    assert HostClaim.parse(claim.encode(), "c") == claim
    assert HostClaim.parse(b"", "c") == HostClaim()  # as `acl apply` makes it
    for hostile, why in (
        (b"[" * 10_000, "not JSON"),
        (b"x" * 20_000, "over"),
        (b'{"results": [1]}', "not a mapping"),
    ):
        with pytest.raises(InvalidValue, match=why):
            HostClaim.parse(hostile, "c")
    for i in range(100):
        claim = claim.with_result(f"order-{i:010d}", b"x")
    assert len(claim.results) == 64 and "order-0000000099" in claim.results
    with pytest.raises(InvalidPolicy, match="share an identity"):
        parse_policy(
            {
                "admins": [ident("a")],
                "apps": {"s": {"agents": {"w1": ident("x"), "w2": ident("x")}}},
            },
            "p",
        )


def test_a_host_cannot_forge_another_hosts_presence_or_result(
    fleet: Fleet, sandbox: Sandbox
) -> None:
    per_host(fleet)
    fleet.as_agent(sandbox, "web1")
    sandbox.start_daemon()
    host = f"{fleet.root}/apps/shop/hosts"

    def live() -> dict[str, object]:
        code, out, err = fleet.cli("operator", "fleet", "shop", "--json")
        assert code in (0, 1, 3), err
        return json.loads(out)

    try:
        wait_for(lambda: fleet.client("admin").exists(f"{host}/web1"), what="presence")
    except TimeoutError:
        raise AssertionError(sandbox.daemon_log()[-3000:]) from None
    # web1's own presence is vouched for by its claim.
    code, out, err = fleet.cli("operator", "fleet", "shop")
    assert "web1" in out and "presence not trusted" not in out, out + err
    # A compromised web1 writes a presence for web2, a host that is down,
    # copying its own (converged) one: ZooKeeper lets it, the readers do not.
    forger = fleet.client("web1")
    mine = json.loads(forger.get(f"{host}/web1")[0])
    forger.create(f"{host}/web2", json.dumps({**mine, "node": "web2"}).encode(), ephemeral=True)
    with pytest.raises(NoAuthError):
        forger.set(f"{fleet.root}/apps/shop/claims/web2", b'{"session": 1}')
    code, out, err = fleet.cli("operator", "fleet", "shop")
    assert "web2" in out and "presence not trusted" in out, out
    # --wait waits for web1 alone and says why not web2.
    code, out, err = fleet.cli(
        "operator", "data", "set", "shop", "greeting", "hi", "--wait", "--timeout", "60"
    )
    assert code == 0, out + err
    assert "web2: presence not trusted" in out + err and "not waited for" in out + err
    # A forged result for web2 of a real order is shown as such, never as done.
    code, out, err = fleet.cli("operator", "order", "shop", "hello")
    assert code == 0, err
    name = out.split()[0]
    results = f"{fleet.root}/apps/shop/orders/{name}/results"
    forger.ensure_path(results)
    fake = OrderResult("web2", name, "hello", "done", 0, "ok").to_doc()
    forger.create(f"{results}/web2", json.dumps(fake).encode())
    code, out, err = fleet.cli("operator", "order", "status", "shop", name, "--json")
    doc = json.loads(out)
    assert "result not trusted" in json.dumps(doc), doc
    sandbox.stop_daemons()
