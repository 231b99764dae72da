"""mozagent against the os-collect-config chain it replaces, for one Heat deployment.

Not a test: it prints figures next to their targets and exits 0 even when a
target is missed. Both agents poll the same local Heat stand-in
(``mozagent_dev.heatstub.HeatStub``, TEMP_URL_SIGNAL: metadata by HEAD+GET, signals
by PUT) for the same deployment (a one-file puppet manifest), one agent at a
time, on this machine, in one run. The chain (os-collect-config →
os-refresh-config → os-apply-config → 55-heat-config → heat-agents' puppet
hook → heat-config-notify) is built from PyPI into a cache on first use and run
in a temp sandbox, kept out of /etc and /var. Run from the repository root:

    .venv/bin/python bench/heat.py [--quick] [--json PATH] [--keep]

Every wait is bounded, the whole run is bounded (15 min; 8 with --quick), and
every process and server it starts is stopped on any exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from benchlib import (
    BenchError,
    LoggedProcess,
    bench_parser,
    code_version,
    read_cpu_seconds,
    read_rss_mib,
    to_json,
    write_report,
)

from mozagent import __version__
from mozagent.desired.deployments import safe_id
from mozagent_dev.heatstub import HeatStub, inputs
from mozagent_dev.testing import text_of, wait_until

# --- what is compared -----------------------------------------------------------

CHAIN_PACKAGES = (
    "os-collect-config==14.1.0",
    "os-refresh-config==14.1.0",
    "os-apply-config==14.1.0",
)
HEAT_AGENTS = "heat-agents==13.0.0"
HEAT_AGENTS_DIR = "heat_agents-13.0.0"
# Used unchanged (heat-chain.md); the hooks exist only in the sdist, not the wheel.
HEAT_AGENTS_FILES = {
    "orc_55": "heat-config/os-refresh-config/configure.d/55-heat-config",
    "orc_20": "heat-config/os-refresh-config/configure.d/20-os-apply-config",
    "template": "heat-config/os-apply-config/var/run/heat-config/heat-config",
    "notify": "heat-config/bin/heat-config-notify",
    "hook": "heat-config-puppet/install.d/hook-puppet.py",
}
CHAIN_CACHE_FORMAT = 1  # bump when the cache layout changes

# Targets, and the chain's figures from heat-chain.md (same kind of machine, n = 24).
TARGET_DEFAULTS_MINUS_PUPPET_S = 2.0
TARGET_FAST_MINUS_PUPPET_S = 0.2
TARGET_OWN_COST_S = 0.05
REF_BARE_PUPPET_S = 1.78
REF_CHAIN_DEFAULTS_S = 19.9
REF_CHAIN_DEFAULTS_MINUS_PUPPET_S = REF_CHAIN_DEFAULTS_S - REF_BARE_PUPPET_S  # ~18 s
REF_CHAIN_1S_MINUS_PUPPET_S = 1.02
REF_CHAIN_OWN_COST_S = 0.44
REF_CHAIN_RSS_MIB = 46.9

IDLE_SECONDS = 15.0
SIGNAL_BOUND_S = 180.0  # beyond the poll interval: puppet, hook, notify, retries
PUPPET_DIRS = ("confdir", "codedir", "vardir", "logdir", "rundir", "publicdir", "ssldir")
DEPLOYMENT_NAME = "bench_config"  # one SoftwareDeployment, updated: a new id each time

MANIFEST = """\
file {{ '{path}':
  content => "value=${{facts['bench_value']}}\\n",
}}
"""

# Runs puppet and logs its start and end (wall clock, bash's $EPOCHREALTIME: no
# fork), so each sample's puppet time is measured inside the agent's own run
# rather than estimated from a separate one. Both agents get the same wrapper.
TIMED_PUPPET = """\
#!/bin/bash
start=$EPOCHREALTIME
{puppet} "$1" {flags} "${{@:2}}"
code=$?
end=$EPOCHREALTIME
printf '%s %s %s\\n' "$start" "$end" "$*" >> {log}
exit $code
"""

# heat-agents' 20-os-apply-config is `exec os-apply-config`, whose output root
# is always /; the only way to keep it in a sandbox is --output (heat-chain.md).
ORC_20 = """\
#!/bin/bash
set -ue

exec os-apply-config --output {root}
"""

# Default paths of the chain and of mozagent: none may appear or change.
OUTSIDE_PATHS = (
    "/etc/os-collect-config.conf",
    "/var/lib/os-collect-config",
    "/var/run/os-collect-config",
    "/var/run/os-refresh-config.lock",
    "/var/log/os-apply-config.log",
    "/var/run/heat-config",
    "/var/lib/heat-config",
    "/usr/libexec/os-refresh-config",
    "/usr/libexec/heat-config",
    "/etc/puppet/hieradata",
    "/var/lib/heat-cfntools",
    "/var/lib/mozagent",
)


def say(text: str) -> None:
    print(text, flush=True)


# --- processes and servers: always stopped ----------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """Every live descendant of ``pid`` as (pid, start time), found by parent links.

    The start time lets a later kill skip a pid the kernel has since reused.
    """
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = proc_stat(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    out: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as systemd would, then SIGKILL; then whatever it left behind.

    Only processes this bench started, by pid: the agent and its own descendants,
    recorded before the stop (orphans are reparented and could not be found after).
    """
    if proc.poll() is None:
        left = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for pid, started in left:
            fields = proc_stat(pid)
            if fields is not None and fields[19] == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class Cleanup:
    """What the bench started, stopped by ``run`` (from finally blocks and atexit)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stubs: list[HeatStub] = []
        self._lock = threading.Lock()

    def process(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        with self._lock:
            self.procs.append(proc)
        return proc

    def stub(self, stub: HeatStub) -> HeatStub:
        with self._lock:
            self.stubs.append(stub)
        return stub

    def run(self) -> None:
        with self._lock:
            procs, self.procs = self.procs, []
            stubs, self.stubs = self.stubs, []
        for proc in procs:
            try:
                stop_process(proc)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop pid {proc.pid}: {exc}", file=sys.stderr)
        for stub in stubs:
            stub.stop()


CLEANUP = Cleanup()
atexit.register(CLEANUP.run)


# --- the Heat side ---------------------------------------------------------------


class TimedHeatStub(HeatStub):
    """HeatStub that also records when each request arrived and what it was served.

    The agents' fetches tell "waiting for the poll" apart from work; the signal's
    arrival is t1. Serving and ``set_metadata`` are serialized by a gate so a GET
    is never attributed the wrong document.
    """

    def __init__(self) -> None:
        super().__init__()
        self._gate = threading.Lock()
        self.heads: list[float] = []
        self.gets: list[tuple[float, frozenset[str]]] = []  # (arrival, deployment ids served)
        self.signal_at: dict[str, float] = {}
        self.started = False
        stub = self
        base: Any = self.server.RequestHandlerClass

        class Timed(base):  # type: ignore[misc, valid-type]
            def _metadata(self, body: bool) -> None:
                arrived = time.time()
                with stub._gate:
                    if body:
                        stub.gets.append((arrived, stub.served_ids()))
                    else:
                        stub.heads.append(arrived)
                    super()._metadata(body)

            def do_PUT(self) -> None:
                super().do_PUT()
                ident = self.path.split("?")[0].rsplit("/", 1)[-1]
                if stub.signals_for(ident):
                    stub.signal_at.setdefault(ident, time.time())

        self.server.RequestHandlerClass = Timed

    def served_ids(self) -> frozenset[str]:
        deps = self.metadata.get("deployments") if isinstance(self.metadata, dict) else None
        return frozenset(d.get("id", "") for d in deps or [] if isinstance(d, dict))

    def start(self) -> TimedHeatStub:
        super().start()
        self.started = True
        CLEANUP.stub(self)
        return self

    def stop(self) -> None:
        if self.started:
            self.started = False
            super().stop()

    def set_metadata(self, doc: Any) -> None:
        with self._gate:
            super().set_metadata(doc)

    def first_get(self, dep_id: str) -> float | None:
        return next((t for t, ids in list(self.gets) if dep_id in ids), None)


def deployment(stub: HeatStub, dep_id: str, action: str, out_dir: Path) -> dict[str, Any]:
    """One puppet SoftwareDeployment as Heat puts it in the server's metadata."""
    return {
        "id": dep_id,
        "name": DEPLOYMENT_NAME,
        "group": "puppet",
        "creation_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": MANIFEST.format(path=out_dir / f"{dep_id}.txt"),
        "inputs": inputs(
            "TEMP_URL_SIGNAL", stub.url, dep_id, action, bench_value=("String", dep_id)
        ),
        "outputs": [],
        "options": {},
    }


def cfn_init_data(stub: HeatStub) -> dict[str, Any]:
    """What cloud-init leaves at boot: which collector to poll (POLL_TEMP_URL)."""
    return {
        "os-collect-config": {
            "collectors": ["request"],
            "request": {"metadata_url": f"{stub.url}/metadata"},
        }
    }


def collector_conf(collector: str, settings: dict[str, Any]) -> str:
    """The collector lines of an os-collect-config.conf: which one to poll, and its
    section (oslo.config reads ``$`` as a reference: doubled)."""
    lines = [f"collectors = {collector}", "", f"[{collector}]"]
    lines += [f"{key} = {str(value).replace('$', '$$')}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def polled_from_now(stub: TimedHeatStub) -> Callable[[], bool]:
    """True once the stub has seen a poll after this call."""
    heads = len(stub.heads)
    return lambda: len(stub.heads) > heads


# --- puppet --------------------------------------------------------------------------


def puppet_binary() -> str:
    path = shutil.which("puppet")
    if path is None:
        raise BenchError("puppet is not installed (apt-get install puppet)")
    return os.path.realpath(path)


def puppet_dir_flags(root: Path) -> list[str]:
    """Every directory puppet would use under /etc and /var, moved under ``root``."""
    flags = []
    for name in PUPPET_DIRS:
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        flags += [f"--{name}", str(path)]
    return flags


def write_timed_puppet(path: Path, log: Path, flags: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        TIMED_PUPPET.format(
            puppet=shlex.quote(puppet_binary()),
            flags=" ".join(shlex.quote(f) for f in flags),
            log=shlex.quote(str(log)),
        )
    )
    path.chmod(0o755)


def puppet_run_for(log: Path, dep_id: str) -> tuple[float, float] | None:
    """(start, end) of the puppet run of ``dep_id``'s manifest, from the wrapper's log."""
    for line in text_of(log).splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and f"{dep_id}.pp" in parts[2]:
            return float(parts[0].replace(",", ".")), float(parts[1].replace(",", "."))
    return None


def bare_puppet(workdir: Path, n: int) -> list[float]:
    """``puppet apply`` of the same one-file manifest, as the chain's hook runs it,
    with nothing around it: what both agents' latencies contain."""
    root = workdir / "bare-puppet"
    flags = puppet_dir_flags(root / "puppet")
    out = root / "out"
    out.mkdir(parents=True)
    times = []
    for i in range(n):
        dep_id = f"bare-{i:02d}-{uuid.uuid4().hex[:8]}"
        manifest = root / f"{dep_id}.pp"
        manifest.write_text(MANIFEST.format(path=out / f"{dep_id}.txt"))
        cmd = [puppet_binary(), "apply", *flags, "--color", "false", "--detailed-exitcodes"]
        cmd += ["--logdest", "console", str(manifest)]
        env = dict(os.environ, FACTER_bench_value=dep_id)
        start = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        took = time.perf_counter() - start
        if res.returncode not in (0, 2) or text_of(out / f"{dep_id}.txt") != f"value={dep_id}\n":
            raise BenchError(f"bare puppet apply failed ({res.returncode}): {res.stderr[-500:]}")
        times.append(took)
    return times


# --- the chain, built from PyPI and cached -----------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mozagent-bench" / "chain"


def run_checked(cmd: list[str], what: str, timeout: float = 900) -> None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what}: timed out after {timeout:g} s") from exc
    if res.returncode != 0:
        raise BenchError(f"{what} failed ({res.returncode}):\n{res.stderr[-2000:]}")


@dataclass
class ChainInstall:
    venv: Path
    files: dict[str, Path]  # HEAT_AGENTS_FILES keys → extracted copies

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def install_chain() -> ChainInstall:
    """The chain's venv and heat-agents' sdist files, made once and reused.

    A marker written last says the cache is complete; anything else is rebuilt.
    """
    root = cache_dir()
    marker = root / "ready.json"
    want = {
        "format": CHAIN_CACHE_FORMAT,
        "packages": list(CHAIN_PACKAGES),
        "heat_agents": HEAT_AGENTS,
        "python": platform.python_version(),
    }
    venv = root / "venv"
    files = {key: root / "heat-agents" / rel for key, rel in HEAT_AGENTS_FILES.items()}
    try:
        if json.loads(marker.read_text()) == want and all(p.is_file() for p in files.values()):
            return ChainInstall(venv, files)
    except (OSError, ValueError):
        pass
    say(f"  building the chain in {root} (once; cached for later runs)")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run_checked([sys.executable, "-m", "venv", str(venv)], "creating the chain's venv", 300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    run_checked([*pip, "install", "--quiet", *CHAIN_PACKAGES], "pip install of the chain")
    sdist_dir = root / "sdist"
    download = ["download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", str(sdist_dir)]
    run_checked([*pip, *download, HEAT_AGENTS], "pip download of the heat-agents sdist")
    archives = sorted(sdist_dir.glob("heat_agents-*.tar.gz"))
    if not archives:
        raise BenchError(f"no heat-agents sdist in {sdist_dir}")
    wanted = {f"{HEAT_AGENTS_DIR}/{rel}" for rel in HEAT_AGENTS_FILES.values()}
    with tarfile.open(archives[0]) as tar:
        members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
        if len(members) != len(wanted):
            raise BenchError(f"{archives[0].name} lacks some of {sorted(wanted)}")
        tar.extractall(root / "extract", members=members, filter="data")
    (root / "heat-agents").mkdir()
    for key, rel in HEAT_AGENTS_FILES.items():
        files[key].parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "extract" / HEAT_AGENTS_DIR / rel, files[key])
    marker.write_text(json.dumps(want))
    return ChainInstall(venv, files)


def need_private_mount() -> bool:
    """As root, os-apply-config logs to /var/log/os-apply-config.log (hard-coded):
    the chain then runs in a private mount namespace with /var/log bound to the
    sandbox. Unprivileged it needs nothing."""
    if os.geteuid() != 0:
        return False
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/true"],
        capture_output=True,
        timeout=30,
    )
    if res.returncode != 0:
        raise BenchError(
            "running as root and unshare --mount fails: os-apply-config would write "
            "/var/log/os-apply-config.log; run the bench unprivileged instead"
        )
    return True


# --- agents under test -----------------------------------------------------------------


class AgentBase(LoggedProcess):
    """What a sample needs from either agent: its pid, whether it is working, its log."""

    root: Path
    puppet_log: Path
    out_dir: Path

    def busy(self) -> bool:
        """A child at work (puppet, a hook, os-refresh-config): not quiet yet."""
        return bool(descendants(self.pid))

    def puppet_run(self, dep_id: str) -> tuple[float, float] | None:
        """(start, end) of the puppet run of ``dep_id``'s manifest."""
        return puppet_run_for(self.puppet_log, dep_id)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def popen(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = CLEANUP.process(
                subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.root,
                    env=env,
                    start_new_session=True,  # a Ctrl-C of the bench reaches it only via us
                )
            )


class MozAgent(AgentBase):
    """``python -m mozagent daemon`` in a sandbox, Heat only (no ZooKeeper, no manifests),
    told what to poll by ``cfn_init`` (a cfn-init-data document), as cloud-init would."""

    def __init__(
        self,
        root: Path,
        cfn_init: dict[str, Any],
        poll: tuple[float, float] | None,
        runner: str = "exec",
    ) -> None:
        """``runner``: "exec" runs puppet through the timing wrapper, as the
        chain does; "warm" runs the real binary from the warm parent (which a
        wrapper script would defeat), its run timed from the deployment's record."""
        self.label = "mozagent" if runner == "exec" else f"mozagent ({runner})"
        self.runner = runner
        self.root = root
        self.state = root / "state"
        self.log_path = root / "daemon.log"
        self.puppet_log = root / "puppet-runs.log"
        self.out_dir = root / "out"
        self.out_dir.mkdir(parents=True)
        local = root / "cfn-init-data"
        local.write_text(json.dumps(cfn_init))
        self.collector = cfn_init["os-collect-config"]["collectors"][0]
        wrapper = root / "bin" / "timed-puppet"
        write_timed_puppet(wrapper, self.puppet_log, [])
        heat: dict[str, Any] = {
            "heat_local_paths": [str(local)],
            "local_paths": [str(root / "local-data")],
            "os_collect_config_conf": str(root / "no-such-os-collect-config.conf"),
            "hook_dirs": [str(root / "hooks")],
        }
        if poll is not None:  # None: mozagent's own defaults
            heat["poll_min"], heat["poll_max"] = poll
        config = {
            "node": "bench-node",
            "state_dir": str(self.state),
            "puppet": {
                "manifests": [],
                "binary": str(wrapper) if runner == "exec" else puppet_binary(),
                "extra_args": puppet_dir_flags(root / "puppet"),
                "timeout": 120,
                "runner": runner,
            },
            "heat": heat,
            "log": {"level": "info", "format": "json"},
        }
        self.config_path = root / "mozagent.yaml"
        self.config_path.write_text(yaml.safe_dump(config))

    def status(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.state / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def start(self, wait: bool = True) -> None:
        """The daemon; with ``wait``, until status.json shows it polling its collector."""
        self.popen([sys.executable, "-m", "mozagent", "daemon", "--config", str(self.config_path)])

        def polling() -> bool:
            self.check_alive()
            doc = self.status()
            return (
                doc.get("agent", {}).get("pid") == self.pid
                and (doc.get("heat") or {}).get("in_use") == self.collector
            )

        if wait:
            wait_until(polling, 60, f"mozagent to poll the {self.collector} collector", 0.05)

    def busy(self) -> bool:
        """A child at work, not counting the warm parent waiting for a run."""
        parent = (self.status().get("puppet_runner") or {}).get("pid")
        working = [p for p, _ in descendants(self.pid) if p != parent]
        return bool(working) or self.status().get("applying") is not None

    def puppet_run(self, dep_id: str) -> tuple[float, float] | None:
        if self.runner == "exec":
            return puppet_run_for(self.puppet_log, dep_id)
        try:
            record = json.loads(
                (self.state / "heat" / "deployments" / f"{safe_id(dep_id)}.json").read_text()
            )
            return float(record["started"]), float(record["ended"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


class Chain(AgentBase):
    """os-collect-config and everything it runs, in a sandbox, as heat-chain.md lays out;
    ``collectors`` is what its config file says to poll (``collector_conf``)."""

    def __init__(
        self,
        root: Path,
        collectors: str,
        install: ChainInstall,
        interval_flags: list[str],
        private_mount: bool,
    ) -> None:
        self.label = "os-collect-config"
        self.root = root
        self.log_path = root / "os-collect-config.log"
        self.puppet_log = root / "puppet-runs.log"
        self.out_dir = root / "out"
        self.out_dir.mkdir(parents=True)
        self.private_mount = private_mount
        self.install = install
        d = {
            name: root / rel
            for name, rel in {
                "orc": "usr/libexec/os-refresh-config",
                "templates": "usr/libexec/os-apply-config/templates",
                "apply_root": "apply-root",
                "hooks": "var/lib/heat-config/hooks",
                "bin": "bin",
                "cache": "var/lib/os-collect-config",
                "backup_cache": "var/run/os-collect-config",
                "deployed": "var/lib/heat-config/deployed",
                "deployed_old": "var/run/heat-config/deployed",
                "puppet_working": "var/lib/heat-config/heat-config-puppet",
                "puppet_outputs": "var/run/heat-config/heat-config-puppet",
                "puppet_logdir": "var/log/heat-config-puppet",
                "hieradata": "etc/puppet/hieradata",
                "var_log": "var/log",
                "run": "run",
                "tmp": "tmp",
            }.items()
        }
        for name in ("cache", "backup_cache", "hooks", "bin", "var_log", "run", "tmp"):
            d[name].mkdir(parents=True, exist_ok=True)
        self.dirs = d
        files = install.files
        configure = d["orc"] / "configure.d"
        configure.mkdir(parents=True)
        (configure / "20-os-apply-config").write_text(ORC_20.format(root=d["apply_root"]))
        shutil.copy(files["orc_55"], configure / "55-heat-config")
        template = d["templates"] / "var/run/heat-config/heat-config"
        template.parent.mkdir(parents=True)
        shutil.copy(files["template"], template)
        shutil.copy(files["hook"], d["hooks"] / "puppet")
        shutil.copy(files["notify"], d["bin"] / "heat-config-notify")
        for exe in (
            configure / "20-os-apply-config",
            configure / "55-heat-config",
            d["hooks"] / "puppet",
            d["bin"] / "heat-config-notify",
        ):
            exe.chmod(0o755)
        write_timed_puppet(
            d["bin"] / "timed-puppet", self.puppet_log, puppet_dir_flags(root / "puppet")
        )
        lockfile = d["run"] / "os-refresh-config.lock"
        self.conf = root / "os-collect-config.conf"
        self.conf.write_text(
            "[DEFAULT]\n"
            f"command = os-refresh-config --lockfile {lockfile}\n"
            f"cachedir = {d['cache']}\n"
            f"backup_cachedir = {d['backup_cache']}\n"
            f"{collectors}"
        )
        self.interval_flags = interval_flags
        self.env = {
            **os.environ,
            # The chain's venv first: its scripts say `#!/usr/bin/env python3`.
            "PATH": f"{install.bin}:{d['bin']}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "OS_REFRESH_CONFIG_BASE_DIR": str(d["orc"]),
            "OS_CONFIG_APPLIER_TEMPLATES": str(d["templates"]),
            "OS_CONFIG_FILES_PATH": str(d["cache"] / "os_config_files.json"),
            "HEAT_SHELL_CONFIG": str(d["apply_root"] / "var/run/heat-config/heat-config"),
            "HEAT_CONFIG_HOOKS": str(d["hooks"]),
            "HEAT_CONFIG_DEPLOYED": str(d["deployed"]),
            "HEAT_CONFIG_DEPLOYED_OLD": str(d["deployed_old"]),
            "HEAT_CONFIG_NOTIFY": str(d["bin"] / "heat-config-notify"),
            "HEAT_PUPPET_WORKING": str(d["puppet_working"]),
            "HEAT_PUPPET_OUTPUTS": str(d["puppet_outputs"]),
            "HEAT_PUPPET_LOGDIR": str(d["puppet_logdir"]),
            "HEAT_PUPPET_HIERA_DATADIR": str(d["hieradata"]),
            "HEAT_PUPPET_CMD": str(d["bin"] / "timed-puppet"),
            "TMPDIR": str(d["tmp"]),
        }
        self.env.pop("VIRTUAL_ENV", None)
        self.env.pop("PYTHONPATH", None)

    def start(self, polled: Callable[[], bool] | None = None) -> None:
        """os-collect-config; with ``polled``, until it says the first poll happened."""
        cmd = [str(self.install.bin / "os-collect-config"), "--config-file", str(self.conf)]
        cmd += self.interval_flags
        if self.private_mount:
            # unshare and sh exec in turn: the pid stays os-collect-config's.
            cmd = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                'mount --bind "$0" /var/log && exec "$@"',
                str(self.dirs["var_log"]),
                *cmd,
            ]
        self.popen(cmd, self.env)
        if polled is None:
            return

        def polling() -> bool:
            self.check_alive()
            return polled()

        wait_until(polling, 60, "os-collect-config's first poll", 0.05)

    def is_collector(self) -> bool:
        try:
            return b"os-collect-config" in Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Sample:
    json_extra: ClassVar[tuple[str, ...]] = ("minus_puppet_s", "own_cost_s")
    dep_id: str
    pause_s: float
    signal_s: float | None = None  # metadata set → signal stored by the stub
    poll_wait_s: float | None = None  # → the first GET that served the new deployment
    puppet_s: float | None = None  # puppet's own run, timed by the wrapper
    fetch_to_puppet_s: float | None = None
    puppet_to_signal_s: float | None = None
    status_code: Any = None
    applied: bool = False
    problem: str | None = None

    @property
    def minus_puppet_s(self) -> float | None:
        if self.signal_s is None or self.puppet_s is None:
            return None
        return self.signal_s - self.puppet_s

    @property
    def own_cost_s(self) -> float | None:
        m = self.minus_puppet_s
        return None if m is None or self.poll_wait_s is None else m - self.poll_wait_s


@dataclass
class Idle:
    seconds: float
    rss_mib: float
    polls: int
    cpu_ms: float

    @property
    def cpu_per_poll_ms(self) -> float | None:
        return self.cpu_ms / self.polls if self.polls else None


@dataclass
class Row:
    key: str
    label: str
    agent: str
    pause_max_s: float
    samples: list[Sample] = field(default_factory=list)
    idle: Idle | None = None
    rss_end_mib: float | None = None
    warm_parent_rss_mib: float | None = None  # the warm runner's parent, its own process
    planned: int = 0
    note: str = ""

    def good(self) -> list[Sample]:
        return [s for s in self.samples if s.problem is None]

    def values(self, name: str) -> list[float]:
        out = []
        for s in self.good():
            v = getattr(s, name)
            if v is not None:
                out.append(v)
        return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def wait_quiet(agent: AgentBase, timeout: float = 120.0) -> None:
    """No child at work for 0.3 s in a row: the previous sample is over."""
    since: list[float | None] = [None]

    def quiet() -> bool:
        agent.check_alive()
        now = time.monotonic()
        if agent.busy():
            since[0] = None
            return False
        since[0] = since[0] or now
        return now - since[0] >= 0.3

    wait_until(quiet, timeout, f"{agent.label} to go quiet", 0.05)


def one_sample(
    agent: AgentBase,
    stub: TimedHeatStub,
    dep_id: str,
    action: str,
    pause: float,
    bound: float,
) -> Sample:
    """Change the metadata at a random moment; time the signal and what made it up."""
    wait_quiet(agent)
    time.sleep(pause)
    doc = {"deployments": [deployment(stub, dep_id, action, agent.out_dir)]}
    sample = Sample(dep_id=dep_id, pause_s=pause)
    t0 = time.time()
    stub.set_metadata(doc)
    deadline = time.monotonic() + bound
    checked = time.monotonic()
    while dep_id not in stub.signal_at:
        if time.monotonic() > deadline:
            sample.problem = f"no signal within {bound:g} s"
            return sample
        if time.monotonic() - checked > 0.5:
            agent.check_alive()
            checked = time.monotonic()
        time.sleep(0.002)
    t1 = stub.signal_at[dep_id]
    sample.signal_s = t1 - t0
    fetched = stub.first_get(dep_id)
    if fetched is not None:
        sample.poll_wait_s = fetched - t0
    run = agent.puppet_run(dep_id)
    if run is not None:
        sample.puppet_s = run[1] - run[0]
        if fetched is not None:
            sample.fetch_to_puppet_s = run[0] - fetched
        sample.puppet_to_signal_s = t1 - run[1]
    bodies = stub.signals_for(dep_id)
    sample.status_code = bodies[0].get("deploy_status_code") if bodies else None
    sample.applied = text_of(agent.out_dir / f"{dep_id}.txt") == f"value={dep_id}\n"
    if sample.status_code != 0:
        sample.problem = f"signalled deploy_status_code {sample.status_code!r}"
    elif not sample.applied:
        sample.problem = "signalled success but the manifest's file is missing or wrong"
    elif run is None or fetched is None:
        sample.problem = "the puppet run or the fetch was not seen"
    return sample


def measure_idle(agent: AgentBase, stub: TimedHeatStub, seconds: float) -> Idle:
    """RSS after ``seconds`` of nothing to do, and the CPU its polls cost meanwhile."""
    wait_quiet(agent)
    heads = len(stub.heads)
    cpu = read_cpu_seconds(agent.pid)
    time.sleep(seconds)
    agent.check_alive()
    return Idle(
        seconds=seconds,
        rss_mib=read_rss_mib(agent.pid),
        polls=len(stub.heads) - heads,
        cpu_ms=(read_cpu_seconds(agent.pid) - cpu) * 1000,
    )


class Budget:
    """The whole run's time limit: the long rows stop early rather than overrun it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def allows(self, seconds: float) -> bool:
        return time.monotonic() + seconds <= self.deadline


def run_samples(
    row: Row,
    agent: AgentBase,
    stub: TimedHeatStub,
    n: int,
    poll_interval: float,
    budget: Budget,
    rng: random.Random,
    reserve: float,
) -> None:
    """n samples, each after a random pause of up to the poll interval, so the change
    lands at a random point of the polling cycle as a real stack update would."""
    row.planned = n
    took: list[float] = []
    for i in range(n):
        expect = max(took) if took else 2 * poll_interval + 10
        if not budget.allows(expect + reserve):
            row.note = f"stopped after {i} of {n} samples to stay within the time budget"
            break
        pause = rng.uniform(0, row.pause_max_s)
        dep_id = f"{row.key}-{i:02d}-{uuid.uuid4().hex[:8]}"
        start = time.monotonic()
        sample = one_sample(agent, stub, dep_id, "UPDATE", pause, poll_interval + SIGNAL_BOUND_S)
        took.append(time.monotonic() - start)
        row.samples.append(sample)
        shown = "-" if sample.signal_s is None else f"{sample.signal_s:.2f} s"
        say(
            f"    {i + 1:>2}/{n} signal {shown}"
            + (f" ({sample.problem})" if sample.problem else "")
        )


def warm_up(agent: AgentBase, stub: TimedHeatStub, key: str, interval: float) -> None:
    """A first deployment, not counted: caches, first puppet run, deployed/ created."""
    sample = one_sample(
        agent, stub, f"{key}-warmup-{uuid.uuid4().hex[:8]}", "CREATE", 0.0, interval + 180
    )
    if sample.problem:
        raise BenchError(f"{agent.label}: warm-up deployment: {sample.problem}\n{agent.log_tail()}")


# --- the run --------------------------------------------------------------------------------


@dataclass
class Options:
    quick: bool
    json_path: str | None
    keep: bool
    samples: int
    chain_default_samples: int
    bare_runs: int
    budget_s: float


def parse_args(argv: list[str] | None = None) -> Options:
    parser = bench_parser(
        __doc__, "fewer samples (about 5 minutes)", "keep the sandboxes (agents' logs)"
    )
    args = parser.parse_args(argv)
    return Options(
        quick=args.quick,
        json_path=args.json_path,
        keep=args.keep,
        samples=4 if args.quick else 12,
        chain_default_samples=3 if args.quick else 12,
        bare_runs=4 if args.quick else 12,
        budget_s=480.0 if args.quick else 900.0,
    )


def outside_state() -> dict[str, float | None]:
    """mtime of each default path of the chain (None: absent), to prove the sandbox held."""
    out: dict[str, float | None] = {}
    for path in OUTSIDE_PATHS:
        try:
            out[path] = os.stat(path).st_mtime
        except OSError:
            out[path] = None
    return out


def mozagent_row(
    opts: Options,
    workdir: Path,
    key: str,
    label: str,
    poll: tuple[float, float] | None,
    idle: bool,
    budget: Budget,
    rng: random.Random,
    reserve: float,
    runner: str = "exec",
) -> Row:
    poll_max = 2.0 if poll is None else poll[1]
    row = Row(key=key, label=label, agent="mozagent", pause_max_s=poll_max)
    stub = TimedHeatStub().start()
    agent = MozAgent(workdir / key, cfn_init_data(stub), poll, runner)
    try:
        agent.start()
        warm_up(agent, stub, key, poll_max)
        run_samples(row, agent, stub, opts.samples, poll_max, budget, rng, reserve)
        if idle:
            row.idle = measure_idle(agent, stub, IDLE_SECONDS)
        row.rss_end_mib = read_rss_mib(agent.pid)
        row.warm_parent_rss_mib = (agent.status().get("puppet_runner") or {}).get("rss_mib")
    finally:
        agent.stop()
        stub.stop()
    return row


def chain_row(
    opts: Options,
    workdir: Path,
    install: ChainInstall,
    private_mount: bool,
    key: str,
    label: str,
    interval: float,
    flags: list[str],
    n: int,
    budget: Budget,
    rng: random.Random,
    reserve: float,
) -> Row:
    row = Row(key=key, label=label, agent="chain", pause_max_s=interval)
    stub = TimedHeatStub().start()
    request = collector_conf("request", {"metadata_url": f"{stub.url}/metadata"})
    agent = Chain(workdir / key, request, install, flags, private_mount)
    try:
        agent.start(polled_from_now(stub))
        if not agent.is_collector():
            raise BenchError(f"pid {agent.pid} is not os-collect-config")
        warm_up(agent, stub, key, interval)
        if interval > 1:
            # Its sleep starts at the minimum and doubles per poll up to the interval,
            # never reset by a change: a server up for more than a minute polls every
            # `interval` s. Wait for that before sampling.
            def steady() -> bool:
                agent.check_alive()
                heads = stub.heads
                return len(heads) >= 2 and heads[-1] - heads[-2] >= 0.9 * interval

            say(f"    waiting for its poll interval to reach {interval:g} s")
            wait_until(steady, 4 * interval + 120, "the chain's backoff to reach its cap", 0.2)
        run_samples(row, agent, stub, n, interval, budget, rng, reserve)
        row.idle = measure_idle(agent, stub, IDLE_SECONDS)
        row.rss_end_mib = row.idle.rss_mib
    finally:
        agent.stop()
        stub.stop()
    return row


def run_all(opts: Options) -> dict[str, Any]:
    started = time.perf_counter()
    budget = Budget(opts.budget_s)
    rng = random.Random(20261125)  # fixed: the same pauses on every run
    puppet_version = subprocess.run(
        [puppet_binary(), "--version"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    say("setup: the chain from PyPI")
    install = install_chain()
    private_mount = need_private_mount()
    before = outside_state()
    load_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="mozagent-heat-bench-"))
    say(f"workdir {workdir}")
    rows: dict[str, Row] = {}
    try:
        say(f"bare puppet apply x{opts.bare_runs}")
        bare = bare_puppet(workdir, opts.bare_runs)
        say(f"  median {median(bare):.2f} s")
        moz = (
            ("moz_default", "mozagent, defaults (poll_min 1, poll_max 2)", None, True, "exec"),
            ("moz_warm", "mozagent, warm runner, defaults", None, True, "warm"),
            ("moz_1s", "mozagent, 1 s polling (poll_min = poll_max = 1)", (1.0, 1.0), True, "exec"),
            (
                "moz_fast",
                "mozagent, 0.2 s polling (poll_min = poll_max = 0.2)",
                (0.2, 0.2),
                False,
                "exec",
            ),
        )
        for key, label, poll, idle, runner in moz:
            say(f"{label}: {opts.samples} samples")
            rows[key] = mozagent_row(
                opts, workdir, key, label, poll, idle, budget, rng, reserve=240, runner=runner
            )
        label = "chain, 1 s (--polling-interval 1 --min-polling-interval 1)"
        say(f"{label}: {opts.samples} samples")
        rows["chain_1s"] = chain_row(
            opts,
            workdir,
            install,
            private_mount,
            "chain_1s",
            label,
            1.0,
            ["--polling-interval", "1", "--min-polling-interval", "1"],
            opts.samples,
            budget,
            rng,
            reserve=180,
        )
        label = "chain, defaults (sleep 1 s doubling to 30 s, never reset)"
        say(f"{label}: {opts.chain_default_samples} samples")
        rows["chain_default"] = chain_row(
            opts,
            workdir,
            install,
            private_mount,
            "chain_default",
            label,
            30.0,
            [],
            opts.chain_default_samples,
            budget,
            rng,
            reserve=IDLE_SECONDS + 15,
        )
    finally:
        CLEANUP.run()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    after = outside_state()
    leaked = [p for p in OUTSIDE_PATHS if before[p] != after[p]]
    return {
        "mozagent_version": __version__,
        "commit": code_version(),
        "quick": opts.quick,
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "puppet_version": puppet_version,
        "chain": {
            "packages": [*CHAIN_PACKAGES, f"{HEAT_AGENTS} (sdist files)"],
            "cache": str(cache_dir()),
            "private_mount_for_var_log": private_mount,
        },
        "bare_puppet_s": bare,
        "rows": rows,
        "outside_paths_changed": leaked,
        # Other work on the machine shows up as noise: say how busy it was.
        "loadavg_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "workdir": str(workdir) if opts.keep else None,
        "runtime_s": time.perf_counter() - started,
    }


# --- report ---------------------------------------------------------------------------------


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def fmt_s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f} s"


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or math.isnan(ours) or math.isnan(theirs) or not theirs:
        return "-"
    return f"{ours / theirs:.3f}"


@dataclass
class Verdict:
    figure: str
    ours: float | None
    unit: str
    target: str
    chain: float | None
    chain_ref: float
    ok: bool


def pooled(rows: list[Row], name: str) -> list[float]:
    return [v for row in rows for v in row.values(name)]


def verdicts(result: dict[str, Any]) -> list[Verdict]:
    rows: dict[str, Row] = result["rows"]
    moz = [rows[k] for k in ("moz_default", "moz_1s", "moz_fast")]
    chain = [rows[k] for k in ("chain_1s", "chain_default")]

    def med(row: Row, name: str) -> float:
        return median(row.values(name))

    def within(value: float, limit: float) -> bool:
        return not math.isnan(value) and value <= limit

    d, one, fast = (med(r, "minus_puppet_s") for r in moz)
    cd, c1 = med(rows["chain_default"], "minus_puppet_s"), med(rows["chain_1s"], "minus_puppet_s")
    own, chain_own = median(pooled(moz, "own_cost_s")), median(pooled(chain, "own_cost_s"))
    rss = rows["moz_default"].idle.rss_mib if rows["moz_default"].idle else math.nan
    idle = rows["chain_default"].idle or rows["chain_1s"].idle
    chain_rss = idle.rss_mib if idle else math.nan
    exec_signal = med(rows["moz_default"], "signal_s")
    warm_signal = med(rows["moz_warm"], "signal_s")
    return [
        Verdict(
            "change→signal, defaults, warm runner (exec'd: chain column)",
            warm_signal,
            "s",
            "< exec'd",
            exec_signal,
            math.nan,
            within(warm_signal, exec_signal),
        ),
        Verdict(
            "change→signal minus puppet, defaults",
            d,
            "s",
            f"≤ {TARGET_DEFAULTS_MINUS_PUPPET_S:g} s",
            cd,
            REF_CHAIN_DEFAULTS_MINUS_PUPPET_S,
            within(d, TARGET_DEFAULTS_MINUS_PUPPET_S),
        ),
        Verdict(
            "change→signal minus puppet, 1 s polling",
            one,
            "s",
            f"≤ {TARGET_FAST_MINUS_PUPPET_S:g} s",
            c1,
            REF_CHAIN_1S_MINUS_PUPPET_S,
            within(one, TARGET_FAST_MINUS_PUPPET_S),
        ),
        Verdict(
            "  same, mozagent at 0.2 s polling",
            fast,
            "s",
            f"≤ {TARGET_FAST_MINUS_PUPPET_S:g} s",
            c1,
            REF_CHAIN_1S_MINUS_PUPPET_S,
            within(fast, TARGET_FAST_MINUS_PUPPET_S),
        ),
        Verdict(
            "own cost (all samples)",
            own,
            "s",
            f"≤ {TARGET_OWN_COST_S:g} s",
            chain_own,
            REF_CHAIN_OWN_COST_S,
            within(own, TARGET_OWN_COST_S),
        ),
        Verdict(
            f"idle RSS after {IDLE_SECONDS:g} s",
            rss,
            "MiB",
            "≤ chain's",
            chain_rss,
            REF_CHAIN_RSS_MIB,
            within(rss, chain_rss if not math.isnan(chain_rss) else REF_CHAIN_RSS_MIB),
        ),
    ]


def fmt_value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1f} MiB" if unit == "MiB" else f"{value:.3f} s"


def format_report(result: dict[str, Any]) -> str:
    rows: dict[str, Row] = result["rows"]
    bare = result["bare_puppet_s"]
    bare_med = median(bare)
    mount = result["chain"]["private_mount_for_var_log"]
    lines = [
        "",
        f"mozagent {result['mozagent_version']} (commit {result['commit']}) vs the "
        f"os-collect-config chain, one Heat puppet deployment "
        f"({'quick' if result['quick'] else 'full'}) — {result['machine']}, "
        f"puppet {result['puppet_version']}",
        f"chain: {', '.join(result['chain']['packages'])}; venv cached in "
        f"{result['chain']['cache']}"
        + ("; run in a private mount namespace (/var/log → sandbox)" if mount else ""),
        "",
        f"bare `puppet apply` of the one-file manifest (the chain hook's flags), "
        f"n={len(bare)}: median {bare_med:.2f} s (min {min(bare):.2f}, max {max(bare):.2f}) "
        f"[heat-chain.md: {REF_BARE_PUPPET_S:.2f} s]",
        "",
        "metadata change → signal stored by the stub, seconds: median (min-max)",
        "  waiting = until the GET that served the new deployment; puppet = its own run,",
        "  timed by a wrapper inside the agent's run; own cost = signal - puppet - waiting",
        "",
        f"  {'configuration':<58} {'n':>5}  {'signal':<19} {'waiting for poll':<19} "
        f"{'puppet (in run)':<19} {'minus puppet':<19} {'own cost':<19} "
        f"{'GET→puppet':<19} {'puppet→signal':<19} signal-bare puppet",
    ]
    for row in rows.values():
        n = f"{len(row.good())}/{row.planned}"
        lines.append(
            f"  {row.label:<58} {n:>5}  {stats(row.values('signal_s')):<19} "
            f"{stats(row.values('poll_wait_s')):<19} {stats(row.values('puppet_s')):<19} "
            f"{stats(row.values('minus_puppet_s')):<19} {stats(row.values('own_cost_s')):<19} "
            f"{stats(row.values('fetch_to_puppet_s')):<19} "
            f"{stats(row.values('puppet_to_signal_s')):<19} "
            f"{fmt_s(median(row.values('signal_s')) - bare_med)}"
        )
        if row.note:
            lines.append(f"      ({row.note})")
        for s in row.samples:
            if s.problem:
                lines.append(f"      sample {s.dep_id}: {s.problem}")
    lines += ["", f"idle, after {IDLE_SECONDS:g} s with nothing to do (the agent process only)"]
    for row in rows.values():
        if row.idle is None:
            continue
        per_poll = row.idle.cpu_per_poll_ms
        lines.append(
            f"  {row.label:<58} RSS {row.idle.rss_mib:5.1f} MiB; {row.idle.polls} polls, "
            f"CPU {row.idle.cpu_ms:.0f} ms"
            + (f" ({per_poll:.1f} ms per poll)" if per_poll is not None else "")
        )
    leaked = result["outside_paths_changed"]
    load = result["loadavg_start_end"]
    lines += [
        "",
        f"1-minute load average at start {load[0]:.2f}, at end {load[1]:.2f} "
        f"({os.cpu_count()} CPUs)",
        "paths outside the sandboxes created or changed: "
        + (", ".join(leaked) if leaked else "none"),
        "",
        f"  {'figure':<42} {'mozagent':<11} {'target':<10} {'chain (this run)':<17} "
        f"{'chain (ref)':<12} {'mozagent/chain':<15} verdict",
    ]
    for v in verdicts(result):
        ref = f"{v.chain_ref:.1f} MiB" if v.unit == "MiB" else f"{v.chain_ref:.2f} s"
        lines.append(
            f"  {v.figure:<42} {fmt_value(v.ours, v.unit):<11} {v.target:<10} "
            f"{fmt_value(v.chain, v.unit):<17} {ref:<12} {ratio(v.ours, v.chain):<15} "
            f"{'ok' if v.ok else 'MISSED'}"
        )
    lines += [
        "",
        "  (chain (ref): heat-chain.md's figures; its defaults row minus its bare puppet median)",
        "  (at 1 s polling the wait for the poll alone has a median of ~0.5 s whatever the agent:",
        "   ≤ 0.2 s needs faster polling, hence the 0.2 s row; own cost is the agent's own part)",
        "",
        f"total runtime {result['runtime_s']:.0f} s",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # A SIGTERM (or Ctrl-C) still runs the finally blocks that stop the agents.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run_all(opts)
    except (BenchError, TimeoutError, subprocess.SubprocessError, OSError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        if not opts.keep:
            print("(run with --keep to keep the agents' logs)", file=sys.stderr)
        return 1
    finally:
        CLEANUP.run()
    doc = {**to_json(result), "verdicts": to_json(verdicts(result))}
    return write_report(format_report(result), doc, opts.json_path)


if __name__ == "__main__":
    sys.exit(main())
