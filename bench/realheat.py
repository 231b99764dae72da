"""mozagent and the os-collect-config chain against a real Heat: stack create →
CREATE_COMPLETE for a one-puppet-config DeployedServer stack.

Not a test: it prints figures and exits 0 whatever they are. It starts the
project's real-Heat fixture (tests/realheat/cloud.py: Debian's Heat 19
heat-all and Keystone 22, all on 127.0.0.1, in a temp dir), and for each
sample creates a stack (OS::Heat::DeployedServer, POLL_SERVER_HEAT; one
``group: puppet`` SoftwareConfig and its SoftwareDeployment, HEAT_SIGNAL),
reads the server's ``os_collect_config`` attribute, gives it to a fresh agent
in a fresh sandbox (mozagent: as cfn-init-data; the chain: as the ``[heat]``
section of os-collect-config.conf) and times until Heat says CREATE_COMPLETE.
Rows are sampled in turn, round by round, so noise reaches all of them alike.
Run from the repository root, as root (Keystone's key setup needs it):

    .venv/bin/python bench/realheat.py [--quick] [--json PATH] [--keep]

Every wait is bounded, the whole run is bounded (25 min; 12 with --quick), and
every process and server it starts is stopped on any exit.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from benchlib import (
    BenchError,
    bench_parser,
    code_version,
    read_cpu_seconds,
    to_json,
    write_report,
)
from heat import (
    CLEANUP,
    MANIFEST,
    OUTSIDE_PATHS,
    AgentBase,
    Budget,
    Chain,
    ChainInstall,
    MozAgent,
    collector_conf,
    install_chain,
    median,
    need_private_mount,
    outside_state,
    puppet_binary,
    ratio,
    say,
    stats,
)

from mozagent import __version__
from mozagent.config import HeatConfig
from mozagent_dev.testing import text_of, wait_until
from tests.glance.cloud import CloudError
from tests.realheat.cloud import PACKAGES, HeatCloud, heat_missing
from tests.test_realheat import OCC, Stacks, attr, config, deployment, param, server, template

FAST_POLL_S = 0.2  # mozagent's "fast" row: config takes any value > 0 (see the README)
STACK_BOUND_S = 180.0  # create → CREATE_COMPLETE, at most
CREDENTIALS_BOUND_S = 60.0  # create → the server's os_collect_config, at most
STATUS_POLL_S = 0.1  # how often the bench asks Heat for the stack's status


@dataclass(frozen=True)
class Setup:
    """One row: which agent, and how it polls."""

    key: str
    label: str
    agent: str  # "mozagent" or "chain"
    poll: tuple[float, float] | None = None  # mozagent's poll_min, poll_max; None: defaults
    flags: tuple[str, ...] = ()  # os-collect-config's polling flags; none: its defaults
    runner: str = "warm"  # mozagent's puppet.runner


DEFAULTS = HeatConfig()
SETUPS = (
    Setup(
        "moz_default",
        f"mozagent, defaults (poll_min {DEFAULTS.poll_min:g}, poll_max {DEFAULTS.poll_max:g})",
        "mozagent",
    ),
    Setup("moz_exec", "mozagent, defaults, puppet.runner: exec", "mozagent", runner="exec"),
    Setup(
        "moz_fast",
        f"mozagent, {FAST_POLL_S:g} s polling (poll_min = poll_max = {FAST_POLL_S:g})",
        "mozagent",
        poll=(FAST_POLL_S, FAST_POLL_S),
    ),
    Setup("chain_default", "chain, defaults (1 s doubling to 30 s)", "chain"),
    Setup(
        "chain_1s",
        "chain, 1 s (--polling-interval 1 --min-polling-interval 1)",
        "chain",
        flags=("--polling-interval", "1", "--min-polling-interval", "1"),
    ),
)
# mozagent row, chain row: the ratios printed (same run).
RATIOS = (
    ("moz_default", "chain_default"),
    ("moz_exec", "chain_default"),
    ("moz_fast", "chain_default"),
    ("moz_fast", "chain_1s"),
)


@dataclass
class Sample:
    """One stack, wall-clock seconds from ``stacks.create`` returning."""

    json_extra: ClassVar[tuple[str, ...]] = ("minus_puppet_s",)
    stack: str
    complete_s: float | None = None  # → CREATE_COMPLETE seen
    credentials_s: float | None = None  # → os_collect_config readable (then the agent starts)
    start_to_complete_s: float | None = None  # agent started → CREATE_COMPLETE
    start_to_puppet_s: float | None = None  # agent started → puppet starts
    puppet_s: float | None = None  # puppet's own run, timed by the wrapper
    puppet_to_complete_s: float | None = None  # puppet ends → CREATE_COMPLETE seen
    cloud_cpu_s: float | None = None  # CPU heat-all and Keystone used, create → COMPLETE
    agent_cpu_s: float | None = None  # the agent process's own CPU (not its children)
    update_s: float | None = None  # then a stack UPDATE of the input → UPDATE_COMPLETE
    update_puppet_s: float | None = None  # the update's puppet run
    problem: str | None = None

    @property
    def minus_puppet_s(self) -> float | None:
        if self.complete_s is None or self.puppet_s is None:
            return None
        return self.complete_s - self.puppet_s


@dataclass
class Row:
    setup: Setup
    samples: list[Sample] = field(default_factory=list)

    def values(self, name: str) -> list[float]:
        got = (getattr(s, name) for s in self.samples if s.problem is None)
        return [v for v in got if v is not None]


# --- the stack and the agents -----------------------------------------------------------------


def bench_stack(out: Path) -> dict[str, Any]:
    """DeployedServer + one puppet config (heat.py's one-file manifest) + its
    deployment, whose input is the stack's ``bench_value`` (an UPDATE changes it)."""
    return template(
        {
            "server": server("POLL_SERVER_HEAT"),
            "puppet_config": config("puppet", MANIFEST.format(path=out), ["bench_value"], []),
            "puppet_deployment": deployment("puppet_config", {"bench_value": param("bench_value")}),
        },
        {**OCC, "status_code": attr("puppet_deployment", "deploy_status_code")},
        {"bench_value": {"type": "string"}},
    )


def start_agent(
    setup: Setup, root: Path, occ: dict[str, Any], install: ChainInstall, private_mount: bool
) -> AgentBase:
    """A fresh agent given the server's os_collect_config, started without waiting
    for anything: the clock is running."""
    if setup.agent == "mozagent":
        moz = MozAgent(root, {"os-collect-config": occ}, setup.poll, setup.runner)
        moz.start(wait=False)
        return moz
    if "heat" not in occ:
        raise BenchError(f"os_collect_config has no heat section: {sorted(occ)}")
    chain = Chain(
        root, collector_conf("heat", occ["heat"]), install, list(setup.flags), private_mount
    )
    chain.start()
    return chain


def credentials(stacks: Stacks, stack_id: str) -> dict[str, Any]:
    """The server's os_collect_config, as soon as Heat shows it."""

    def ready() -> dict[str, Any] | None:
        value = stacks.output(stack_id, "os_collect_config")
        return value if isinstance(value, dict) and value.get("collectors") else None

    return wait_until(ready, CREDENTIALS_BOUND_S, f"os_collect_config of {stack_id}", 0.05)


def until_created(
    stacks: Stacks, stack_id: str, agent: AgentBase, want: str = "CREATE_COMPLETE"
) -> str | None:
    """Poll the stack every STATUS_POLL_S until ``want`` (None) or a problem."""
    deadline = time.monotonic() + STACK_BOUND_S
    while time.monotonic() < deadline:
        agent.check_alive()
        stack = stacks.get(stack_id)
        if stack.stack_status == want:
            return None
        if stack.stack_status.endswith("_FAILED"):
            return f"{stack.stack_status}: {stack.stack_status_reason}"
        time.sleep(STATUS_POLL_S)
    return f"not {want} within {STACK_BOUND_S:g} s"


def one_update(stacks: Stacks, stack_id: str, agent: AgentBase, out: Path, sample: Sample) -> None:
    """A PATCH update of the deployment's input on the running agent, timed to
    UPDATE_COMPLETE; the file must hold the new value."""
    value = f"update-{uuid.uuid4().hex[:8]}"
    dep_id = stacks.deployment(stack_id, "puppet_deployment").config_id
    t0 = time.time()
    stacks.update(stack_id, bench_value=value)
    sample.problem = until_created(stacks, stack_id, agent, "UPDATE_COMPLETE")
    done = time.time()
    if sample.problem:
        return
    sample.update_s = done - t0
    # The update derives a new config: its id is the deployment's new config_id.
    new_id = stacks.deployment(stack_id, "puppet_deployment").config_id
    run = agent.puppet_run(new_id) if new_id != dep_id else None
    if run is not None:
        sample.update_puppet_s = run[1] - run[0]
    if text_of(out) != f"value={value}\n":
        sample.problem = "UPDATE_COMPLETE but the manifest's file does not hold the new value"


def cloud_cpu(cloud: HeatCloud) -> float:
    """CPU seconds heat-all and Keystone have used so far (their own threads)."""
    return sum(read_cpu_seconds(server.proc.pid) for server in cloud.servers)


def one_stack(
    cloud: HeatCloud,
    setup: Setup,
    root: Path,
    install: ChainInstall,
    private_mount: bool,
) -> Sample:
    """Create the stack, hand its credentials to a new agent, time CREATE_COMPLETE."""
    stacks = Stacks(cloud)
    value = f"{setup.key}-{uuid.uuid4().hex[:8]}"
    out = root / "out" / f"{value}.txt"  # the agents' out_dir: where the manifest writes
    agent: AgentBase | None = None
    sample = Sample(stack="(not created)")
    try:
        cpu = cloud_cpu(cloud)
        stack_id = stacks.create(bench_stack(out), bench_value=value)
        t0 = time.time()
        sample.stack = stack_id
        occ = credentials(stacks, stack_id)
        started = time.time()
        sample.credentials_s = started - t0
        agent = start_agent(setup, root, occ, install, private_mount)
        sample.problem = until_created(stacks, stack_id, agent)
        done = time.time()
        if sample.problem:
            sample.problem += f"\n{agent.log_tail(8)}"
            return sample
        sample.cloud_cpu_s = cloud_cpu(cloud) - cpu
        sample.agent_cpu_s = read_cpu_seconds(agent.pid)
        sample.complete_s = done - t0
        sample.start_to_complete_s = done - started
        # The metadata's deployment id (the manifest's name) is the derived config's.
        dep_id = stacks.deployment(stack_id, "puppet_deployment").config_id
        run = agent.puppet_run(dep_id)
        if run is not None:
            sample.puppet_s = run[1] - run[0]
            sample.start_to_puppet_s = run[0] - started
            sample.puppet_to_complete_s = done - run[1]
        code = stacks.output(stack_id, "status_code")
        if code != 0:
            sample.problem = f"deploy_status_code {code!r}"
        elif text_of(out) != f"value={value}\n":
            sample.problem = "CREATE_COMPLETE but the manifest's file is missing or wrong"
        elif run is None:
            sample.problem = "puppet's run of the deployment was not seen"
        else:
            one_update(stacks, stack_id, agent, out, sample)
        return sample
    except Exception as err:  # heatclient's, a dead agent, a bounded wait: this sample only
        sample.problem = f"{type(err).__name__}: {err}"
        if agent is not None:
            sample.problem += f"\n{agent.log_tail(8)}"
        return sample
    finally:
        if agent is not None:
            agent.stop()
        stacks.cleanup()  # bounded: 30 s per stack


# --- the run --------------------------------------------------------------------------------


@dataclass
class Options:
    quick: bool
    json_path: str | None
    keep: bool
    samples: int
    budget_s: float


def parse_args(argv: list[str] | None = None) -> Options:
    parser = bench_parser(
        __doc__, "3 samples per row (about 3 minutes)", "keep the sandboxes and Heat's logs"
    )
    args = parser.parse_args(argv)
    return Options(
        quick=args.quick,
        json_path=args.json_path,
        keep=args.keep,
        samples=3 if args.quick else 7,
        budget_s=720.0 if args.quick else 1500.0,
    )


def package_versions() -> dict[str, str]:
    names = ("python3-heat", "python3-keystone")
    res = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Version}\\n", *names],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the fixture's Keystone key setup needs it")
    lacking = heat_missing()
    if lacking:
        raise BenchError(
            f"Heat is not installed: missing {', '.join(lacking)}; "
            f"apt-get install {' '.join(PACKAGES)} (tools/install-deps --test)"
        )
    puppet_binary()


def run_all(opts: Options) -> dict[str, Any]:
    started = time.perf_counter()
    preflight()
    budget = Budget(opts.budget_s)
    say("setup: the chain from PyPI")
    install = install_chain()
    private_mount = need_private_mount()
    before = outside_state()
    workdir = Path(tempfile.mkdtemp(prefix="mozagent-realheat-bench-"))
    say(f"workdir {workdir}")
    cloud = HeatCloud(workdir / "cloud")
    rows = {s.key: Row(s) for s in SETUPS}
    load_start = os.getloadavg()
    note = ""
    try:
        say("starting Keystone and heat-all on 127.0.0.1")
        t = time.perf_counter()
        cloud.start(timeout=180)
        heat_start_s = time.perf_counter() - t
        say(f"  up in {heat_start_s:.0f} s")
        # Round 0 is a warm-up (Heat's first stack, page cache), not counted.
        for rnd in range(opts.samples + 1):
            round_took = time.perf_counter()
            for setup in SETUPS:
                root = workdir / f"r{rnd:02d}-{setup.key}"
                sample = one_stack(cloud, setup, root, install, private_mount)
                shown = "-" if sample.complete_s is None else f"{sample.complete_s:.2f} s"
                say(
                    f"  {'warm-up' if rnd == 0 else f'{rnd}/{opts.samples}'} "
                    f"{setup.label}: {shown}" + (f" ({sample.problem})" if sample.problem else "")
                )
                if rnd:
                    rows[setup.key].samples.append(sample)
                elif sample.problem:
                    raise BenchError(f"warm-up failed for {setup.label}: {sample.problem}")
                if not opts.keep:
                    shutil.rmtree(root, ignore_errors=True)
            if rnd < opts.samples and not budget.allows(2 * (time.perf_counter() - round_took)):
                note = f"stopped after {rnd} of {opts.samples} rounds to stay within the budget"
                say(f"  {note}")
                break
    except CloudError as exc:
        raise BenchError(f"the real Heat fixture: {exc}") from exc
    finally:
        CLEANUP.run()
        try:
            cloud.stop()
        finally:
            if not opts.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    after = outside_state()
    return {
        "mozagent_version": __version__,
        "commit": code_version(),
        "quick": opts.quick,
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "packages": package_versions(),
        "heat_start_s": heat_start_s,
        "rows": rows,
        "note": note,
        "outside_paths_changed": [p for p in OUTSIDE_PATHS if before[p] != after[p]],
        "loadavg_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "workdir": str(workdir) if opts.keep else None,
        "runtime_s": time.perf_counter() - started,
    }


# --- report ---------------------------------------------------------------------------------

COLUMNS = (
    ("complete_s", "create→COMPLETE"),
    ("credentials_s", "→credentials"),
    ("start_to_complete_s", "agent start→COMPLETE"),
    ("start_to_puppet_s", "start→puppet"),
    ("puppet_s", "puppet (in run)"),
    ("puppet_to_complete_s", "puppet→COMPLETE"),
    ("minus_puppet_s", "minus puppet"),
    ("update_s", "UPDATE→COMPLETE"),
    ("update_puppet_s", "update's puppet"),
    ("cloud_cpu_s", "Heat+Keystone CPU"),
    ("agent_cpu_s", "agent CPU"),
)


def format_report(result: dict[str, Any]) -> str:
    rows: dict[str, Row] = result["rows"]
    versions = ", ".join(f"{k} {v}" for k, v in result["packages"].items())
    head = f"  {'configuration':<58} {'n':>3}  " + " ".join(f"{c:<21}" for _, c in COLUMNS)
    lines = [
        "",
        f"mozagent {result['mozagent_version']} (commit {result['commit']}) vs the "
        f"os-collect-config chain against a real Heat ({versions}) on 127.0.0.1 "
        f"({'quick' if result['quick'] else 'full'}) — {result['machine']}",
        f"heat-all and Keystone up in {result['heat_start_s']:.0f} s; one stack per sample: "
        "DeployedServer (POLL_SERVER_HEAT), one puppet SoftwareConfig + SoftwareDeployment "
        "(HEAT_SIGNAL); a fresh agent per stack, started once os_collect_config is readable",
        "",
        "seconds from `stack create` returning to CREATE_COMPLETE seen "
        f"(stack status read every {STATUS_POLL_S:g} s): median (min-max)",
        head,
    ]
    for row in rows.values():
        n = len(row.values("complete_s"))
        cells = " ".join(f"{stats(row.values(name)):<21}" for name, _ in COLUMNS)
        lines.append(f"  {row.setup.label:<58} {n:>3}  {cells}")
        lines += [f"      {s.stack}: {s.problem}" for s in row.samples if s.problem]
    if result["note"]:
        lines.append(f"  ({result['note']})")
    lines += [
        "",
        "mozagent/chain, same run (medians of create→COMPLETE; of minus puppet; of a stack "
        "UPDATE → UPDATE_COMPLETE on the running agent)",
    ]
    for ours, theirs in RATIOS:
        a, b = rows[ours], rows[theirs]
        cells = [
            ratio(median(a.values(name)), median(b.values(name)))
            for name in ("complete_s", "minus_puppet_s", "update_s")
        ]
        lines.append(f"  {a.setup.label} / {b.setup.label}: {'; '.join(cells)}")
    load = result["loadavg_start_end"]
    leaked = result["outside_paths_changed"]
    lines += [
        "",
        "default paths of either agent created or changed: "
        + (", ".join(leaked) if leaked else "none"),
        f"1-minute load average at start {load[0]:.2f}, at end {load[1]:.2f} "
        f"({os.cpu_count()} CPUs)",
        f"total runtime {result['runtime_s']:.0f} s",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # A SIGTERM (or Ctrl-C) still runs the finally blocks that stop agents and Heat.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run_all(opts)
    except (BenchError, TimeoutError, subprocess.SubprocessError, OSError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        CLEANUP.run()
    return write_report(format_report(result), to_json(result), opts.json_path)


if __name__ == "__main__":
    sys.exit(main())
