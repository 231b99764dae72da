"""The warm runner is ``puppet apply``: a corpus of manifests run through both
runners in the same test, comparing exit code, resource counts, the files
written and the run's messages, with what a run reads (manifests, Hiera data,
facts of every kind, modules' Ruby code) changed between runs.

One warm parent serves the whole module, as one serves an agent's runs: a
case that left it stale would show in a later one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from mozagent.apply.process import ChildRunner, LaunchFailed
from mozagent.apply.puppet import ApplyItem, ApplyResult, PuppetPaths, build_command, run_puppet
from mozagent.apply.warm import Warming, WarmPuppet
from mozagent.config import PuppetConfig
from tests.conftest import Sandbox, wait_for
from tests.test_agent import app_path, put


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warm")


@pytest.fixture(scope="module")
def warm(home: Path, puppet_bin: str) -> Iterator[WarmPuppet]:
    runner = WarmPuppet(PuppetConfig(), str(home / "state"))
    runner.wait_ready()
    yield runner
    runner.stop()


class Case:
    """One test's puppet world: Hiera data, facts, a modulepath, an output dir."""

    def __init__(self, root: Path, warm: WarmPuppet) -> None:
        self.root, self.warm = root, warm
        self.out = root / "out"
        self.modules = root / "modules"
        self.modules.mkdir()
        self.data = root / "hd"
        self.data.mkdir()
        (root / "hiera.yaml").write_text(
            f"version: 5\ndefaults:\n  datadir: {self.data}\n  data_hash: yaml_data\n"
            "hierarchy:\n  - name: node\n    path: node.yaml\n"
            "  - name: common\n    path: common.yaml\n"
        )
        self.hiera("common", greeting="from-common")
        self.facts = root / "facts.d"
        self.facts.mkdir()
        self.fact_file(mozagent_app="shop")
        self.paths = PuppetPaths(str(root / "hiera.yaml"), str(self.facts), str(root / "work"))
        self.env: dict[str, str] = {}

    def hiera(self, level: str, **data: object) -> None:
        (self.data / f"{level}.yaml").write_text(json.dumps(data))

    def fact_file(self, **facts: object) -> None:
        (self.facts / "mozagent.json").write_text(json.dumps(facts))

    def cfg(self, **kw: object) -> PuppetConfig:
        args: dict[str, object] = {
            "extra_args": ("--vardir", str(self.root / "var")),
            "modulepath": (str(self.modules),),
            "timeout": 120,
        }
        args.update(kw)
        return PuppetConfig(**args)  # type: ignore[arg-type]

    def module_file(self, path: str, text: str) -> None:
        target = self.modules / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def run(
        self, body: str, warm: bool, cfg: PuppetConfig | None = None, **item: object
    ) -> ApplyResult:
        manifest = self.root / "site.pp"
        manifest.write_text(body.replace("OUT", str(self.out)))
        cfg = cfg or self.cfg()
        apply_item = ApplyItem("site.pp", str(manifest), env=dict(self.env), **item)  # type: ignore[arg-type]
        if warm:
            warmed_for(self.warm, cfg, apply_item, self.paths)
        served = self.warm.served
        res = run_puppet(
            cfg,
            apply_item,
            self.paths,
            ChildRunner(threading.Event()),
            warm=self.warm if warm else None,
        )
        fell_back = [line for line in res.output_tail if "run with puppet apply" in line]
        if warm:
            assert self.warm.served == served + 1 and not fell_back, res.output_tail
        return res

    def files(self) -> dict[str, str]:
        if not self.out.exists():
            return {}
        return {
            str(p.relative_to(self.out)): p.read_text()
            for p in sorted(self.out.rglob("*"))
            if p.is_file()
        }

    def both(self, body: str, **kw: object) -> tuple[ApplyResult, dict[str, str]]:
        """The same run, from the same starting files, exec'd then warm: equal."""
        seen = []
        before = self.files()
        for warm in (False, True):
            shutil.rmtree(self.out, ignore_errors=True)
            self.out.mkdir()
            for name, text in before.items():
                (self.out / name).parent.mkdir(parents=True, exist_ok=True)
                (self.out / name).write_text(text)
            res = self.run(body, warm, **kw)  # type: ignore[arg-type]
            seen.append((res, self.files()))
        (plain, plain_files), (hot, hot_files) = seen
        assert judged(hot) == judged(plain)
        assert hot_files == plain_files
        assert messages(hot) == messages(plain)
        return hot, hot_files


def warmed_for(warm: WarmPuppet, cfg: PuppetConfig, item: ApplyItem, paths: PuppetPaths) -> None:
    """A parent warm and fresh for this run (a run finding one still warming
    is exec'd: that is the next test's)."""
    cmd = build_command(cfg, item, paths, "unused")
    try:
        warm.prepare(cmd)
    except Warming:
        warm.wait_ready()
        warm.prepare(cmd)


def judged(res: ApplyResult) -> tuple[object, ...]:
    return (res.ok, res.exit_code, res.message, res.changed, res.failed, res.total)


# Timings, and facter's complaint about /proc/1/environ here (as many as
# facter resolves, which is not the point).
NOISE = re.compile(r"in [0-9.]+ seconds|[0-9]+\.[0-9]+ seconds")


def messages(res: ApplyResult) -> list[str]:
    return [NOISE.sub("in N seconds", line) for line in res.output_tail if "/proc/1/" not in line]


@pytest.fixture
def case(tmp_path: Path, warm: WarmPuppet) -> Case:
    return Case(tmp_path, warm)


FILE = "file { 'OUT/f': content => \"%s\\n\" }\n"


def test_changes_then_none(case: Case) -> None:
    res, files = case.both(FILE % "one")
    assert res.exit_code == 2 and files == {"f": "one\n"}
    res, _ = case.both(FILE % "one")
    assert res.exit_code == 0 and res.message == "applied, no changes"


def test_a_compile_error(case: Case) -> None:
    res, files = case.both("file { 'OUT/f': content => }\n")
    assert res.exit_code == 1 and not res.ok and files == {}
    assert any("Syntax error" in line for line in res.output_tail), res.output_tail


def test_a_failed_resource_and_one_that_changed(case: Case) -> None:
    body = FILE % "x" + "exec { 'fails': command => '/bin/false' }\n"
    res, files = case.both(body)
    assert res.exit_code == 6 and res.failed == 1 and files == {"f": "x\n"}


def test_an_exec_that_times_out(case: Case) -> None:
    res, _ = case.both("exec { 'slow': command => '/bin/sleep 30', timeout => 1 }\n")
    assert res.exit_code == 4 and res.failed == 1
    assert "Error: Command exceeded timeout" in messages(res)


def test_lookup_from_each_hiera_level_and_heat_inputs(case: Case) -> None:
    body = (
        "file { 'OUT/f': content => \"${lookup('greeting')} ${lookup('port', undef, undef, 0)}"
        " ${lookup('from_heat', undef, undef, 'none')}\\n\" }\n"
    )
    _, files = case.both(body)
    assert files == {"f": "from-common 0 none\n"}
    case.hiera("node", port=8080, greeting="from-node")
    _, files = case.both(body)
    assert files == {"f": "from-node 8080 none\n"}
    case.hiera("node", port=8081)
    (case.data / "heat.yaml").write_text(json.dumps({"from_heat": "input-1"}))
    (case.root / "hiera.yaml").write_text(
        (case.root / "hiera.yaml")
        .read_text()
        .replace("hierarchy:\n", "hierarchy:\n  - name: heat\n    path: heat.yaml\n")
    )
    _, files = case.both(body)
    assert files == {"f": "from-common 8081 input-1\n"}


def test_facts_of_every_kind_seen_fresh(case: Case) -> None:
    body = (
        "file { 'OUT/f': content => \"${facts['mozagent_app']} ${facts['from_env']}"
        " ${facts['custom_one']}\\n\" }\n"
    )
    case.env = {"FACTER_from_env": "env-1"}
    case.module_file(
        "site/lib/facter/custom_one.rb",
        "Facter.add(:custom_one) { setcode { 'custom-1' } }\n",
    )
    _, files = case.both(body)
    assert files == {"f": "shop env-1 custom-1\n"}
    case.env = {"FACTER_from_env": "env-2"}
    case.fact_file(mozagent_app="blog")
    case.module_file(
        "site/lib/facter/custom_one.rb",
        "Facter.add(:custom_one) { setcode { 'custom-2' } }\n",
    )
    _, files = case.both(body)
    assert files == {"f": "blog env-2 custom-2\n"}


def test_a_custom_function_type_and_provider_changed_between_runs(case: Case) -> None:
    def module(version: int) -> None:
        case.module_file(
            "site/lib/puppet/functions/site/greet.rb",
            "Puppet::Functions.create_function(:'site::greet') do\n"
            f'  def greet(who) "hello #{{who}} v{version}" end\nend\n',
        )
        case.module_file(
            "site/lib/puppet/type/note.rb",
            "Puppet::Type.newtype(:note) do\n  newparam(:name, namevar: true)\n"
            "  newproperty(:text)\nend\n",
        )
        case.module_file(
            "site/lib/puppet/provider/note/file.rb",
            "Puppet::Type.type(:note).provide(:file) do\n"
            "  def text; File.exist?(path) ? File.read(path) : nil; end\n"
            f"  def text=(v); File.write(path, v + ' p{version}'); end\n"
            "  def path; resource[:name]; end\nend\n",
        )

    body = (
        "file { 'OUT/f': content => \"${site::greet('web')}\\n\" }\n"
        "note { 'OUT/note': text => 'noted' }\n"
    )
    module(1)
    _, files = case.both(body)
    assert files == {"f": "hello web v1\n", "note": "noted p1"}
    module(2)
    _, files = case.both(body)
    assert files == {"f": "hello web v2\n", "note": "noted p2"}


def test_tags_and_noop(case: Case) -> None:
    body = (
        "file { 'OUT/a': content => 'a', tag => ['web'] }\n"
        "file { 'OUT/b': content => 'b', tag => ['db'] }\n"
    )
    _, files = case.both(body, options={"tags": "web"})
    assert files == {"a": "a"}
    res, files = case.both(
        body, cfg=case.cfg(extra_args=("--vardir", str(case.root / "var"), "--noop"))
    )
    assert files == {"a": "a"} and res.exit_code in (0, 2)
    assert any("noop" in line for line in res.output_tail), res.output_tail


def test_a_module_added_between_runs(case: Case) -> None:
    body = "include extra\n"
    res, _ = case.both(body)
    assert res.exit_code == 1
    resource = (FILE % "extra").replace("OUT", str(case.out))
    case.module_file("extra/manifests/init.pp", "class extra { " + resource + "}\n")
    _, files = case.both(body)
    assert files == {"f": "extra\n"}


def test_a_run_killed_by_its_timeout_leaves_nothing(case: Case) -> None:
    body = "exec { 'hang': command => '/bin/sleep 600', timeout => 0 }\n"
    res, _ = case.both(body, cfg=case.cfg(timeout=4))
    assert res.message == "failed: puppet timed out after 4 s"
    assert not [p for p in _pids() if _cmdline(p) == b"/bin/sleep\x00600\x00"]


def test_the_parent_restarts_when_what_it_loaded_changes(case: Case, warm: WarmPuppet) -> None:
    case.run(FILE % "one", True)
    first = warm.info()["pid"]
    case.run(FILE % "two", True)
    assert warm.info()["pid"] == first  # reused while nothing changed
    case.module_file("site/lib/facter/new.rb", "Facter.add(:new_one) { setcode { 1 } }\n")
    case.run(FILE % "three", True)
    assert warm.info()["pid"] != first and "modulepath" in warm.info()["last_end"]


def test_a_binary_that_cannot_run_warm_is_said_once_and_every_run_is_execd(
    tmp_path: Path, case: Case
) -> None:
    broken = WarmPuppet(PuppetConfig(binary="/bin/true"), str(tmp_path / "state"))
    manifest = tmp_path / "m.pp"
    case.out.mkdir()
    said = []
    for text in ("one", "two"):
        manifest.write_text(FILE.replace("OUT", str(case.out)) % text)
        res = run_puppet(
            case.cfg(),
            ApplyItem("m.pp", str(manifest)),
            case.paths,
            ChildRunner(threading.Event()),
            warm=broken,
        )
        assert res.ok and case.files() == {"f": f"{text}\n"}
        said.append(broken.info()["last_fallback"])
    assert "not a Ruby program" in said[0]["reason"] and said[1] == said[0]  # once
    assert broken.parents == 0


def test_a_warm_up_that_fails_is_said_and_the_runs_go_on(tmp_path: Path, case: Case) -> None:
    ruby = tmp_path / "ruby-broken"
    ruby.write_text("#!/bin/sh\necho 'cannot load such file -- puppet' >&2\nexit 3\n")
    ruby.chmod(0o755)
    binary = tmp_path / "puppet"
    binary.write_text(f"#!{ruby}\nrequire 'puppet/util/command_line'\n")
    binary.chmod(0o755)
    runner = WarmPuppet(PuppetConfig(binary=str(binary)), str(tmp_path / "state"))
    manifest = tmp_path / "m.pp"
    manifest.write_text(FILE.replace("OUT", str(case.out)) % "one")
    case.out.mkdir()
    res = run_puppet(
        case.cfg(),  # the run itself with the real puppet: it is exec'd
        ApplyItem("m.pp", str(manifest)),
        case.paths,
        ChildRunner(threading.Event()),
        warm=runner,
    )
    assert res.ok and case.files() == {"f": "one\n"}
    wait_for(lambda: runner.info().get("last_fallback"), timeout=30, what="the failure said")
    reason = runner.info()["last_fallback"]["reason"]
    assert "warm-up failed: it ended (exit 3): cannot load such file -- puppet" in reason, reason
    assert runner.info()["state"] == "not running"


def test_a_parent_that_dies_mid_run_hands_the_run_to_puppet_apply(
    case: Case, warm: WarmPuppet
) -> None:
    body = "exec { 'wait': command => '/bin/sleep 3', timeout => 0 }\n" + FILE % "done"
    case.out.mkdir()
    ran = []

    def kill_parent() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = warm.info()
            if info.get("state") == "warm" and warm.served > served:
                ran.append(info["pid"])
                os.kill(info["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    warm.wait_ready()
    served = warm.served
    threading.Thread(target=kill_parent, daemon=True).start()
    manifest = case.root / "site.pp"
    manifest.write_text(body.replace("OUT", str(case.out)))
    res = run_puppet(
        case.cfg(),
        ApplyItem("site.pp", str(manifest)),
        case.paths,
        ChildRunner(threading.Event()),
        warm=warm,
    )
    assert ran, "the parent was never seen serving the run"
    assert res.ok and case.files() == {"f": "done\n"}, res.output_tail
    assert "the warm runner ended during the run" in res.output_tail[-1]
    # Exactly the run's exec (other tests' and the machine's sleeps are not its).
    assert not [p for p in _pids() if _cmdline(p) == b"/bin/sleep\x003\x00"]


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def test_requests_keep_the_item_env_apart(case: Case) -> None:
    """FACTER_ variables of one run are not left for the next (each child gets its own env)."""
    body = "file { 'OUT/f': content => \"${facts['only_once']}\\n\" }\n"
    case.env = {"FACTER_only_once": "set"}
    _, files = case.both(body)
    assert files == {"f": "set\n"}
    case.env = {}
    res, files = case.both(body)
    assert files == {"f": "\n"}, res.output_tail


# --- the agent with the warm runner -------------------------------------------------


def _with_title(text: bytes) -> list[int]:
    return [p for p in _pids() if text in _cmdline(p)]


def warm_agent(sandbox: Sandbox) -> Any:
    """A daemon whose warm parent is ready (its first run, at start, may be
    exec'd while the parent warms up)."""
    daemon = sandbox.start_daemon()
    wait_for(
        lambda: ((sandbox.status_doc() or {}).get("puppet_runner") or {}).get("state") == "warm",
        timeout=90,
        what="the warm parent",
    )
    wait_for(lambda: (sandbox.status_doc() or {}).get("last_apply"), timeout=90, what="a run")
    return daemon


def test_the_agent_runs_warm_and_says_so(sandbox: Sandbox) -> None:
    warm_agent(sandbox)
    res = sandbox.cli("apply")  # asks the daemon for a run and waits for it
    assert res.returncode == 0, res.stdout + res.stderr
    doc = sandbox.status_doc() or {}
    assert doc["last_apply"]["ok"], doc["last_apply"]
    runner = doc["puppet_runner"]
    assert runner["state"] == "warm" and runner["runs_served"] >= 1, runner
    assert "last_fallback" not in runner, runner
    res = sandbox.cli("status")
    assert "puppet runner: warm, warm (pid" in res.stdout, res.stdout
    sandbox.stop_daemons()
    assert not _cmdline(runner["pid"]), "the warm parent outlived its agent"


def test_an_agent_killed_mid_run_leaves_no_puppet_and_the_next_runs(sandbox: Sandbox) -> None:
    first = warm_agent(sandbox)
    sandbox.manifest.write_text("exec { 'long': command => '/bin/sleep 3121', timeout => 0 }\n")
    os.kill(first.pid, signal.SIGHUP)  # a run, now
    sleeping = wait_for(
        lambda: [p for p in _pids() if _cmdline(p) == b"/bin/sleep\x003121\x00"],
        timeout=90,
        what="the warm run's exec",
    )
    forked = _with_title(b"mozagent warm runner")
    assert forked, "the run was not forked from the warm parent"
    first.kill()
    first.wait(timeout=10)
    sandbox.manifest.write_text(FILE.replace("OUT", str(sandbox.root)) % "after")
    sandbox.start_daemon()
    wait_for(lambda: (sandbox.root / "f").exists(), timeout=90, what="the next agent's run")
    assert not [p for p in sleeping + forked if _cmdline(p)], "the old run is still alive"
    assert "previous_run_interrupted" in sandbox.daemon_log()
    assert (sandbox.root / "f").read_text() == "after\n"


# --- the parent's lifetime -------------------------------------------------------------


def _one_run(case: Case, runner: WarmPuppet, text: str) -> ApplyResult:
    manifest = case.root / "site.pp"
    manifest.write_text((FILE % text).replace("OUT", str(case.out)))
    case.out.mkdir(exist_ok=True)
    item = ApplyItem("site.pp", str(manifest))
    warmed_for(runner, case.cfg(), item, case.paths)
    return run_puppet(case.cfg(), item, case.paths, ChildRunner(threading.Event()), warm=runner)


def test_a_run_that_finds_the_parent_warming_is_execd_and_the_next_is_warm(
    case: Case, tmp_path: Path
) -> None:
    """Waiting for a warm-up would cost more than an exec'd run: no failure."""
    runner = WarmPuppet(PuppetConfig(), str(tmp_path / "state"))
    try:
        runner.prestart()
        manifest = case.root / "site.pp"
        manifest.write_text((FILE % "first").replace("OUT", str(case.out)))
        case.out.mkdir()
        item = ApplyItem("site.pp", str(manifest))
        res = run_puppet(case.cfg(), item, case.paths, ChildRunner(threading.Event()), warm=runner)
        assert res.ok and runner.served == 0 and case.files() == {"f": "first\n"}
        assert "last_fallback" not in runner.info()
        assert not [line for line in res.output_tail if "run with puppet apply" in line]
        assert _one_run(case, runner, "second").ok and runner.served == 1
    finally:
        runner.stop()


def test_a_parent_is_retired_after_its_runs_and_its_successor_started_at_once(
    case: Case, tmp_path: Path
) -> None:
    runner = WarmPuppet(PuppetConfig(warm_max_runs=1), str(tmp_path / "state"))
    try:
        first = _one_run(case, runner, "one")
        assert first.ok
        # Its CPU is the run's alone, not the retired parent's warm-up too.
        assert 0.05 < first.cpu_s <= first.ended - first.started + 0.1, first.cpu_s
        info = runner.info()
        assert "served 1 runs (puppet.warm_max_runs)" in info["last_end"], info
        assert info["state"] in ("warming", "warm") and runner.parents == 2
        assert _one_run(case, runner, "two").ok and runner.served == 2
    finally:
        runner.stop()


def test_an_idle_parent_exits_by_itself_and_the_next_run_starts_one(
    case: Case, tmp_path: Path
) -> None:
    runner = WarmPuppet(PuppetConfig(warm_idle_exit=1), str(tmp_path / "state"))
    try:
        assert _one_run(case, runner, "one").ok
        pid = runner.info()["pid"]
        wait_for(lambda: not _cmdline(pid), timeout=30, what="the idle parent to exit")
        wait_for(lambda: runner.info()["state"] == "not running", timeout=10, what="the reaper")
        assert "idle for 1 s" in runner.info()["last_end"]
        res = _one_run(case, runner, "two")
        assert res.ok and runner.served == 2 and runner.info()["pid"] != pid
    finally:
        runner.stop()


def test_a_changed_runner_file_restarts_the_parent(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mozagent.apply import warm as warm_module

    copy = tmp_path / "warm_runner.rb"
    shutil.copy(warm_module.RUNNER, copy)
    monkeypatch.setattr(warm_module, "RUNNER", copy)
    runner = WarmPuppet(PuppetConfig(), str(tmp_path / "state"))
    try:
        assert _one_run(case, runner, "one").ok
        first = runner.info()["pid"]
        copy.write_text(copy.read_text() + "\n# a new version\n")
        assert _one_run(case, runner, "two").ok
        assert runner.info()["pid"] != first
        assert "warm_runner.rb changed" in runner.info()["last_end"]
    finally:
        runner.stop()


def test_a_warm_up_that_hangs_or_a_wrapper_binary_goes_the_plain_way(
    case: Case, tmp_path: Path, puppet_bin: str
) -> None:
    """A parent that never says ready is given ``warm_start_timeout``; a
    binary that is not puppet's own Ruby launcher is never tried warm."""
    hang = tmp_path / "ruby-hang"
    hang.write_text("#!/bin/sh\nexec sleep 600\n")
    hang.chmod(0o755)
    fake = tmp_path / "puppet"
    fake.write_text(f"#!{hang}\nrequire 'puppet/util/command_line'\n")
    fake.chmod(0o755)
    runner = WarmPuppet(PuppetConfig(binary=str(fake), warm_start_timeout=1), str(tmp_path / "s"))
    with pytest.raises(LaunchFailed, match="took over 1 s to warm up"):
        runner.wait_ready()
    assert not [p for p in _pids() if _cmdline(p) == b"sleep\x00600\x00"]
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {puppet_bin} "$@"\n')
    wrapper.chmod(0o755)
    plain = WarmPuppet(PuppetConfig(binary=str(wrapper)), str(tmp_path / "w"))
    (case.root / "m.pp").write_text((FILE % "plain").replace("OUT", str(case.out)))
    case.out.mkdir()
    res = run_puppet(
        case.cfg(binary=str(wrapper)),
        ApplyItem("m.pp", str(case.root / "m.pp")),
        case.paths,
        ChildRunner(threading.Event()),
        warm=plain,
    )
    assert "is not a Ruby program" in plain.info()["last_fallback"]["reason"]
    assert plain.parents == 0 and res.ok and case.files() == {"f": "plain\n"}


def test_a_run_held_by_the_budget_is_said_and_the_files_still_follow(
    sandbox: Sandbox, zk: KazooClient
) -> None:
    sandbox.write_config(apply={"min_wait": 0.1, "max_wait": 1, "min_interval": 60})
    sandbox.start_daemon()
    wait_for(lambda: (sandbox.status_doc() or {}).get("last_apply"), timeout=90, what="a run")
    put(zk, app_path(sandbox, "greeting"), b"held")
    wait_for(
        lambda: (sandbox.layer_file("app") or {}).get("greeting") == "held",
        timeout=10,
        what="the rendered file",
    )
    doc = wait_for(
        lambda: (d := sandbox.status_doc() or {}).get("apply_budget") and d,
        timeout=10,
        what="the budget in status",
    )
    assert doc["apply_budget"] == "at most one run per 60 s (apply.min_interval)"
    assert doc["next_apply"] > time.time() + 30
    assert "held by the run budget" in sandbox.cli("status").stdout
