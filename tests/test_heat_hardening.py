"""Heat metadata and signals under hostile or careless input (issue 13): real agent
processes against the Heat stand-in (``mozagent_dev/heatstub.py``), real scripts.

What a user sees is asserted: ``mozagent status`` (text, JSON, exit code), the
signals the stand-in receives, the daemon's exit code and message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mozagent_dev.heatstub import HeatStub
from tests.conftest import wait_for
from tests.test_heat import HeatBox, heat_box, running_stub

MiB = 1024 * 1024


@pytest.fixture
def stub() -> Iterator[HeatStub]:
    with running_stub() as server:
        yield server


@pytest.fixture
def heat(tmp_path: Path, stub: HeatStub, puppet_bin: str) -> Iterator[HeatBox]:
    with heat_box(tmp_path, stub) as hb:
        yield hb


def _errors(box: Any) -> list[dict[str, str]]:
    return ((box.status_doc() or {}).get("errors") or {}).get("heat") or []


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM): what a fault path cost at most."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _polls_after_last_get(stub: HeatStub) -> int:
    """HEADs answered since the last GET: polls that found the document unchanged."""
    last_get = stub.served[-1][0] if stub.served else 0.0
    return sum(1 for t in stub.head_times if t > last_get)


@pytest.mark.parametrize(
    "serve",
    ["truncated JSON", "not a mapping"],
)
def test_unusable_metadata_stays_an_error_while_it_is_served(heat: HeatBox, serve: str) -> None:
    """Polls that find the unusable document unchanged (HEAD, same Last-Modified)
    keep the error: status is exit 3 with what is wrong and since when, and
    "last success" stays the last usable document."""
    box, stub = heat.box, heat.stub
    stub.set_metadata({"deployments": [heat.deployment("u-1", "script", "#!/bin/sh\n")]})
    box.start_daemon()
    wait_for(lambda: stub.signals_for("u-1"), timeout=60, what="the good deployment signalled")
    wait_for(lambda: box.status()[0] == 0, timeout=30, what="a healthy status")
    good = box.status_doc()["heat"]["collectors"]
    last_ok = next(c["last_ok"] for c in good if c["collector"] == "request")

    stub.set_raw(b'{"deployments": [{"id": "u-2"' if serve == "truncated JSON" else b"[1, 2]")
    wait_for(lambda: _errors(box), timeout=30, what="the unusable metadata reported")
    # Past Last-Modified's second (the agent fetches again until then), then
    # three polls that found the document unchanged.
    wait_for(lambda: _polls_after_last_get(stub) >= 3, timeout=30, what="unchanged polls")
    code, doc = box.status()
    assert code == 3, doc["errors"]
    (error,) = [e for e in doc["errors"]["heat"] if "request" in e["where"]]
    why = "not valid JSON" if serve == "truncated JSON" else "is a list, not a mapping"
    assert why in error["message"] and "unusable since 20" in error["message"], error
    request = next(c for c in doc["heat"]["collectors"] if c["collector"] == "request")
    assert request["last_ok"] == last_ok  # no success while the document is unusable
    text = box.cli("status").stdout
    assert "request: UNUSABLE since" in text and "errors: none" not in text, text

    # Fixed: the error clears and the new deployment runs.
    stub.set_metadata({"deployments": [heat.deployment("u-3", "script", "#!/bin/sh\n")]})
    wait_for(lambda: stub.signals_for("u-3"), timeout=60, what="the fixed metadata used")
    wait_for(lambda: box.status()[0] == 0, timeout=30, what="the error cleared")


@pytest.mark.parametrize(
    "source",
    ["HTTP with Content-Length", "HTTP without Content-Length", "local file"],
)
def test_a_100_mb_document_is_refused_while_it_is_read(heat: HeatBox, source: str) -> None:
    """The size limit holds while reading, whatever the source sends: memory
    stays flat (the agent's peak RSS, not a sample), status names the limit."""
    box, stub = heat.box, heat.stub
    stub.set_metadata({"deployments": [heat.deployment("m-1", "script", "#!/bin/sh\n")]})
    proc = box.start_daemon()
    wait_for(lambda: stub.signals_for("m-1"), timeout=60, what="the good deployment signalled")
    if source == "local file":
        with open(heat.local, "r+b") as fh:  # sparse: 100 MB on no disk
            fh.truncate(100 * MiB)
        collector = "heat_local"
    else:
        stub.set_generated(100 * MiB, content_length=source == "HTTP with Content-Length")
        collector = "request"
    wait_for(
        lambda: any(collector in e["where"] for e in _errors(box)),
        timeout=30,
        what="the document refused",
    )
    time.sleep(3)  # a few more polls, and the refetches within Last-Modified's second
    code, doc = box.status()
    assert code == 3
    (error,) = [e for e in doc["errors"]["heat"] if collector in e["where"]]
    assert "over the 16 MiB limit" in error["message"], error
    assert proc.poll() is None
    assert _peak_rss_mib(proc.pid) < 120, _peak_rss_mib(proc.pid)
    if source != "local file":
        # It stopped reading (what the server could write includes socket buffers).
        assert stub.generated_sent and max(stub.generated_sent) < 24 * MiB, stub.generated_sent
    # The last good metadata is still in use: its deployment is not run again.
    assert len(stub.signals_for("m-1")) == 1


DEEP_VALUE = "[" * 1000 + "]" * 1000


def test_one_bad_deployment_fails_alone_and_the_others_run(heat: HeatBox, tmp_path: Path) -> None:
    """Per-deployment bounds: nesting (as JSON and as a Json string), size and
    output names each fail their own deployment, signalled FAILED with the
    reason; the deployments around them run."""
    box, stub = heat.box, heat.stub
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the outputs directory")
    deep = heat.deployment("b-deep", "script", "#!/bin/sh\necho ran > /dev/null\n")
    deep["inputs"].append({"name": "nested", "type": "Json", "value": "DEEP-HERE"})
    deep_string = heat.deployment("b-deepstr", "script", "#!/bin/sh\n")
    deep_string["inputs"].append({"name": "nested", "type": "Json", "value": DEEP_VALUE})
    huge = heat.deployment("b-huge", "script", "#!/bin/sh\n# " + "x" * (3 * MiB) + "\n")
    escape = os.path.relpath(secret, box.state / "heat" / "outputs")
    outputs = heat.deployment("b-outputs", "script", "#!/bin/sh\n", outputs=[{"name": escape}])
    deps = [
        heat.deployment("b-first", "script", "#!/bin/sh\necho first\n"),
        deep,
        deep_string,
        huge,
        outputs,
        heat.deployment("b-last", "script", "#!/bin/sh\necho last\n"),
    ]
    # Python cannot even write the deep value as JSON: the document is made as text.
    stub.set_raw(json.dumps({"deployments": deps}).replace('"DEEP-HERE"', DEEP_VALUE).encode())
    box.start_daemon()
    wait_for(lambda: len(stub.signals) == 6, timeout=90, what="six signals")
    assert [s[1] for s in stub.signals] == [d["id"] for d in deps]  # in list order
    for dep_id, text in (("b-first", "first"), ("b-last", "last")):
        body = stub.signals_for(dep_id)[0]
        assert body["deploy_status_code"] == 0 and text in body["deploy_stdout"], body
    expected = {
        "b-deep": "input 'nested' is nested deeper than 64 levels",
        "b-deepstr": "input 'nested' is nested deeper than 64 levels",
        "b-huge": "over the 2 MiB limit for one deployment",
        "b-outputs": "is not a plain file name",
    }
    for dep_id, why in expected.items():
        body = stub.signals_for(dep_id)[0]
        assert body["deploy_status_code"] != 0, body
        assert why in body["deploy_stderr"], body["deploy_stderr"]
        assert "outside the outputs directory" not in json.dumps(body)
    code, doc = box.status()
    assert code == 1  # deployments failed; the document itself is fine
    states = {d["id"]: d["state"] for d in doc["deployments"]}
    assert states == {d["id"]: "failed" if d["id"] in expected else "done" for d in deps}


def test_long_ids_are_trimmed_for_display_and_removed_deployments_say_so(
    heat: HeatBox,
) -> None:
    """A 5,000-character id is the id (records, signals, status JSON) but status
    prints 64 characters of it; a deployment that left the metadata is listed
    as removed, no longer counts for health, and is not run again if it comes back."""
    box, stub = heat.box, heat.stub
    long_id = "L" * 5000
    marker = box.root / "runs"
    fails = heat.deployment("r-fails", "script", "#!/bin/sh\nexit 3\n")
    stays = heat.deployment(long_id, "script", f"#!/bin/sh\necho run >> {marker}\n")
    stub.set_metadata({"deployments": [fails, stays]})
    box.start_daemon()
    wait_for(lambda: len(stub.signals) == 2, timeout=60, what="two signals")
    assert stub.signals_for(long_id)
    wait_for(lambda: box.status()[0] == 1, timeout=30, what="the failed deployment in status")
    text = box.cli("status").stdout
    assert long_id not in text and "L" * 64 + "…" in text, text
    assert long_id in {d["id"] for d in box.status()[1]["deployments"]}

    stub.set_metadata({"deployments": [stays]})  # the stack deleted r-fails
    wait_for(lambda: box.status()[0] == 0, timeout=30, what="the removed failure not counted")
    text = box.cli("status").stdout
    assert "failed, removed from metadata at" in text, text

    stub.set_metadata({"deployments": [fails, stays]})  # back again: not run again
    wait_for(
        lambda: (
            not any(d.get("removed") for d in (box.status_doc() or {}).get("deployments") or [])
        ),
        timeout=30,
        what="back in the metadata",
    )
    time.sleep(2)
    assert len(stub.signals) == 2 and marker.read_text().count("run") == 1


def test_a_dead_signal_endpoint_does_not_hold_up_another_deployments_signal(
    heat: HeatBox,
) -> None:
    """One deployment's signal URL is on a server that accepts and never answers;
    the next deployment's signal reaches its own server while that request is
    still held open (its timeout is far longer than the wait)."""
    box, stub = heat.box, heat.stub
    heat.heat_settings["request_timeout"] = 60
    heat.write()
    with running_stub() as dead:
        dead.hold_signals = True
        held = heat.deployment("s-dead", "script", "#!/bin/sh\n", "CFN_SIGNAL")
        for item in held["inputs"]:
            if item["name"] == "deploy_signal_id":
                item["value"] = f"{dead.url}/cfn/s-dead?signature=x"
        stub.set_metadata(
            {"deployments": [held, heat.deployment("s-live", "script", "#!/bin/sh\n")]}
        )
        box.start_daemon()
        wait_for(lambda: dead.holding >= 1, timeout=60, what="the dead endpoint holding a send")
        wait_for(lambda: stub.signals_for("s-live"), timeout=20, what="the other signal")
        assert dead.holding >= 1 and dead.signals == []  # still held: nothing was answered


def test_heat_without_the_heat_extra_exits_2_at_start(heat: HeatBox, tmp_path: Path) -> None:
    """A mozagent installed without [heat] and a config with heat: stops at once,
    naming the extra and the install command (it looped on a traceback)."""
    shadow = tmp_path / "shadow" / "oslo_config"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'oslo_config'\", name='oslo_config')\n"
    )
    path = [str(shadow.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    res = subprocess.run(
        [sys.executable, "-m", "mozagent", "daemon", "--config", str(heat.box.config_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=heat.box.root,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert "heat: needs mozagent's heat extra" in res.stderr
    assert "pip install 'mozagent[heat]'" in res.stderr and "oslo_config" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (heat.box.state / "status.json").exists()  # refused before starting


def test_the_heat_collector_reads_metadata_under_the_limit(stub: HeatStub) -> None:
    """POLL_SERVER_HEAT: heatclient reads whole bodies; the heat client the heat
    collector is given reads the resource metadata streamed, and stops at the
    limit (no Keystone here: the client is made as the collector makes it, with
    a token, against the stand-in's Heat API path)."""
    from mozagent.sources.collectors import _heat_clients

    client = _heat_clients(10.0)["heatclient"].Client("1", f"{stub.url}/v1/p", token="t")
    stub.set_metadata({"deployments": []})
    assert client.resources.metadata("stack/id", "server") == {"deployments": []}
    stub.set_generated(100 * MiB, content_length=False)
    with pytest.raises(Exception, match="over the 16 MiB limit"):
        client.resources.metadata("stack/id", "server")
    # The stand-in's thread sees the client hang up on its next write.
    wait_for(lambda: stub.generated_sent, timeout=10, what="the stand-in's write refused")
    assert max(stub.generated_sent) < 24 * MiB, stub.generated_sent


# A string that never closes, after enough brackets to be scanned for depth:
# the old scanner rescanned the rest of the text from every later quote
# (a 40 KB one took 10 s with every thread held, 1 MiB would take hours).
SLOW_STRINGS = {
    "escape-heavy": "[" * 65 + '"\\' * (MiB // 2),
    "unterminated": "[" * 129 + '"' + "a\\\\b" * (MiB // 4),
}


@pytest.mark.parametrize("kind", SLOW_STRINGS)
def test_a_long_unterminated_string_is_judged_in_linear_time(kind: str) -> None:
    """1 MiB of it is judged within a second or two, as a Json input (kept as
    the string it is: not JSON) and as a whole document (not valid JSON, with
    the decoder's reason); a deep value around an escape-heavy string is still cut."""
    from mozagent.desired.deployments import TOO_DEEP, loads_bounded, typed_value

    text = SLOW_STRINGS[kind]
    started = time.monotonic()
    assert typed_value("Json", text) == text
    with pytest.raises(ValueError, match="Unterminated string"):
        loads_bounded(text)
    deep = loads_bounded("[" * 200 + json.dumps("\\" * MiB + '"]') + "]" * 200 + "  ")
    assert time.monotonic() - started < 2.0
    for _ in range(128):
        (deep,) = deep
    assert deep == TOO_DEEP


class _Desk:
    """The executor's side of Heat deployments in-process, on a tmp state dir:
    the real queue, records, outbox and status, and a script applier of our
    own. ``start`` runs the next deployment on a thread of its own (the
    executor's) and holds it inside its run until ``finish``: the Heat
    thread's calls (the test's) are forced in between."""

    def __init__(self, state: Path) -> None:
        from mozagent.apply.deployments import (
            Applier,
            DeploymentLog,
            DeploymentQueue,
            DeploymentResult,
            DeploymentRunner,
            Reapply,
        )
        from mozagent.report.heat import HeatReport
        from mozagent.report.signals import Outbox
        from mozagent.report.status import StatusStore

        self.state = state
        self.log = DeploymentLog(str(state))
        self.queue = DeploymentQueue(self.log, Reapply(str(state)))
        self.outbox = Outbox(str(state))
        report = HeatReport(StatusStore(str(state / "status.json"), {}), self.log, self.outbox)
        self.runs: list[str] = []
        self._inside, self._release = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        desk = self

        class Script(Applier):
            group = "script"

            def run(self, dep: Any, outputs_path: str) -> DeploymentResult:
                desk.runs.append(dep.id)
                desk._inside.set()
                assert desk._release.wait(10)
                return DeploymentResult(0, "ran", "", {})

        self.runner = DeploymentRunner(
            str(state), self.queue, {}, Script(), self.outbox, report.refresh
        )

    @staticmethod
    def deployments(*ids: str) -> list[Any]:
        from mozagent.desired.deployments import parse_deployments
        from mozagent_dev.heatstub import inputs

        raw = [
            {"id": i, "group": "script", "config": "", "inputs": inputs("CFN_SIGNAL", "http:", i)}
            for i in ids
        ]
        return parse_deployments({"deployments": raw})[0]

    def start(self) -> None:
        dep = self.queue.next()
        assert dep is not None
        self._inside.clear()
        self._release.clear()
        self._thread = threading.Thread(target=self.runner.run, args=(dep,), daemon=True)
        self._thread.start()
        assert self._inside.wait(10)

    def finish(self) -> None:
        assert self._thread is not None
        self._release.set()
        self._thread.join(10)
        assert not self._thread.is_alive()

    def drain(self) -> None:
        """Every deployment still to run, as the executor takes them."""
        self._release.set()
        for _ in range(10):
            dep = self.queue.next()
            if dep is None:
                return
            self.runner.run(dep)
        raise AssertionError("the queue never emptied")

    def shown(self, dep_id: str) -> dict[str, Any]:
        """The deployment as ``mozagent status --json`` shows it."""
        doc = json.loads((self.state / "status.json").read_text())
        return next(d for d in doc["deployments"] if d["id"] == dep_id)


@pytest.mark.parametrize("when", ["within the run", "read before the end, written after"])
def test_a_deployment_removed_while_it_runs_stays_done_and_is_not_run_again(
    tmp_path: Path, when: str
) -> None:
    """The Heat thread marks records removed while the executor runs one of them,
    forced in both orders: the run's end and the mark are both kept (the mark
    was lost, or the record went back to "running"), and when the deployment
    comes back it is not run or signalled again."""
    desk = _Desk(tmp_path)
    (dep,) = desk.deployments("x")
    desk.queue.offer([dep])
    desk.start()
    if when == "within the run":
        desk.queue.offer([])
        desk.finish()
    else:
        listed, once = desk.log.records, [desk.finish]

        def records() -> list[dict[str, Any]]:
            found = listed()  # the Heat thread has read the records,
            while once:
                once.pop()()  # the run ends and is written,
            return found  # then the Heat thread writes what it read

        desk.log.records = records  # type: ignore[method-assign]
        desk.queue.offer([])
        desk.log.records = listed  # type: ignore[method-assign]
    shown = desk.shown("x")
    assert shown["state"] == "done" and shown["removed"], shown
    desk.queue.offer([dep])  # the same id comes back
    desk.drain()
    assert desk.runs == ["x"] and len(desk.outbox.entries()) == 1
    shown = desk.shown("x")
    assert shown["state"] == "done" and shown["removed"] is None, shown


def test_an_offer_that_saw_a_run_under_way_does_not_run_it_again(tmp_path: Path) -> None:
    """The Heat thread offers new metadata while a deployment runs: it reads that
    record as running (to be run), the run ends, then the offer sets its list.
    Forced through the offer's clock: the finished deployment is not run again."""
    desk = _Desk(tmp_path)
    x, y = desk.deployments("x", "y")
    desk.queue.offer([x])
    desk.start()
    read = desk.log.get
    seen: list[str] = []

    def get(dep_id: str) -> dict[str, Any] | None:
        record = read(dep_id)
        seen.append(f"{dep_id} {(record or {}).get('state')}")
        return record

    def clock() -> float:  # the offer's clock: read for y's new record
        if "x running" in seen and not desk.runs[1:]:
            desk.finish()  # the run of x ends between the read and the list
        return time.time()

    desk.log.get = get  # type: ignore[method-assign]
    desk.queue.offer([x, y], now=clock)
    desk.log.get = read  # type: ignore[method-assign]
    assert "x running" in seen
    desk.drain()
    assert desk.runs == ["x", "y"] and len(desk.outbox.entries()) == 2


@pytest.mark.parametrize("reply", ["a JSON reply", "no JSON"])
def test_a_hook_run_that_could_not_be_cleaned_up_says_so_in_deploy_stderr(
    tmp_path: Path, reply: str
) -> None:
    """A hook's reply gives its own deploy_stderr; mozagent's judgement of the
    run (here: a process it could not stop, forced by a containment of our own
    that fails) is added to it, and the deployment fails."""
    from mozagent.apply.hook import HookApplier
    from mozagent.apply.process import ChildRunner, Ledger
    from tests.test_isolation import Stubborn

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    said = '{"deploy_stdout": "out", "deploy_stderr": "hook says", "deploy_status_code": 0}'
    (hooks / "ansible").write_text(
        f"#!/bin/sh\ncat > /dev/null\necho {json.dumps(said) if reply == 'a JSON reply' else 'x'}\n"
    )
    (hooks / "ansible").chmod(0o755)
    (dep,) = _Desk.deployments("h")
    dep = dataclasses.replace(dep, group="ansible")
    ledger = Ledger(str(tmp_path / "running.json"), Stubborn())
    applier = HookApplier((str(hooks),), ChildRunner(threading.Event(), ledger), 10)
    body = applier.run(dep, str(tmp_path / "outputs")).body()
    assert body["deploy_status_code"] == 1, body
    stderr = body["deploy_stderr"]
    assert "mozagent: the ansible hook ended, but 1 process(es) of the run could not" in stderr
    if reply == "a JSON reply":
        assert stderr.startswith("hook says\n") and body["deploy_stdout"] == "out", body
    else:
        assert "did not print a JSON object" in stderr, body


def test_signal_order_is_kept_per_deployment_not_across_a_backoff(tmp_path: Path) -> None:
    """What signals.py and the README now say (they said "order kept per
    server"): a signal waiting out its backoff lets a later one to the same
    server go first, and a deployment has one signal at a time, its latest."""
    from mozagent.desired.deployments import SignalTarget
    from mozagent.report.signals import Outbox, Sender
    from mozagent.report.status import StatusStore
    from mozagent.runtime import Progress, Worker

    outbox = Outbox(str(tmp_path))
    for dep_id in ("older", "later"):
        target = SignalTarget("CFN_SIGNAL", f"http://127.0.0.1:9/cfn/{dep_id}")
        outbox.put(dep_id, target, {"deploy_status_code": 0, "run": 1})
    outbox.update("older", attempts=3, next_try=time.time() + 3600)  # in backoff
    outbox.put("later", target, {"deploy_status_code": 0, "run": 2})  # a re-run's
    sent: list[tuple[str | None, int]] = []

    def transport(target: SignalTarget, body: dict[str, Any], timeout: float) -> int:
        sent.append((target.url, body["run"]))
        return 200

    status = StatusStore(str(tmp_path / "status.json"), {})
    worker = Worker("signals", Progress(), status)
    Sender(outbox, worker, threading.Event(), 60, 1, lambda: None, transport).run_once()
    assert sent == [("http://127.0.0.1:9/cfn/later", 2)]
    states = outbox.states()
    assert states["later"]["state"] == "sent" and states["older"]["state"] == "pending"


SLOW = 1.5  # heat.request_timeout against a server that sends a byte every 0.3 s


def _slow_poll(collector: str, stub: HeatStub, state: Path) -> Any:
    """One poll of ``collector`` against the stand-in, as the Heat source makes
    it (the heat and zaqar collectors need Keystone: their clients are made as
    the collector makes them, against the stand-in's paths)."""
    from mozagent.sources import collectors as c

    if collector in ("request", "ec2"):
        collectors = c.Collectors(str(state), None, SLOW)
        url = f"{stub.url}/metadata" if collector == "request" else f"{stub.url}/latest"
        assert collectors.configure(collector, {"metadata_url": url}) == []
        return lambda: collectors.collect(collector)
    if collector == "heat":
        client = c._heat_clients(SLOW)["heatclient"].Client("1", f"{stub.url}/v1/p", token="t")
        return lambda: client.resources.metadata("stack/id", "server")
    auth = {"auth_opts": {"backend": "noauth", "options": {"os_project_id": "p"}}}
    zaqar = c._zaqar_clients(SLOW)["zaqarclient"].Client(stub.url, conf=auth, version=2)
    return lambda: next(zaqar.queue("q").pop())


@pytest.mark.parametrize("collector", ["request", "ec2", "heat", "zaqar"])
def test_a_metadata_server_that_trickles_its_body_fails_the_poll_in_time(
    stub: HeatStub, tmp_path: Path, collector: str
) -> None:
    """requests' timeout is per read: a byte every 0.3 s never trips a 1.5 s
    timeout, and a 300-byte document took 90 s (a large one outlasts the
    watchdog). The read has a deadline of request_timeout in all: the poll
    fails in about that time, saying so."""
    stub.set_metadata({"deployments": [], "padding": "x" * 260})
    poll = _slow_poll(collector, stub, tmp_path)
    stub.trickle = 0.3
    started = time.monotonic()
    with pytest.raises(Exception, match=r"did not arrive within 1.5 s \(heat.request_timeout\)"):
        poll()
    assert time.monotonic() - started < SLOW + 2.0
