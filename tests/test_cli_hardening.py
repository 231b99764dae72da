"""What an operator sees from the ``mozagent`` command line when things are wrong.

Each test runs the real command (a subprocess where the exit code, the output
or the absence of a traceback matter) against a real ZooKeeper.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

from mozagent.cli import main
from mozagent.config import ConfigError, load_config, parse_config
from mozagent_dev.faultproxy import FaultProxy
from mozagent_dev.testing import ZooKeeperServer, free_port
from tests.conftest import Sandbox
from tests.poison import POISON

POISON_IDS = [name for name, _, _ in POISON]
# Generous for a loaded 2-core machine; the poisoned values used to take 46 s+.
POISON_WALL_LIMIT = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any MOZAGENT_* setting of the person running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOZAGENT_")}
    env.update(extra)
    return env


class Run:
    """A finished ``mozagent`` subprocess: exit code, output, and its wall time."""

    def __init__(self, proc: subprocess.CompletedProcess[bytes], elapsed: float) -> None:
        self.code = proc.returncode
        self.out = proc.stdout.decode("utf-8", "replace")
        self.err = proc.stderr.decode("utf-8", "replace")
        self.elapsed = elapsed

    def __repr__(self) -> str:
        return (
            f"<exit {self.code} after {self.elapsed:.1f} s\n"
            f"stdout: {self.out[-2000:]!r}\nstderr: {self.err[-3000:]!r}>"
        )


def mozagent(
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> Run:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mozagent", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        cwd=cwd,
    )
    return Run(proc, time.monotonic() - started)


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.err, run
    assert "Traceback" not in run.out, run


def assert_refused(run: Run, *words: str, code: int = 2) -> None:
    """Refused the way a person expects: the exit code, one `mozagent: error:` line
    naming the problem, no Python traceback."""
    assert run.code == code, run
    assert "mozagent: error: " in run.err, run
    for word in words:
        assert word in run.err, (word, run)
    assert_no_traceback(run)


def write_yaml(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def delete_tree(zk: KazooClient, path: str) -> None:
    if zk.exists(path):
        zk.delete(path, recursive=True)


# --- 1. poisoned values are refused fast, with a message, writing nothing ----------------


@pytest.mark.parametrize(("name", "raw", "words"), POISON, ids=POISON_IDS)
def test_set_refuses_poisoned_value_from_stdin(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str, name: str, raw: bytes, words: str
) -> None:
    run = mozagent(
        "data",
        "set",
        "shop",
        "poisoned",
        "-",
        "--zookeeper",
        zk_server.hosts,
        "--root",
        zk_root,
        stdin=raw,
    )
    assert_refused(run, words)
    assert run.elapsed < POISON_WALL_LIMIT, run
    assert zk.exists(zk_root) is None


@pytest.mark.parametrize(("name", "raw", "words"), POISON, ids=POISON_IDS)
def test_import_refuses_poisoned_file(
    zk_server: ZooKeeperServer,
    zk: KazooClient,
    zk_root: str,
    tmp_path: Path,
    name: str,
    raw: bytes,
    words: str,
) -> None:
    zk.create(f"{zk_root}/apps/shop/data/keep", b"1", makepath=True)
    before = zk.exists(f"{zk_root}/apps/shop/data")
    src = tmp_path / f"{name}.yaml"
    src.write_bytes(raw)
    run = mozagent(
        "data", "import", "shop", str(src), "--zookeeper", zk_server.hosts, "--root", zk_root
    )
    assert_refused(run, words, str(src))
    assert run.elapsed < POISON_WALL_LIMIT, run
    after = zk.exists(f"{zk_root}/apps/shop/data")
    assert (after.version, after.cversion, after.mzxid) == (
        before.version,
        before.cversion,
        before.mzxid,
    )
    assert zk.get_children(f"{zk_root}/apps/shop/data") == ["keep"]
    assert zk.get(f"{zk_root}/apps/shop/data/keep")[0] == b"1"


@pytest.mark.parametrize(
    ("name", "raw", "words"),
    [(n, r, w) for n, r, w in POISON if b"\n" not in r.rstrip(b"\n")],
    ids=[n for n, r, _ in POISON if b"\n" not in r.rstrip(b"\n")],
)
def test_import_refuses_poisoned_value_inside_a_mapping(
    zk_server: ZooKeeperServer,
    zk: KazooClient,
    zk_root: str,
    tmp_path: Path,
    name: str,
    raw: bytes,
    words: str,
) -> None:
    src = tmp_path / f"{name}.yaml"
    src.write_bytes(b"fine: 1\npoisoned: " + raw + b"\n")
    run = mozagent(
        "data", "import", "shop", str(src), "--zookeeper", zk_server.hosts, "--root", zk_root
    )
    assert_refused(run, words, str(src))
    assert run.elapsed < POISON_WALL_LIMIT, run
    assert zk.exists(zk_root) is None


@pytest.mark.parametrize("stdin", [b"", b"  \n\n"], ids=["empty", "blank"])
def test_set_refuses_empty_stdin(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str, stdin: bytes
) -> None:
    run = mozagent(
        "data",
        "set",
        "shop",
        "greeting",
        "-",
        "--zookeeper",
        zk_server.hosts,
        "--root",
        zk_root,
        stdin=stdin,
    )
    assert run.code == 2, run
    assert "no value on stdin" in run.err or "stdin was empty" in run.err, run
    assert "mozagent: error: " in run.err, run
    assert_no_traceback(run)
    assert zk.exists(zk_root) is None


def test_set_from_stdin_still_works(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str
) -> None:
    """The control for the refusals above: a good value on stdin is stored."""
    run = mozagent(
        "data",
        "set",
        "shop",
        "vhost",
        "-",
        "--zookeeper",
        zk_server.hosts,
        "--root",
        zk_root,
        stdin=b"name: a.example\nports: [80, 443]\n",
    )
    assert run.code == 0, run
    raw, _ = zk.get(f"{zk_root}/apps/shop/data/vhost")
    assert yaml.safe_load(raw) == {"name": "a.example", "ports": [80, 443]}


# --- 2. reading a poisoned znode ------------------------------------------------------------


@pytest.mark.parametrize(("name", "raw", "words"), POISON, ids=POISON_IDS)
def test_get_of_poisoned_znode_fails_cleanly(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str, name: str, raw: bytes, words: str
) -> None:
    zk.create(f"{zk_root}/apps/shop/data/poisoned", raw, makepath=True)
    run = mozagent(
        "data", "get", "shop", "poisoned", "--zookeeper", zk_server.hosts, "--root", zk_root
    )
    assert_refused(run, words, "poisoned", code=1)
    assert run.elapsed < POISON_WALL_LIMIT, run
    assert run.out == "", run


# --- 3. an invalid config is never silently replaced by defaults ----------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bogus: 1\n", "bogus: unknown key"),
        ("puppet: {timeout: .nan}\n", "puppet.timeout: must be a finite number"),
        ("puppet:\n  timeout: .inf\n", "puppet.timeout: must be a finite number"),
        ("zookeeper: {hosts: 'h:1'}\n", "app: is required"),
    ],
    ids=["unknown-key", "nan", "inf", "zk-without-app"],
)
def test_invalid_config_from_environment_stops_data_set(
    zk_server: ZooKeeperServer, zk: KazooClient, tmp_path: Path, text: str, words: str
) -> None:
    app = f"cfgtest-{uuid.uuid4().hex[:12]}"
    cfg = tmp_path / "mozagent.yaml"
    cfg.write_text(text)
    before = set(zk.get_children("/mozagent/apps")) if zk.exists("/mozagent/apps") else set()
    try:
        run = mozagent(
            "data",
            "set",
            app,
            "greeting",
            "hello",
            "--zookeeper",
            zk_server.hosts,
            env=clean_env(MOZAGENT_CONFIG=str(cfg)),
        )
        assert_refused(run, str(cfg), words)
        after = set(zk.get_children("/mozagent/apps")) if zk.exists("/mozagent/apps") else set()
        assert after == before
        assert zk.exists(f"/mozagent/apps/{app}") is None
    finally:
        delete_tree(zk, f"/mozagent/apps/{app}")


# --- 4. NaN and infinity in numeric settings ------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"puppet": {"timeout": float("nan")}}, "puppet.timeout"),
        ({"puppet": {"timeout": float("inf")}}, "puppet.timeout"),
        ({"apply": {"min_wait": float("nan")}}, "apply.min_wait"),
        ({"apply": {"max_wait": float("inf")}}, "apply.max_wait"),
        ({"apply": {"interval": float("nan")}}, "apply.interval"),
        ({"apply": {"retry_initial": float("inf")}}, "apply.retry_initial"),
        ({"apply": {"retry_max": float("-inf")}}, "apply.retry_max"),
        (
            {"app": "a", "zookeeper": {"hosts": "h:1", "session_timeout": float("nan")}},
            "zookeeper.session_timeout",
        ),
        (
            {"app": "a", "zookeeper": {"hosts": "h:1", "resync_interval": float("inf")}},
            "zookeeper.resync_interval",
        ),
    ],
)
def test_non_finite_numbers_are_refused(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "/etc/mozagent/mozagent.yaml")
    message = str(info.value)
    assert message.startswith("/etc/mozagent/mozagent.yaml: ")
    assert f"{key}: must be a finite number" in message


@pytest.mark.parametrize("spelling", [".nan", ".NaN", ".inf", "-.inf", ".Inf"])
def test_non_finite_numbers_in_yaml_are_refused(tmp_path: Path, spelling: str) -> None:
    cfg = tmp_path / "mozagent.yaml"
    cfg.write_text(f"puppet:\n  timeout: {spelling}\n")
    with pytest.raises(ConfigError, match=r"puppet\.timeout: must be a finite number"):
        load_config(str(cfg))


def test_finite_numbers_still_accepted() -> None:
    cfg = parse_config({"puppet": {"timeout": 1e9}, "apply": {"interval": 0}})
    assert math.isfinite(cfg.puppet.timeout) and cfg.puppet.timeout == 1e9


# --- 5. a config with nothing to apply ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# mozagent config\n# (nothing set yet)\n", "---\n# only a comment\n"],
    ids=["empty", "blank", "comments", "document-marker"],
)
def test_daemon_once_refuses_config_with_nothing_to_apply(tmp_path: Path, text: str) -> None:
    default_state = Path("/var/lib/mozagent")
    existed = default_state.exists()
    cfg = tmp_path / "mozagent.yaml"
    cfg.write_text(text)
    run = mozagent("daemon", "--once", "--config", str(cfg), cwd=tmp_path)
    assert_refused(run, "nothing to apply", str(cfg))
    if not existed:
        assert not default_state.exists(), "the refused daemon created /var/lib/mozagent"


# --- 6. bad --zookeeper / --root --------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--zookeeper", "notaport:xx", ("--zookeeper", "not a host:port list", "notaport:xx")),
        ("--root", "relative", ("--root", "must be an absolute znode path", "relative")),
        ("--root", "/a//b", ("--root", "must be an absolute znode path", "/a//b")),
        ("--root", "//", ("--root", "must be an absolute znode path")),
    ],
    ids=["bad-port", "relative-root", "double-slash", "only-slashes"],
)
def test_bad_target_options_are_refused(
    zk_server: ZooKeeperServer, option: str, value: str, words: tuple[str, ...]
) -> None:
    args = ["data", "get", "shop", "greeting", "--timeout", "5"]
    args += [option, value]
    if option != "--zookeeper":
        args += ["--zookeeper", zk_server.hosts]
    run = mozagent(*args)
    assert_refused(run, *words)


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("MOZAGENT_ZOOKEEPER", "notaport:xx", ("not a host:port list", "notaport:xx")),
        ("MOZAGENT_ROOT", "relative", ("must be an absolute znode path", "relative")),
    ],
)
def test_bad_target_environment_is_refused(
    zk_server: ZooKeeperServer, name: str, value: str, words: tuple[str, ...]
) -> None:
    env = clean_env(MOZAGENT_ZOOKEEPER=zk_server.hosts)
    env[name] = value
    run = mozagent("data", "get", "shop", "greeting", "--timeout", "5", env=env)
    assert_refused(run, *words)


# --- 7. global options anywhere, and the environment ----------------------------------------


@pytest.fixture
def data_config(tmp_path: Path, zk_server: ZooKeeperServer, zk_root: str) -> Path:
    return write_yaml(
        tmp_path / "data.yaml",
        {"app": "shop", "zookeeper": {"hosts": zk_server.hosts, "root": zk_root}},
    )


def test_config_before_status(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    (state / "status.json").write_text(
        json.dumps(
            {
                "agent": {"version": "9.9", "pid": 1, "mode": "once", "started": now},
                "app": "placed-by-config",
                "node": "web1",
                "zookeeper": {"state": "connected"},
                "layers": {},
                "last_apply": {"ok": True, "started": now, "ended": now, "results": []},
                "errors": {},
            }
        )
    )
    cfg = write_yaml(tmp_path / "mozagent.yaml", {"state_dir": str(state)})
    run = mozagent("--config", str(cfg), "status")
    assert run.code == 0, run
    assert "placed-by-config" in run.out and "last apply: OK" in run.out, run
    run = mozagent("--config", str(cfg), "status", "--json")
    assert run.code == 0, run
    assert json.loads(run.out)["app"] == "placed-by-config"


@pytest.mark.parametrize(
    "layout",
    ["before-data", "after-data", "after-words"],
)
def test_config_anywhere_in_data_set(
    data_config: Path, zk: KazooClient, zk_root: str, layout: str
) -> None:
    words = ["set", "shop", "greeting", layout]
    if layout == "before-data":
        args = ["--config", str(data_config), "data", *words]
    elif layout == "after-data":
        args = ["data", "--config", str(data_config), *words]
    else:
        args = ["data", *words, "--config", str(data_config)]
    run = mozagent(*args)
    assert run.code == 0, run
    assert_no_traceback(run)
    assert zk.get(f"{zk_root}/apps/shop/data/greeting")[0].decode().strip() == layout


def test_target_options_between_data_and_action(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str
) -> None:
    zk.create(f"{zk_root}/apps/shop/data/greeting", b"hello", makepath=True)
    run = mozagent(
        "data", "--zookeeper", zk_server.hosts, "--root", zk_root, "get", "shop", "greeting"
    )
    assert run.code == 0, run
    assert run.out == "hello\n"
    run = mozagent(
        "data", "--zookeeper", zk_server.hosts, "get", "--root", zk_root, "shop", "greeting"
    )
    assert run.code == 0, run
    assert run.out == "hello\n"


def test_environment_names_zookeeper_and_root(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str, tmp_path: Path
) -> None:
    """$MOZAGENT_ZOOKEEPER and $MOZAGENT_ROOT are used without options, and win over
    the config file (which here points at a dead port and another root)."""
    cfg = write_yaml(
        tmp_path / "mozagent.yaml",
        {"app": "shop", "zookeeper": {"hosts": f"127.0.0.1:{free_port()}", "root": "/elsewhere"}},
    )
    env = clean_env(
        MOZAGENT_CONFIG=str(cfg), MOZAGENT_ZOOKEEPER=zk_server.hosts, MOZAGENT_ROOT=zk_root
    )
    run = mozagent("data", "set", "shop", "greeting", "from-env", "--timeout", "10", env=env)
    assert run.code == 0, run
    assert zk.get(f"{zk_root}/apps/shop/data/greeting")[0].strip() == b"from-env"
    assert zk.exists("/elsewhere/apps/shop") is None
    run = mozagent("data", "get", "shop", "greeting", "--timeout", "10", env=env)
    assert (run.code, run.out) == (0, "from-env\n"), run


def test_environment_without_any_config(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str
) -> None:
    env = clean_env(MOZAGENT_ZOOKEEPER=zk_server.hosts, MOZAGENT_ROOT=zk_root)
    if Path("/etc/mozagent/mozagent.yaml").exists():
        pytest.fail("this test needs no /etc/mozagent/mozagent.yaml on the test machine")
    run = mozagent("data", "set", "--global", "port", "8080", "--timeout", "10", env=env)
    assert run.code == 0, run
    assert zk.get(f"{zk_root}/global/data/port")[0].strip() == b"8080"


# --- 8. status with a broken config -----------------------------------------------------------


def test_status_with_broken_config_shows_state_dir_of_the_file(sandbox: Sandbox) -> None:
    res = sandbox.cli("daemon", "--once")
    assert res.returncode == 0, res.stderr[-3000:]
    good = sandbox.cli("status")
    assert good.returncode == 0, good
    assert "last apply: OK" in good.stdout
    broken = sandbox.config()
    broken["bogus"] = 1
    assert broken["state_dir"] == str(sandbox.state)
    write_yaml(sandbox.config_path, broken)

    res = sandbox.cli("status", timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert "last ran once" in res.stdout and "last apply: OK" in res.stdout, res.stdout
    assert "app: shop" in res.stdout and "node: web1" in res.stdout
    assert f"{sandbox.config_path}: bogus: unknown key" in res.stderr, res.stderr
    assert str(sandbox.state) in res.stderr

    res = sandbox.cli("status", "--json", timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    doc = json.loads(res.stdout)
    assert doc["last_apply"]["ok"] is True
    assert "bogus: unknown key" in doc["config_error"]
    assert doc["exit_code"] == 2


# --- 9. a damaged status.json -------------------------------------------------------------------

DAMAGED = [
    ("[1, 2]", "list"),
    ('"a string"', "string"),
    ('{"agent": 5}', "agent-not-object"),
    ('{"errors": {"x": 3}}', "errors-not-list"),
    ('{"errors": [1, 2], "layers": "x", "zookeeper": 7}', "sections-wrong-type"),
    ('{"last_apply": {"results": 5}}', "results-not-list"),
]


@pytest.mark.parametrize("text", [t for t, _ in DAMAGED], ids=[i for _, i in DAMAGED])
def test_damaged_status_does_not_crash(tmp_path: Path, text: str) -> None:
    (tmp_path / "status.json").write_text(text)
    human = mozagent("status", "--state-dir", str(tmp_path))
    machine = mozagent("status", "--state-dir", str(tmp_path), "--json")
    for run in (human, machine):
        assert_no_traceback(run)
        assert run.code in (0, 1, 3, 4), run
    json.loads(machine.out)  # always a JSON document on stdout
    if not text.startswith("{"):
        assert human.code == 4 and machine.code == 4, (human, machine)
        assert "no status" in human.out, human


@pytest.mark.parametrize(
    "text", ['{"agent": 5}', '{"errors": {"x": 3}}'], ids=["agent-not-object", "errors-not-list"]
)
def test_damaged_status_is_not_reported_healthy(tmp_path: Path, text: str) -> None:
    """A status whose sections had to be dropped says nothing about the agent: exit 0
    ("healthy") would let monitoring trust a file that is not a status."""
    (tmp_path / "status.json").write_text(text)
    human = mozagent("status", "--state-dir", str(tmp_path))
    machine = mozagent("status", "--state-dir", str(tmp_path), "--json")
    assert_no_traceback(human)
    assert_no_traceback(machine)
    assert human.code != 0, human
    assert machine.code != 0, machine


# --- 10. status into a pipe that closes -------------------------------------------------------


def test_status_into_closed_pipe_is_quiet(tmp_path: Path) -> None:
    now = time.time()
    errors = [
        {"where": f"{i:05d}/greeting", "message": "not valid YAML at line 1, column 2: " + "x" * 80}
        for i in range(3000)
    ]
    doc = {
        "agent": {"version": "9.9", "pid": 1, "mode": "once", "started": now},
        "app": "shop",
        "node": "web1",
        "last_apply": {"ok": True, "started": now, "ended": now, "results": []},
        "errors": {"data": errors},
    }
    (tmp_path / "status.json").write_text(json.dumps(doc))
    full = mozagent("status", "--state-dir", str(tmp_path))
    assert full.code == 3, full
    assert len(full.out) > 256 * 1024  # far more than a pipe's buffer
    env = clean_env()
    for pipeline in (
        f"{sys.executable} -m mozagent status --state-dir {tmp_path} | head -1",
        f"{sys.executable} -m mozagent status --state-dir {tmp_path} --json | head -1",
        f"{sys.executable} -m mozagent status --state-dir {tmp_path} | true",
        f"{sys.executable} -m mozagent status --state-dir {tmp_path} | true",
        f"{sys.executable} -m mozagent status --state-dir {tmp_path} | true",
    ):
        res = subprocess.run(
            ["bash", "-c", pipeline], capture_output=True, text=True, env=env, timeout=60
        )
        assert "BrokenPipe" not in res.stderr, (pipeline, res.stderr)
        assert "Traceback" not in res.stderr, (pipeline, res.stderr)
        assert "Exception ignored" not in res.stderr, (pipeline, res.stderr)
        assert res.stderr == "", (pipeline, res.stderr)
        if "head" in pipeline:
            assert len(res.stdout.splitlines()) == 1, (pipeline, res.stdout)


# --- 11. importing an export rewrites nothing -------------------------------------------------

SPELLINGS: dict[str, bytes] = {
    "json_map": b'{"a": 1}',
    "json_list": b'[1, "two", 3.5, null, true]',
    "json_nested": b'{"name": "a.example", "ports": [80, 443], "tls": {"on": true}}',
    "flow_map": b"{a: 1, b: [x, y]}",
    "flow_list": b"[web1, web2, 'web 3']",
    "block_map": b"name: a.example\nport: 8080\n",
    "block_list": b"- one\n- two\n",
    "plain_word": b"hello",
    "plain_sentence": b"hello world, again",
    "plain_int": b"8080",
    "negative_int": b"-12",
    "plain_float": b"2.5",
    "plain_bool": b"true",
    "yes_word": b"yes",
    "off_word": b"off",
    "tilde": b"~",
    "null_word": b"null",
    "empty_znode": b"",
    "single_quoted": b"'quoted'",
    "double_quoted": b'"double quoted"',
    "quoted_number": b"'8080'",
    "date_like": b"2024-01-01",
    "trailing_newline": b"value\n",
    "unicode": "caf\u00e9 \u2713".encode(),
    "literal_block": b"|\n  line one\n  line two\n",
    "colon_key::nested.name": b"x",
}


def test_import_of_own_export_rewrites_nothing(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str, tmp_path: Path
) -> None:
    layer = f"{zk_root}/apps/shop/data"
    for name, raw in SPELLINGS.items():
        zk.create(f"{layer}/{name}", raw, makepath=True)
    before = {name: zk.exists(f"{layer}/{name}") for name in SPELLINGS}
    target = ["--zookeeper", zk_server.hosts, "--root", zk_root]

    export = tmp_path / "shop.yaml"
    with export.open("wb") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "mozagent", "data", "export", "shop", *target],
            stdout=fh,
            stderr=subprocess.PIPE,
            env=clean_env(),
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert set(yaml.safe_load(export.read_text())) == set(SPELLINGS)

    dry = mozagent("data", "import", "shop", str(export), "--dry-run", *target)
    assert dry.code == 0, dry
    assert "no change" in dry.out, dry
    assert "\n-" not in dry.out and "\n+" not in dry.out, dry

    real = mozagent("data", "import", "shop", str(export), *target)
    assert real.code == 0, real
    assert "no change" in real.out, real
    assert sorted(zk.get_children(layer)) == sorted(SPELLINGS)
    for name, stat in before.items():
        now = zk.exists(f"{layer}/{name}")
        assert (now.mzxid, now.version) == (stat.mzxid, stat.version), name
        assert zk.get(f"{layer}/{name}")[0] == SPELLINGS[name], name


# --- 12. deleting a whole layer needs --force -----------------------------------------------


def test_delete_layer_needs_force(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str
) -> None:
    layer = f"{zk_root}/apps/shop/data"
    for name in ("a", "b", "c"):
        zk.create(f"{layer}/{name}", b"1", makepath=True)
    target = ["--zookeeper", zk_server.hosts, "--root", zk_root]

    run = mozagent("data", "delete", "shop", *target)
    assert_refused(run, "--force", layer)
    assert sorted(zk.get_children(layer)) == ["a", "b", "c"]

    run = mozagent("data", "delete", "shop", "--force", *target)
    assert run.code == 0, run
    assert_no_traceback(run)
    assert zk.exists(layer) is None
    assert zk.exists(f"{zk_root}/apps/shop") is not None  # only the layer went


def test_delete_node_layer_needs_force(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_root: str
) -> None:
    app_layer = f"{zk_root}/apps/shop/data"
    node_layer = f"{zk_root}/apps/shop/nodes/web1/data"
    zk.create(f"{app_layer}/a", b"1", makepath=True)
    zk.create(f"{node_layer}/a", b"2", makepath=True)
    target = ["--zookeeper", zk_server.hosts, "--root", zk_root]
    run = mozagent("data", "delete", "shop", "--node", "web1", *target)
    assert_refused(run, "--force")
    assert zk.get_children(node_layer) == ["a"]
    run = mozagent("data", "delete", "shop", "--node", "web1", "--force", *target)
    assert run.code == 0, run
    assert zk.exists(node_layer) is None
    assert zk.get_children(app_layer) == ["a"]


# --- 13. a ZooKeeper that stops answering ---------------------------------------------------

STALL_TIMEOUT = 3
STALL_WALL_LIMIT = 10.0


def resume(server: ZooKeeperServer) -> None:
    if server.proc is not None and server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.proc.pid, signal.SIGCONT)


@pytest.fixture
def own_zk(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    """A server of this test's own: it gets SIGSTOPped, which must not hit the shared one."""
    server = ZooKeeperServer(data_dir=str(tmp_path / "zk"))
    server.start()
    try:
        yield server
    finally:
        resume(server)
        server.cleanup()


def put_key(server: ZooKeeperServer, path: str, value: bytes) -> None:
    client = KazooClient(hosts=server.hosts, timeout=10)
    client.start(timeout=15)
    try:
        client.create(path, value, makepath=True)
    finally:
        client.stop()
        client.close()


def get_key(server: ZooKeeperServer, path: str) -> bytes:
    client = KazooClient(hosts=server.hosts, timeout=10)
    client.start(timeout=30)
    try:
        return client.get(path)[0]
    finally:
        client.stop()
        client.close()


class StallingProxy(FaultProxy):
    """A relay to a real ZooKeeper that SIGSTOPs the server as soon as it has
    answered the first session handshake: the client is connected, then the server
    stops answering, which is what the --timeout of a data command must survive.

    From that moment the relay also holds everything the client sends: a
    SIGSTOP takes effect a moment after kill() returns, and a request sent in
    that moment was answered (the command then finished before any stall)."""

    def __init__(self, server: ZooKeeperServer) -> None:
        self.server = server
        self.stalled = threading.Event()
        super().__init__(server.port)

    def before_send(self, chunk: bytes, from_server: bool, first: bool) -> None:
        # The handshake's answer is on its way: the hold starts before the
        # client can have read it, so nothing it sends next gets through.
        if from_server and not self.stalled.is_set():
            assert self.server.proc is not None
            os.kill(self.server.proc.pid, signal.SIGSTOP)
            self.stalled.set()
            self.set_mode("hold")


@pytest.mark.parametrize("action", ["get", "set"])
def test_data_command_ends_within_timeout_when_zookeeper_is_stopped(
    own_zk: ZooKeeperServer, action: str
) -> None:
    put_key(own_zk, "/mozagent/apps/shop/data/greeting", b"before")
    words = ["greeting"] if action == "get" else ["greeting", "during-stop"]
    assert own_zk.proc is not None
    os.kill(own_zk.proc.pid, signal.SIGSTOP)
    try:
        run = mozagent(
            "data",
            action,
            "shop",
            *words,
            "--zookeeper",
            own_zk.hosts,
            "--timeout",
            str(STALL_TIMEOUT),
            timeout=30,
        )
    finally:
        resume(own_zk)
    assert run.code == 1, run
    assert_no_traceback(run)
    assert run.elapsed < STALL_WALL_LIMIT, run
    assert (
        f"did not answer within {STALL_TIMEOUT} s" in run.err
        or f"cannot connect to ZooKeeper at {own_zk.hosts} within {STALL_TIMEOUT} s" in run.err
    ), run
    if action == "set" and "did not answer" in run.err:
        assert "may or may not have been made" in run.err, run
    if "cannot connect" in run.err:
        # Never connected, so nothing can have been sent.
        assert get_key(own_zk, "/mozagent/apps/shop/data/greeting") == b"before"


@pytest.mark.parametrize("action", ["get", "set", "import", "export"])
def test_data_command_ends_within_timeout_when_zookeeper_stalls_after_connect(
    own_zk: ZooKeeperServer, tmp_path: Path, action: str
) -> None:
    put_key(own_zk, "/mozagent/apps/shop/data/greeting", b"before")
    words = {
        "get": ["greeting"],
        "set": ["greeting", "during-stall"],
        "import": [str(write_yaml(tmp_path / "in.yaml", {"greeting": "imported"}))],
        "export": [],
    }[action]
    proxy = StallingProxy(own_zk)
    try:
        run = mozagent(
            "data",
            action,
            "shop",
            *words,
            "--zookeeper",
            proxy.hosts,
            "--timeout",
            str(STALL_TIMEOUT),
            timeout=30,
        )
        assert proxy.stalled.is_set(), "the command never got a session: nothing was tested"
    finally:
        resume(own_zk)
        proxy.close()
    assert run.code == 1, run
    assert_no_traceback(run)
    assert run.elapsed < STALL_WALL_LIMIT, run
    assert f"ZooKeeper at {proxy.hosts} did not answer within {STALL_TIMEOUT} s" in run.err, run
    if action in ("set", "import"):
        assert "the change may or may not have been made" in run.err, run
    else:
        assert "may or may not" not in run.err, run


def test_in_process_timeout_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-1", "nan"):
        code = main(["data", "get", "shop", "a", "--zookeeper", "127.0.0.1:1", "--timeout", bad])
        assert code == 2, bad
        assert "--timeout must be a positive number" in capsys.readouterr().err


def test_the_cli_leaves_sigpipe_alone(tmp_path: Path) -> None:
    """Restoring SIGPIPE's default for `status | head` killed whatever called
    main() (the test runner, when a stand-in server later wrote to a closed
    socket) and any command writing to a socket ZooKeeper had closed."""
    before = signal.getsignal(signal.SIGPIPE)
    main(["status", "--state-dir", str(tmp_path)])
    assert signal.getsignal(signal.SIGPIPE) == before == signal.SIG_IGN
