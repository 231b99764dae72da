"""Config validation: a bad config is refused at start with the key named, exit 2."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mozagent.config import ConfigError, load_config, parse_config


def test_defaults_follow_state_dir() -> None:
    cfg = parse_config({"state_dir": "/srv/agent", "puppet": {"manifests": "/x.pp"}}, "t.yaml")
    assert cfg.hieradata_dir == "/srv/agent/hieradata"
    assert cfg.hiera_config == "/srv/agent/hiera.yaml"
    assert cfg.facts_file == "/srv/agent/facts.d/mozagent.json"
    assert cfg.status_file == "/srv/agent/status.json"
    assert cfg.node == socket.getfqdn()
    assert cfg.zookeeper is None


def test_full_config_parses() -> None:
    cfg = parse_config(
        {
            "app": "shop",
            "node": "web1",
            "zookeeper": {"hosts": "a:2181,b:2181", "root": "/platform/"},
            "puppet": {"manifests": "/etc/site.pp", "modulepath": ["/a", "/b"], "timeout": 60},
            "apply": {"min_wait": 0.1, "max_wait": 1},
        }
    )
    assert cfg.zookeeper is not None and cfg.zookeeper.root == "/platform"
    assert cfg.puppet.manifests == ("/etc/site.pp",)
    assert cfg.puppet.modulepath == ("/a", "/b")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"appp": "x"}, "appp: unknown key"),
        ({"puppet": {"manifest": ["/x.pp"]}}, "puppet.manifest: unknown key"),
        ({"apply": {"min_wait": "fast"}}, "apply.min_wait: must be a number"),
        ({"apply": {"min_wait": -1}}, "apply.min_wait: must be >= 0"),
        ({"apply": {"min_wait": 5, "max_wait": 1}}, "apply.max_wait: must be >= apply.min_wait"),
        ({"zookeeper": {"hosts": "h:1"}}, "app: is required when zookeeper is configured"),
        ({"app": "a", "zookeeper": {}}, "zookeeper.hosts: is required"),
        ({"app": "a", "zookeeper": {"hosts": None}}, "zookeeper.hosts: is required"),
        ({"app": "a", "zookeeper": {"hosts": "h", "root": "rel"}}, "zookeeper.root: must be"),
        ({"app": "bad/name"}, "app: 'bad/name' is not a valid name"),
        ({"puppet": {"timeout": True}}, "puppet.timeout: must be a number"),
        ({"log": {"level": "loud"}}, "log.level: must be one of"),
        ({"puppet": "x"}, "puppet: must be a mapping"),
        ({"app": "a", "zookeeper": {"hosts": "zk1:abc"}}, "zookeeper.hosts: not a host:port"),
        ({"puppet": {"timeout": 0}}, "puppet.timeout: must be > 0"),
        ({"apply": {"retry_initial": 0}}, "apply.retry_initial: must be > 0"),
        (["list"], "the top level must be a mapping"),
        (
            {"app": "a", "zookeeper": {"hosts": "h:1", "credentials_file": "zk.cred"}},
            "zookeeper.credentials_file: must be an absolute path",
        ),
        (
            {"app": "a", "zookeeper": {"hosts": "h:1", "tls_ca": "/ca", "tls_cert": "/c"}},
            "zookeeper.tls_cert: needs both zookeeper.tls_cert and zookeeper.tls_key",
        ),
        (
            {"app": "a", "zookeeper": {"hosts": "h:1", "tls_cert": "/c", "tls_key": "/k"}},
            "zookeeper.tls_cert: needs zookeeper.tls_ca",
        ),
    ],
)
def test_bad_config_names_the_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "/etc/mozagent/mozagent.yaml")
    assert str(info.value).startswith("/etc/mozagent/mozagent.yaml")
    assert message in str(info.value)


def test_unreadable_configs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("app: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_daemon_refuses_bad_config_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "mozagent.yaml"
    cfg.write_text(f"state_dir: {tmp_path}\npuppet:\n  timeout: soon\n")
    res = subprocess.run(
        [sys.executable, "-m", "mozagent", "daemon", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert f"{cfg}: puppet.timeout: must be a number" in res.stderr
    assert not (tmp_path / "status.json").exists()


def test_config_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "mozagent.yaml"
    cfg.write_text("bogus: 1\n")
    res = subprocess.run(
        [sys.executable, "-m", "mozagent", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MOZAGENT_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 2
    assert f"{cfg}: bogus: unknown key" in res.stderr


def test_duplicate_keys_in_config_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "mozagent.yaml"
    cfg.write_text("app: a\napp: b\n")
    with pytest.raises(ConfigError, match="duplicate key 'app'"):
        load_config(str(cfg))


def test_each_default_is_a_value_its_key_accepts() -> None:
    """Defaults are stated once, in each section's dataclass: writing one out in
    the file changes nothing, so none is a value the key would refuse."""
    base: dict[str, Any] = {"app": "a", "zookeeper": {"hosts": "h:1"}, "heat": {}}
    default = parse_config(base, "t.yaml")
    for name in ("zookeeper", "puppet", "apply", "heat", "releases", "orders"):
        section = getattr(default, name)
        for setting in dataclasses.fields(section):
            value = getattr(section, setting.name)
            written = list(value) if isinstance(value, tuple) else value
            raw = {**base, name: {**base.get(name, {}), setting.name: written}}
            assert parse_config(raw, "t.yaml") == default, f"{name}.{setting.name}: {value!r}"
