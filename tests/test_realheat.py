"""mozagent against a real OpenStack Heat: DeployedServer stacks driven end to end.

Debian bookworm's Heat 19 (heat-all: the orchestration API, the CFN API and
one engine in one process) and Keystone 22 run on 127.0.0.1 for the whole
session (tests/realheat/cloud.py). Each test creates stacks through the real
Heat API (the venv's python-heatclient) and runs mozagent as a real daemon
(``python -m mozagent daemon``) in a sandbox that starts with nothing but the
DeployedServer's ``os_collect_config`` attribute, written where ``heat_local``
reads it, as cloud-init would write it on a Heat-booted server. Puppet is the
real ``puppet apply``; outputs and errors are read back through Heat's API.

Run them alone with ``pytest -m realheat``. Under CI (``CI=true``) a Heat that
is not installed is a failure; elsewhere these tests skip and say why.
Heat or Keystone that does not start is a failure everywhere.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mozagent_dev.testing import text_of
from tests.conftest import Sandbox, wait_for
from tests.glance.cloud import CloudError
from tests.realheat.cloud import PACKAGES, HeatCloud, heat_missing

pytestmark = [pytest.mark.realheat, pytest.mark.timeout(600)]

IN_CI = os.environ.get("CI") == "true"
STACK_TIMEOUT = 180  # seconds any one stack operation may take here


def unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why}: under CI the real-Heat tests must run, not skip")
    pytest.skip(why)


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeatCloud]:
    if os.geteuid() != 0:
        unavailable("the real-Heat tests need root (keystone-manage key setup as root)")
    lacking = heat_missing()
    if lacking:
        unavailable(
            f"Heat is not installed here: missing {', '.join(lacking)}; "
            f"apt-get install {' '.join(PACKAGES)} (tools/install-deps --test)"
        )
    heat = HeatCloud(tmp_path_factory.mktemp("realheat"))
    try:
        heat.start(timeout=180)
    except CloudError as exc:
        pytest.fail(f"Keystone/Heat did not start: {exc}")
    yield heat
    heat.stop()


# --- stacks ----------------------------------------------------------------------------


class Stacks:
    """The stacks one test creates, through the real Heat API; deleted after it."""

    def __init__(self, cloud: HeatCloud) -> None:
        self.cloud = cloud
        self.heat = cloud.heat()
        self.ids: list[str] = []

    def create(self, template: dict[str, Any], **parameters: Any) -> str:
        name = f"rh-{uuid.uuid4().hex[:8]}"
        created = self.heat.stacks.create(
            stack_name=name,
            template=yaml.safe_dump(template),
            parameters=parameters,
            timeout_mins=10,
        )
        stack_id = f"{name}/{created['stack']['id']}"
        self.ids.append(stack_id)
        return stack_id

    def update(self, stack_id: str, **parameters: Any) -> None:
        """A PATCH update: same template, these parameters changed."""
        self.heat.stacks.update(stack_id, existing=True, parameters=parameters)

    def get(self, stack_id: str) -> Any:
        return self.heat.stacks.get(stack_id)

    def wait(self, stack_id: str, want: str, timeout: float = STACK_TIMEOUT) -> Any:
        """Until the stack is ``want``; any other *_FAILED, or the timeout, fails."""
        from heatclient import exc

        deadline = time.monotonic() + timeout
        while True:
            try:
                stack = self.heat.stacks.get(stack_id)
            except exc.HTTPNotFound:
                if want == "DELETE_COMPLETE":
                    return None
                raise
            status = stack.stack_status
            if status == want:
                return stack
            if status.endswith("_FAILED"):
                raise AssertionError(
                    f"stack {stack_id} is {status}, not {want}: {stack.stack_status_reason}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"stack {stack_id} still {status} after {timeout:g} s, not {want}"
                )
            time.sleep(0.5)

    def output(self, stack_id: str, key: str) -> Any:
        return self.heat.stacks.output_show(stack_id, key)["output"].get("output_value")

    def os_collect_config(self, stack_id: str, key: str = "os_collect_config") -> dict[str, Any]:
        """The DeployedServer's os_collect_config attribute, once the server exists."""

        def ready() -> dict[str, Any] | None:
            value = self.output(stack_id, key)
            return value if isinstance(value, dict) and value.get("collectors") else None

        return wait_for(ready, timeout=60, interval=0.5, what=f"{key} of {stack_id}")

    def deployment(self, stack_id: str, resource: str) -> Any:
        """Heat's software deployment behind a SoftwareDeployment resource."""
        sd_id = self.heat.resources.get(stack_id, resource).physical_resource_id
        return self.heat.software_deployments.get(sd_id)

    def events(self, stack_id: str, resource: str) -> list[Any]:
        return list(self.heat.events.list(stack_id, resource_name=resource))

    def cleanup(self) -> None:
        from heatclient import exc

        for stack_id in self.ids:
            try:
                self.heat.stacks.delete(stack_id)
            except exc.HTTPNotFound:
                continue
            except Exception as err:  # cleanup must go on
                print(f"cleanup: deleting {stack_id}: {err}")
        for stack_id in self.ids:
            try:
                self.wait(stack_id, "DELETE_COMPLETE", timeout=30)
            except (AssertionError, TimeoutError, exc.BaseException) as err:
                print(f"cleanup: {stack_id}: {err}")


@pytest.fixture
def stacks(cloud: HeatCloud) -> Iterator[Stacks]:
    made = Stacks(cloud)
    yield made
    made.cleanup()


# --- the instance side: mozagent ------------------------------------------------------------


class Agent:
    """A mozagent daemon in a sandbox, given only a DeployedServer's os_collect_config,
    as the cfn-init-data file cloud-init writes on a Heat-booted server."""

    def __init__(
        self, root: Path, occ: dict[str, Any], zk: tuple[str, str] | None = None, **heat: Any
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        hosts, zk_root = zk or (None, "/unused")
        self.box = Sandbox(root, hosts, zk_root)
        self.local = root / "cfn-init-data"
        self.local.write_text(json.dumps({"os-collect-config": occ}))
        overrides: dict[str, Any] = {"puppet": {"manifests": []}}
        if zk is None:
            overrides.update(app=None, zookeeper=None)
        self.box.write_config(
            **overrides,
            heat={
                "heat_local_paths": [str(self.local)],
                "local_paths": [str(root / "local-data")],
                "os_collect_config_conf": str(root / "no-such.conf"),
                "hook_dirs": [str(root / "hooks")],
                "poll_min": 0.2,
                "poll_max": 0.5,
                "retry_max": 2,
                "request_timeout": 5,
                "signal_retry_max": 2,
                "timeout": 120,
                **heat,
            },
        )

    def start(self) -> Any:
        return self.box.start_daemon()

    def stop(self) -> None:
        self.box.stop_daemons()

    def deployments(self) -> dict[str, dict[str, Any]]:
        """mozagent's view (status.json): deployment name -> record."""
        return {d["name"]: d for d in (self.box.status_doc() or {}).get("deployments", [])}

    def signals(self) -> list[dict[str, Any]]:
        """The signal outbox entries (state, attempts...)."""
        out = []
        for path in sorted((self.box.state / "heat" / "signals").glob("*.json")):
            out.append(json.loads(path.read_text()))
        return out

    def log(self) -> str:
        return self.box.daemon_log()


@pytest.fixture
def agents(puppet_bin: str) -> Iterator[list[Agent]]:
    made: list[Agent] = []
    yield made
    for agent in made:
        agent.stop()


def agent_for(agents: list[Agent], root: Path, occ: dict[str, Any], **kw: Any) -> Agent:
    agent = Agent(root, occ, **kw)
    agents.append(agent)
    return agent


def explain(stacks: Stacks, stack_id: str, *agents: Agent) -> str:
    """What to look at when a wait fails: the stack, the daemons' last lines."""
    try:
        stack = stacks.get(stack_id)
        lines = [f"stack {stack_id}: {stack.stack_status} {stack.stack_status_reason}"]
    except Exception as exc:  # the explanation must not hide the failure
        lines = [f"stack {stack_id}: {exc}"]
    for agent in agents:
        lines.append(f"--- {agent.box.root}/daemon.log")
        lines += agent.log().splitlines()[-25:]
    return "\n".join(lines)


def wait_stack(stacks: Stacks, stack_id: str, want: str, *agents: Agent, **kw: Any) -> Any:
    try:
        return stacks.wait(stack_id, want, **kw)
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n{explain(stacks, stack_id, *agents)}") from None


# --- templates ---------------------------------------------------------------------------


def server(transport: str = "POLL_SERVER_HEAT") -> dict[str, Any]:
    return {
        "type": "OS::Heat::DeployedServer",
        "properties": {"software_config_transport": transport},
    }


def config(group: str, body: str, inputs: list[Any], outputs: list[str]) -> dict[str, Any]:
    return {
        "type": "OS::Heat::SoftwareConfig",
        "properties": {
            "group": group,
            "inputs": [i if isinstance(i, dict) else {"name": i} for i in inputs],
            "outputs": [{"name": o} for o in outputs],
            "config": body,
        },
    }


def deployment(
    config_name: str,
    values: dict[str, Any],
    server_name: str = "server",
    transport: str = "HEAT_SIGNAL",
    actions: list[str] | None = None,
    depends_on: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "type": "OS::Heat::SoftwareDeployment",
        "properties": {
            "config": {"get_resource": config_name},
            "server": {"get_resource": server_name},
            "signal_transport": transport,
            "actions": actions or ["CREATE", "UPDATE"],
            "input_values": values,
        },
    }
    if depends_on:
        res["depends_on"] = depends_on
    return res


def template(
    resources: dict[str, Any], outputs: dict[str, Any], parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "heat_template_version": "2018-08-31",
        "parameters": parameters or {},
        "resources": resources,
        "outputs": {name: {"value": value} for name, value in outputs.items()},
    }


def attr(resource: str, name: str) -> dict[str, Any]:
    return {"get_attr": [resource, name]}


def param(name: str) -> dict[str, Any]:
    return {"get_param": name}


OCC = {"os_collect_config": attr("server", "os_collect_config")}

# Typed inputs as typed facts (and Hiera data); outputs through $heat_outputs_path.
TYPED_MANIFEST = """\
# Inputs are facts, and so top-scope variables too ($port...): locals need other names.
$p = $facts['port']
$f = $facts['flag']
$summary = join([
  "greeting=${facts['greeting']}",
  "port=${p}",
  "port_is_integer=${$p =~ Integer}",
  "flag_is_boolean=${$f =~ Boolean}",
  "flag=${f}",
  "hosts=${join($facts['hosts'], '+')}",
  "tuning_workers=${facts['tuning']['workers']}",
  "hiera_port=${lookup('port')}",
  "action=${facts['deploy_action']}",
], ' ')
file { $facts['out']: content => "${summary}\\n" }
file { "${heat_outputs_path}.summary": content => $summary }
file { "${heat_outputs_path}.next_port": content => String($p + 1) }
"""

# Runs after the puppet deployment (depends_on, and an input from its output):
# the file puppet wrote is there, and its output came through Heat.
AFTER_PUPPET_SCRIPT = """\
#!/bin/sh
set -e
cat "$out" > "$heat_outputs_path.seen"
echo "from puppet: $from_puppet"
printf '%s' "$deploy_action" > "$heat_outputs_path.action"
"""

TYPED_PARAMETERS = {
    "greeting": {"type": "string", "default": "hello"},
    "port": {"type": "number", "default": 8080},
    "flag": {"type": "boolean", "default": True},
    "hosts": {"type": "comma_delimited_list", "default": "a,b"},
    "tuning": {"type": "json", "default": {"workers": 4}},
    "out": {"type": "string"},
}


def typed_stack() -> dict[str, Any]:
    return template(
        {
            "server": server(),
            "puppet_config": config(
                "puppet",
                TYPED_MANIFEST,
                [
                    {"name": "greeting", "type": "String"},
                    {"name": "port", "type": "Number"},
                    {"name": "flag", "type": "Boolean"},
                    {"name": "hosts", "type": "CommaDelimitedList"},
                    {"name": "tuning", "type": "Json"},
                    {"name": "out", "type": "String"},
                ],
                ["summary", "next_port"],
            ),
            "puppet_deployment": deployment(
                "puppet_config", {name: param(name) for name in TYPED_PARAMETERS}
            ),
            "script_config": config(
                "script", AFTER_PUPPET_SCRIPT, ["from_puppet", "out"], ["seen", "action"]
            ),
            "script_deployment": deployment(
                "script_config",
                {"from_puppet": attr("puppet_deployment", "summary"), "out": param("out")},
                depends_on="puppet_deployment",
            ),
        },
        {
            **OCC,
            "summary": attr("puppet_deployment", "summary"),
            "next_port": attr("puppet_deployment", "next_port"),
            "puppet_status": attr("puppet_deployment", "deploy_status_code"),
            "seen": attr("script_deployment", "seen"),
            "script_action": attr("script_deployment", "action"),
            "script_stdout": attr("script_deployment", "deploy_stdout"),
        },
        TYPED_PARAMETERS,
    )


def summary(greeting: str = "hello", action: str = "CREATE") -> str:
    return (
        f"greeting={greeting} port=8080 port_is_integer=true flag_is_boolean=true flag=true "
        f"hosts=a+b tuning_workers=4 hiera_port=8080 action={action}"
    )


# --- 1. puppet and script configs, typed inputs, outputs, dependency order ----------------


def test_puppet_and_script_deployments_complete_the_stack_with_their_outputs(
    stacks: Stacks, agents: list[Agent], tmp_path: Path
) -> None:
    out = tmp_path / "puppet-wrote.txt"
    stack_id = stacks.create(typed_stack(), out=str(out))
    agent = agent_for(agents, tmp_path / "agent", stacks.os_collect_config(stack_id))
    agent.start()
    wait_stack(stacks, stack_id, "CREATE_COMPLETE", agent)

    # The outputs Heat holds are what the manifest wrote, typed inputs and all.
    assert out.read_text() == summary() + "\n"
    assert stacks.output(stack_id, "summary") == summary()
    assert stacks.output(stack_id, "next_port") == "8081"
    assert stacks.output(stack_id, "puppet_status") == 0
    # The script ran after puppet: it saw puppet's file, and puppet's output as input.
    assert stacks.output(stack_id, "seen") == summary() + "\n"
    assert stacks.output(stack_id, "script_action") == "CREATE"
    assert f"from puppet: {summary()}" in stacks.output(stack_id, "script_stdout")
    puppet = stacks.deployment(stack_id, "puppet_deployment")
    script = stacks.deployment(stack_id, "script_deployment")
    assert (puppet.status, script.status) == ("COMPLETE", "COMPLETE")
    assert puppet.output_values["deploy_status_code"] == 0

    # mozagent's own account: both done and signalled once, through HEAT_SIGNAL.
    records = agent.deployments()
    assert sorted((r["group"], r["state"], r["signal"]["state"]) for r in records.values()) == [
        ("puppet", "done", "sent"),
        ("script", "done", "sent"),
    ]
    assert [(s["transport"], s["state"]) for s in agent.signals()] == [("HEAT_SIGNAL", "sent")] * 2
    code, doc = agent.box.status()
    assert code == 0, doc
    assert doc["heat"]["in_use"] == "heat"


# --- 2. UPDATE and DELETE actions --------------------------------------------------------

ACTION_MANIFEST = """\
file { $facts['out']: content => "${facts['message']} ${facts['deploy_action']}\\n" }
file { "${heat_outputs_path}.applied": content => "${facts['message']} ${facts['deploy_action']}" }
"""

ACTION_SCRIPT = """\
#!/bin/sh
echo "$deploy_action $message" >> "$log"
printf '%s %s' "$deploy_action" "$message" > "$heat_outputs_path.logged"
"""


def test_update_and_delete_run_their_actions(
    cloud: HeatCloud, stacks: Stacks, agents: list[Agent], tmp_path: Path
) -> None:
    out, log = tmp_path / "puppet.txt", tmp_path / "actions.log"
    stack = template(
        {
            "server": server(),
            "puppet_config": config("puppet", ACTION_MANIFEST, ["message", "out"], ["applied"]),
            "puppet_deployment": deployment(
                "puppet_config", {"message": param("message"), "out": str(out)}
            ),
            "script_config": config("script", ACTION_SCRIPT, ["message", "log"], ["logged"]),
            "script_deployment": deployment(
                "script_config",
                {"message": param("message"), "log": str(log)},
                actions=["CREATE", "UPDATE", "DELETE"],
            ),
        },
        {
            **OCC,
            "applied": attr("puppet_deployment", "applied"),
            "logged": attr("script_deployment", "logged"),
        },
        {"message": {"type": "string"}},
    )
    stack_id = stacks.create(stack, message="first")
    agent = agent_for(agents, tmp_path / "agent", stacks.os_collect_config(stack_id))
    agent.start()
    wait_stack(stacks, stack_id, "CREATE_COMPLETE", agent)
    assert out.read_text() == "first CREATE\n"
    assert log.read_text() == "CREATE first\n"
    created = stacks.deployment(stack_id, "puppet_deployment").config_id

    stacks.update(stack_id, message="second")
    wait_stack(stacks, stack_id, "UPDATE_COMPLETE", agent)
    assert stacks.output(stack_id, "applied") == "second UPDATE"
    assert stacks.output(stack_id, "logged") == "UPDATE second"
    assert out.read_text() == "second UPDATE\n"
    assert log.read_text() == "CREATE first\nUPDATE second\n"
    puppet = stacks.deployment(stack_id, "puppet_deployment")
    assert (puppet.action, puppet.status) == ("UPDATE", "COMPLETE")
    assert puppet.config_id != created  # a new derived config: a new deployment to run
    actions = sorted(
        (r["group"], r["action"], r["state"], r["signal"]["state"])
        for r in agent.box.status_doc()["deployments"]
    )
    assert actions == [
        ("puppet", "CREATE", "done", "sent"),
        ("puppet", "UPDATE", "done", "sent"),
        ("script", "CREATE", "done", "sent"),
        ("script", "UPDATE", "done", "sent"),
    ]

    # DELETE: the script deployment (actions include DELETE) runs before the
    # stack goes; the puppet one (CREATE, UPDATE) does not. Heat waits for a
    # DELETE action only when Nova says the server exists (the stand-in does).
    server_id = stacks.heat.resources.get(stack_id, "server").physical_resource_id
    cloud.compute.servers.add(server_id)
    stacks.heat.stacks.delete(stack_id)
    wait_stack(stacks, stack_id, "DELETE_COMPLETE", agent)
    assert server_id in cloud.compute.asked
    assert log.read_text() == "CREATE first\nUPDATE second\nDELETE second\n"
    assert out.read_text() == "second UPDATE\n"
    wait_for(
        lambda: any(
            r["action"] == "DELETE" and r["signal"]["state"] == "sent"
            for r in agent.box.status_doc()["deployments"]
        ),
        what="the DELETE deployment signalled in status",
    )


# --- 3. a failing puppet config ----------------------------------------------------------

FAILING_MANIFEST = """\
file { "${heat_outputs_path}.before": content => 'written before the failure' }
exec { 'fails-on-purpose':
  command => "/bin/sh -c 'echo boom-from-the-exec >&2; exit 1'",
  require => File["${heat_outputs_path}.before"],
}
"""


def test_failing_puppet_config_fails_the_stack_with_puppets_error(
    stacks: Stacks, agents: list[Agent], tmp_path: Path
) -> None:
    stack = template(
        {
            "server": server(),
            "bad_config": config("puppet", FAILING_MANIFEST, [], ["before"]),
            "bad_deployment": deployment("bad_config", {}),
        },
        OCC,
    )
    stack_id = stacks.create(stack)
    agent = agent_for(agents, tmp_path / "agent", stacks.os_collect_config(stack_id))
    agent.start()
    wait_stack(stacks, stack_id, "CREATE_FAILED", agent)
    failed = stacks.get(stack_id)
    assert "bad_deployment" in failed.stack_status_reason, failed.stack_status_reason
    sd = stacks.deployment(stack_id, "bad_deployment")
    assert sd.status == "FAILED"
    resource = stacks.heat.resources.get(stack_id, "bad_deployment")
    assert resource.resource_status == "CREATE_FAILED"
    values = sd.output_values
    assert values["deploy_status_code"] not in (0, 2), values
    # Puppet's own error message, as Heat holds it.
    stderr = values["deploy_stderr"]
    assert "Exec[fails-on-purpose]" in stderr, stderr
    assert "returned 1 instead of one of [0]" in stderr, stderr
    assert values["before"] == "written before the failure"
    code, doc = agent.box.status()
    assert code == 1, doc  # the latest deployment of its name failed
    assert [(d["state"], d["signal"]["state"]) for d in doc["deployments"]] == [("failed", "sent")]


# --- 4. ZooKeeper data re-applies a completed puppet config, Heat hears nothing ------------

ZK_MANIFEST = """\
file { $facts['out']: content => "greeting=${lookup('greeting')} port=${facts['port']}\\n" }
file { "${heat_outputs_path}.greeting": content => lookup('greeting') }
"""


def test_zookeeper_change_reapplies_the_config_and_signals_nothing(
    stacks: Stacks,
    agents: list[Agent],
    tmp_path: Path,
    zk_server: Any,
    zk: Any,
    zk_root: str,
) -> None:
    out = tmp_path / "zk-driven.txt"
    zk.create(f"{zk_root}/apps/shop/data/greeting", b"one", makepath=True)
    stack = template(
        {
            "server": server(),
            "zk_config": config(
                "puppet", ZK_MANIFEST, [{"name": "port", "type": "Number"}, "out"], ["greeting"]
            ),
            "zk_deployment": deployment("zk_config", {"port": 81, "out": str(out)}),
        },
        {**OCC, "greeting": attr("zk_deployment", "greeting")},
    )
    stack_id = stacks.create(stack)
    agent = agent_for(
        agents,
        tmp_path / "agent",
        stacks.os_collect_config(stack_id),
        zk=(zk_server.hosts, zk_root),
    )
    agent.start()
    wait_stack(stacks, stack_id, "CREATE_COMPLETE", agent)
    assert out.read_text() == "greeting=one port=81\n"
    assert stacks.output(stack_id, "greeting") == "one"
    sd = stacks.deployment(stack_id, "zk_deployment")
    events = len(stacks.events(stack_id, "zk_deployment"))
    sent = wait_for(
        lambda: [e for e in agent.signals() if e["state"] == "sent"], what="the signal sent"
    )

    zk.set(f"{zk_root}/apps/shop/data/greeting", b"two")
    wait_for(
        lambda: text_of(out) == "greeting=two port=81\n",
        timeout=60,
        what="the puppet config re-applied on the data change",
    )
    time.sleep(3)  # several polls and signal rounds: nothing new may reach Heat
    assert stacks.get(stack_id).stack_status == "CREATE_COMPLETE"
    assert stacks.output(stack_id, "greeting") == "one"
    again = stacks.deployment(stack_id, "zk_deployment")
    assert (again.status, again.updated_time, again.output_values) == (
        "COMPLETE",
        sd.updated_time,
        sd.output_values,
    )
    assert len(stacks.events(stack_id, "zk_deployment")) == events
    assert agent.signals() == sent  # one signal, sent once, none since


# --- 5. SIGKILL between the metadata fetch and the signal -------------------------------------

SLOW_SCRIPT = """\
#!/bin/sh
echo run >> "$marker"
sleep 4
echo slow-done
printf finished > "$heat_outputs_path.result"
"""


def test_agent_killed_mid_deployment_still_completes_the_stack(
    stacks: Stacks, agents: list[Agent], tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    stack = template(
        {
            "server": server(),
            "slow_config": config("script", SLOW_SCRIPT, ["marker"], ["result"]),
            "slow_deployment": deployment("slow_config", {"marker": str(marker)}),
        },
        {**OCC, "result": attr("slow_deployment", "result")},
    )
    stack_id = stacks.create(stack)
    agent = agent_for(agents, tmp_path / "agent", stacks.os_collect_config(stack_id))
    first = agent.start()
    wait_for(lambda: text_of(marker), timeout=60, what="the slow deployment to start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    time.sleep(1)
    assert stacks.get(stack_id).stack_status == "CREATE_IN_PROGRESS"
    assert stacks.deployment(stack_id, "slow_deployment").status == "IN_PROGRESS"

    agent.start()
    wait_stack(stacks, stack_id, "CREATE_COMPLETE", agent)
    assert stacks.output(stack_id, "result") == "finished"
    assert (
        "slow-done" in stacks.deployment(stack_id, "slow_deployment").output_values["deploy_stdout"]
    )
    assert text_of(marker) == "run\nrun\n"  # the interrupted run ran again, once


# --- 6. transports -------------------------------------------------------------------------

TOUCH_SCRIPT = """\
#!/bin/sh
echo "$name" >> "$log"
printf '%s' "$name" > "$heat_outputs_path.name"
"""


def test_cfn_polling_cfn_signal_and_no_signal(
    stacks: Stacks, agents: list[Agent], tmp_path: Path
) -> None:
    """POLL_SERVER_CFN metadata (heat-api-cfn's DescribeStackResource, EC2-signed),
    a CFN_SIGNAL to the pre-signed heat-api-cfn URL, and a NO_SIGNAL deployment
    (Heat does not wait for it; mozagent still runs it)."""
    log = tmp_path / "ran.log"
    stack = template(
        {
            "server": server("POLL_SERVER_CFN"),
            "touch_config": config("script", TOUCH_SCRIPT, ["name", "log"], ["name"]),
            "cfn_deployment": deployment(
                "touch_config", {"name": "cfn", "log": str(log)}, transport="CFN_SIGNAL"
            ),
            "nosignal_deployment": deployment(
                "touch_config",
                {"name": "nosignal", "log": str(log)},
                transport="NO_SIGNAL",
                depends_on="cfn_deployment",
            ),
            "heat_deployment": deployment(
                "touch_config",
                {"name": "heat", "log": str(log)},
                transport="HEAT_SIGNAL",
                depends_on="nosignal_deployment",
            ),
        },
        {
            **OCC,
            "cfn_name": attr("cfn_deployment", "name"),
            "heat_name": attr("heat_deployment", "name"),
        },
    )
    stack_id = stacks.create(stack)
    occ = stacks.os_collect_config(stack_id)
    assert occ["collectors"][0] == "cfn" and "cfn" in occ, occ
    agent = agent_for(agents, tmp_path / "agent", occ)
    agent.start()
    wait_stack(stacks, stack_id, "CREATE_COMPLETE", agent)
    assert stacks.output(stack_id, "cfn_name") == "cfn"
    assert stacks.output(stack_id, "heat_name") == "heat"
    wait_for(lambda: text_of(log).count("\n") == 3, timeout=30, what="three runs")
    assert text_of(log).splitlines() == ["cfn", "nosignal", "heat"]
    assert agent.box.status_doc()["heat"]["in_use"] == "cfn"
    by_transport = {s["transport"]: s for s in agent.signals()}
    assert set(by_transport) == {"CFN_SIGNAL", "HEAT_SIGNAL"}
    assert all(s["state"] == "sent" for s in by_transport.values())
    nosignal = stacks.deployment(stack_id, "nosignal_deployment")
    assert nosignal.status == "COMPLETE"


def test_what_heat_cannot_do_here_without_swift_or_zaqar(stacks: Stacks) -> None:
    """POLL_TEMP_URL, TEMP_URL_SIGNAL, ZAQAR_MESSAGE and ZAQAR_SIGNAL need Swift
    or Zaqar in the catalog; this cloud has neither, so Heat refuses them
    before any instance is involved. This documents exactly where it stops."""
    cases = {
        "POLL_TEMP_URL": template({"server": server("POLL_TEMP_URL")}, OCC),
        "ZAQAR_MESSAGE": template({"server": server("ZAQAR_MESSAGE")}, OCC),
        "TEMP_URL_SIGNAL": template(
            {
                "server": server(),
                "c": config("script", "#!/bin/sh\n", [], []),
                "d": deployment("c", {}, transport="TEMP_URL_SIGNAL"),
            },
            OCC,
        ),
        "ZAQAR_SIGNAL": template(
            {
                "server": server(),
                "c": config("script", "#!/bin/sh\n", [], []),
                "d": deployment("c", {}, transport="ZAQAR_SIGNAL"),
            },
            OCC,
        ),
    }
    reasons = {}
    for name, tmpl in cases.items():
        stack_id = stacks.create(tmpl)
        stack = stacks.wait(stack_id, "CREATE_FAILED", timeout=120)
        reasons[name] = stack.stack_status_reason
    for name in ("POLL_TEMP_URL", "TEMP_URL_SIGNAL"):
        assert "object-store" in reasons[name], reasons
    for name in ("ZAQAR_MESSAGE", "ZAQAR_SIGNAL"):
        assert "messaging" in reasons[name], reasons


# --- 7. two servers, two agents ---------------------------------------------------------------

WHO_SCRIPT = """\
#!/bin/sh
printf '%s on %s' "$who" "$deploy_server_id" > "$heat_outputs_path.who"
"""


def test_two_deployed_servers_each_with_its_own_agent(
    stacks: Stacks, agents: list[Agent], tmp_path: Path
) -> None:
    stack = template(
        {
            "server_a": server(),
            "server_b": server(),
            "who_config": config("script", WHO_SCRIPT, ["who"], ["who"]),
            "deployment_a": deployment("who_config", {"who": "a"}, server_name="server_a"),
            "deployment_b": deployment("who_config", {"who": "b"}, server_name="server_b"),
        },
        {
            "occ_a": attr("server_a", "os_collect_config"),
            "occ_b": attr("server_b", "os_collect_config"),
            "who_a": attr("deployment_a", "who"),
            "who_b": attr("deployment_b", "who"),
        },
    )
    stack_id = stacks.create(stack)
    pair = [
        agent_for(agents, tmp_path / f"agent-{x}", stacks.os_collect_config(stack_id, f"occ_{x}"))
        for x in ("a", "b")
    ]
    for agent in pair:
        agent.start()
    wait_stack(stacks, stack_id, "CREATE_COMPLETE", *pair)
    servers = {
        x: stacks.heat.resources.get(stack_id, f"server_{x}").physical_resource_id for x in "ab"
    }
    assert stacks.output(stack_id, "who_a") == f"a on {servers['a']}"
    assert stacks.output(stack_id, "who_b") == f"b on {servers['b']}"
    # Each agent ran its own server's deployment, and only that one.
    for agent in pair:
        records = list(agent.deployments().values())
        assert len(records) == 1 and records[0]["state"] == "done", records
        assert [s["state"] for s in agent.signals()] == ["sent"]


# --- 8. Heat away while a signal waits --------------------------------------------------------

WAITING_SCRIPT = """\
#!/bin/sh
echo run >> "$marker"
while [ ! -e "$gate" ]; do sleep 0.2; done
printf '%s' "$(cat "$gate")" > "$heat_outputs_path.result"
"""


def waiting_stack(marker: Path, gate: Path) -> dict[str, Any]:
    """One script deployment that runs until the test opens its gate."""
    return template(
        {
            "server": server(),
            "wait_config": config("script", WAITING_SCRIPT, ["marker", "gate"], ["result"]),
            "wait_deployment": deployment(
                "wait_config", {"marker": str(marker), "gate": str(gate)}
            ),
        },
        {**OCC, "result": attr("wait_deployment", "result")},
    )


def pending_signal(agent: Agent) -> dict[str, Any] | None:
    """The outbox entry of a signal tried and not delivered yet."""
    entries = agent.signals()
    return next((e for e in entries if e["state"] == "pending" and e["attempts"] >= 1), None)


def test_signal_waits_while_heat_is_unreachable(
    cloud: HeatCloud, stacks: Stacks, agents: list[Agent], tmp_path: Path
) -> None:
    """heat-all frozen (SIGSTOP: its API accepts connections and never answers,
    its engine stands still) while the deployment's signal is due; once it runs
    again (SIGCONT) the signal is delivered and the stack completes.

    Freezing rather than killing: a heat-all killed while its convergence engine
    waits for a deployment leaves that stack IN_PROGRESS for good (Heat 19 resets
    only legacy-engine stacks at start); see the restart test below."""
    marker, gate = tmp_path / "runs", tmp_path / "gate"
    stack_id = stacks.create(waiting_stack(marker, gate))
    agent = agent_for(agents, tmp_path / "agent", stacks.os_collect_config(stack_id))
    agent.start()
    wait_for(lambda: text_of(marker), timeout=60, what="the deployment to start")
    heat_all = cloud.heat_server
    assert heat_all is not None
    heat_all.proc.send_signal(signal.SIGSTOP)
    try:
        gate.write_text("after-the-outage")
        entry = wait_for(
            lambda: pending_signal(agent), timeout=60, what="the signal tried and not delivered"
        )
        assert "HEAT_SIGNAL" in entry["last_error"], entry
        time.sleep(3)  # more tries while Heat is away
        assert pending_signal(agent)["attempts"] >= entry["attempts"]
    finally:
        heat_all.proc.send_signal(signal.SIGCONT)
    wait_stack(stacks, stack_id, "CREATE_COMPLETE", agent)
    assert stacks.output(stack_id, "result") == "after-the-outage"
    wait_for(
        lambda: [s["state"] for s in agent.signals()] == ["sent"],
        timeout=30,
        what="the outbox entry sent",
    )
    assert text_of(marker) == "run\n"


def test_signal_is_delivered_after_heat_all_restarts(
    cloud: HeatCloud, stacks: Stacks, agents: list[Agent], tmp_path: Path
) -> None:
    """heat-all stopped (SIGKILL after 5 s) and started again while the signal
    is due: mozagent delivers it when Heat is back (Heat's deployment is
    COMPLETE with its outputs). Heat's convergence engine does not resume the
    wait it lost with the process, so the stack stays CREATE_IN_PROGRESS until
    an update (the operator's recovery: PATCH, nothing changed) replaces the
    deployment; mozagent runs the new one, and the stack completes."""
    marker, gate = tmp_path / "runs", tmp_path / "gate"
    stack_id = stacks.create(waiting_stack(marker, gate))
    agent = agent_for(agents, tmp_path / "agent", stacks.os_collect_config(stack_id))
    agent.start()
    wait_for(lambda: text_of(marker), timeout=60, what="the deployment to start")
    first = stacks.deployment(stack_id, "wait_deployment")
    cloud.stop_heat()
    try:
        gate.write_text("after-the-restart")
        entry = wait_for(
            lambda: pending_signal(agent), timeout=60, what="the signal refused while Heat is down"
        )
        assert "HEAT_SIGNAL" in entry["last_error"], entry
    finally:
        cloud.start_heat()
    wait_for(
        lambda: stacks.heat.software_deployments.get(first.id).status == "COMPLETE",
        timeout=60,
        interval=0.5,
        what="the signal delivered after the restart",
    )
    delivered = stacks.heat.software_deployments.get(first.id)
    assert delivered.output_values["result"] == "after-the-restart"
    assert [s["state"] for s in agent.signals()] == ["sent"]
    time.sleep(3)
    assert stacks.get(stack_id).stack_status == "CREATE_IN_PROGRESS"  # Heat's loss, not ours

    stacks.update(stack_id)
    wait_stack(stacks, stack_id, "UPDATE_COMPLETE", agent)
    replaced = stacks.deployment(stack_id, "wait_deployment")
    assert replaced.id != first.id and replaced.status == "COMPLETE"
    assert stacks.output(stack_id, "result") == "after-the-restart"
    assert text_of(marker) == "run\nrun\n"  # the replacement deployment ran too


# --- 9. the reference service's stack (examples/heat/webapp.yaml) ------------------------


@pytest.mark.webservice
def test_the_reference_stack_completes_and_its_url_answers_with_the_page(
    stacks: Stacks, tmp_path: Path, zk_server: Any, puppet_bin: str
) -> None:
    """The blueprint's consumption section, on a real Heat: the HOT stack of
    SoftwareConfigs applying the tree's front ends (a database, then a Python
    vhost with ``vhost_name`` as an input) reaches CREATE_COMPLETE; once the
    app's release is installed, the stack's ``url`` output answers with the
    page, showing the app's data from ZooKeeper."""
    from mozagent_dev import webservice
    from tests.webhost import free_port, web_host

    needs = webservice.missing()
    if needs:
        pytest.fail(f"not installed: {', '.join(needs)} (tools/install-deps installs them)")
    port = free_port()
    template = yaml.safe_load(webservice.STACK.read_text())
    stack_id = stacks.create(template, port=port, vhost_name="webapp.realheat.test")
    occ = stacks.os_collect_config(stack_id)
    fast = {"poll_min": 0.2, "poll_max": 0.5, "signal_retry_max": 2}
    with web_host(tmp_path, zk_server.hosts, occ, port, **fast) as host:
        stacks.wait(stack_id, "CREATE_COMPLETE", timeout=400)
        url = stacks.output(stack_id, "url")
        assert url == f"http://127.0.0.1:{port}/"
        vhost = stacks.deployment(stack_id, "vhost_deployment")
        assert vhost.status == "COMPLETE" and vhost.output_values["deploy_status_code"] == 0
        conf = Path("/etc/apache2/sites-enabled/25-webapp.realheat.test.conf").read_text()
        assert "ServerName webapp.realheat.test" in conf and "WSGIDaemonProcess webapp" in conf
        host.deploy("v1")
        _, body = wait_for(
            lambda: (got := webservice.get(url))[0] == 200 and got,
            timeout=60,
            what=f"{url} to answer",
        )
        page = json.loads(body)
        assert (page["greeting"], page["release"], page["schema"]) == ("from zk", "v1", 2), page


# --- 10. Heat hands app data to ZooKeeper (examples/heat/app-data.yaml) ----------------------

APP_DATA = Path(__file__).resolve().parents[1] / "examples" / "heat" / "app-data.yaml"


def test_a_stack_sets_app_data_in_zookeeper_and_the_apps_hosts_converge_on_it(
    cloud: HeatCloud,
    stacks: Stacks,
    agents: list[Agent],
    tmp_path: Path,
    zk_server: Any,
    zk: Any,
    zk_root: str,
) -> None:
    """The blueprint's "heat passing data to zookeeper": the example stack's
    ``group: zookeeper`` deployment is written into app shop's layer by the
    agent it lands on, the data version comes back as an output, and another
    host of the app (no Heat at all) renders it; an update changes it, and
    deleting the stack removes it."""
    stack_id = stacks.create(yaml.safe_load(APP_DATA.read_text()), app="shop")
    data_host = agent_for(
        agents,
        tmp_path / "data-host",
        stacks.os_collect_config(stack_id),
        zk=(zk_server.hosts, zk_root),
    )
    data_host.start()
    (tmp_path / "web2").mkdir()
    web2 = Sandbox(tmp_path / "web2", zk_server.hosts, zk_root)
    web2.write_config(node="web2")
    web2.start_daemon()
    try:
        wait_stack(stacks, stack_id, "CREATE_COMPLETE", data_host)
        path = f"{zk_root}/apps/shop/data"
        assert stacks.output(stack_id, "zookeeper_path") == path
        version = stacks.output(stack_id, "data_version")
        assert isinstance(version, int) and version == max(
            zk.exists(f"{path}/{k}").mzxid for k in zk.get_children(path)
        )
        want = {"db_host": "db1.internal", "workers": 4, "greeting": "Hello from Heat"}
        for box in (web2, data_host.box):
            wait_for(lambda b=box: b.layer_file("app") == want, timeout=60, what="the app layer")
        assert web2.status_doc()["data_version"] >= version
        audit = f"{zk_root}/audit/apps/shop"
        entry = json.loads(zk.get(f"{audit}/{max(zk.get_children(audit))}")[0])
        assert entry["action"] == "heat.data" and entry["reason"].startswith("heat deployment")

        stacks.update(stack_id, workers=8, greeting="Updated by Heat")
        wait_stack(stacks, stack_id, "UPDATE_COMPLETE", data_host)
        want = {**want, "workers": 8, "greeting": "Updated by Heat"}
        wait_for(lambda: web2.layer_file("app") == want, timeout=60, what="the updated layer")
        assert stacks.output(stack_id, "data_version") > version

        # DELETE runs only when Nova says the server exists (the stand-in does).
        server_id = stacks.heat.resources.get(stack_id, "server").physical_resource_id
        cloud.compute.servers.add(server_id)
        stacks.heat.stacks.delete(stack_id)
        wait_stack(stacks, stack_id, "DELETE_COMPLETE", data_host)
        assert zk.get_children(path) == []
        wait_for(lambda: web2.layer_file("app") == {}, timeout=60, what="the keys removed")
    finally:
        web2.stop_daemons()
