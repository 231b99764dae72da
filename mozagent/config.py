"""The agent's configuration: one YAML file, validated before anything runs.

Every path the agent touches is a setting, so the same code runs as root on an
image and unprivileged in a sandbox. Validation is strict (unknown keys are
errors) because a typo in an infrastructure config that is silently ignored is
worse than a daemon that refuses to start.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_CONFIG_PATH = "/etc/mozagent/mozagent.yaml"
CONFIG_ENV = "MOZAGENT_CONFIG"
DEFAULT_ROOT = "/mozagent"


class ConfigError(Exception):
    """The configuration is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class ZooKeeperConfig:
    hosts: str
    root: str = DEFAULT_ROOT
    session_timeout: float = 10.0
    connect_timeout: float = 10.0
    retry_initial: float = 0.5
    retry_max: float = 30.0
    resync_interval: float = 600.0


@dataclass(frozen=True)
class PuppetConfig:
    binary: str = "puppet"
    manifests: tuple[str, ...] = ()
    modulepath: tuple[str, ...] = ()
    timeout: float = 1800.0
    extra_args: tuple[str, ...] = ()
    tree_ref_file: str | None = None


@dataclass(frozen=True)
class ApplyConfig:
    min_wait: float = 0.5
    max_wait: float = 5.0
    interval: float = 0.0
    retry_initial: float = 30.0
    retry_max: float = 600.0
    # How a run's processes are held: a cgroup per run where one can be made
    # ("auto", or "cgroup" to refuse to start without), else /proc sweeps.
    containment: str = "auto"


CONTAINMENTS = ("auto", "cgroup", "processes")


@dataclass(frozen=True)
class HeatConfig:
    """Heat SoftwareDeployments: where metadata comes from and how often."""

    # Remote collectors to poll; empty: as the local metadata's os-collect-config
    # section says (what a Heat-booted server is told).
    collectors: tuple[str, ...] = ()
    heat_local_paths: tuple[str, ...] = (
        "/var/lib/heat-cfntools/cfn-init-data",
        "/var/lib/cloud/data/cfn-init-data",
    )
    local_paths: tuple[str, ...] = ("/var/lib/os-collect-config/local-data",)
    os_collect_config_conf: str | None = "/etc/os-collect-config.conf"
    poll_min: float = 1.0
    poll_max: float = 2.0
    retry_max: float = 60.0
    request_timeout: float = 10.0
    hook_dirs: tuple[str, ...] = ("/var/lib/heat-config/hooks", "/usr/libexec/heat-config/hooks")
    timeout: float = 3600.0  # per script or hook deployment
    signal_retry_max: float = 300.0


@dataclass(frozen=True)
class ReleasesConfig:
    """App code: where releases live and how their install script runs."""

    apps_dir: str = "/srv/apps"
    keep: int = 3  # releases kept on disk, the current one included
    user: str | None = None  # default: a user named like the app, else nobody
    timeout: float = 1800.0  # the install script
    fetch_timeout: float = 600.0  # git fetching the ref


@dataclass(frozen=True)
class OrdersConfig:
    """Commands pushed to the app's hosts (what Shove did)."""

    max_age: float = 3600.0  # an agent that comes back later than this skips (expires) the order
    retention: float = 7 * 86400.0  # orders (znodes and local records) older than this are removed
    timeout: float = 3600.0  # one command


@dataclass(frozen=True)
class Config:
    app: str | None
    node: str
    state_dir: str
    hieradata_dir: str
    hiera_config: str
    facts_file: str
    puppet: PuppetConfig
    apply: ApplyConfig
    zookeeper: ZooKeeperConfig | None = None
    heat: HeatConfig | None = None
    releases: ReleasesConfig = field(default_factory=ReleasesConfig)
    orders: OrdersConfig = field(default_factory=OrdersConfig)
    log_level: str = "info"
    log_format: str = "auto"
    source: str = field(default="<defaults>", compare=False)

    @property
    def status_file(self) -> str:
        return os.path.join(self.state_dir, "status.json")

    @property
    def lastgood_file(self) -> str:
        return os.path.join(self.state_dir, "lastgood.json")


# --- validation helpers -------------------------------------------------------


def _fail(source: str, key: str, why: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {why}")


def _check_keys(source: str, prefix: str, raw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise _fail(source, name, f"unknown key (allowed here: {', '.join(sorted(allowed))})")


def _section(source: str, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(source, key, f"must be a mapping, got {type(value).__name__}")
    return value


def _string(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(source, key, f"must be a non-empty string, got {value!r}")
    return value


def _number(source: str, key: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, key, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        # `.nan` compares false with everything: a timeout of NaN never expires.
        raise _fail(source, key, f"must be a finite number, got {value!r}")
    if value < minimum:
        raise _fail(source, key, f"must be >= {minimum}, got {value!r}")
    return float(value)


def _positive(source: str, key: str, value: Any) -> float:
    """Timeouts and backoff bases: zero would mean "never wait" or a busy loop."""
    number = _number(source, key, value)
    if number <= 0:
        raise _fail(source, key, f"must be > 0, got {value!r}")
    return number


def parse_zk_hosts(source: str, key: str, value: Any) -> str:
    from kazoo.hosts import collect_hosts

    text = _string(source, key, value)
    try:
        hosts, _chroot = collect_hosts(text)
    except ValueError as exc:
        raise _fail(source, key, f"not a host:port list ({exc}): {text!r}") from None
    if not hosts:
        raise _fail(source, key, f"names no host: {text!r}")
    return text


def _string_list(source: str, key: str, value: Any) -> tuple[str, ...]:
    """Accept a list or a single string: a one-element list is a common typo-free default."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(source, key, f"must be a list of non-empty strings, got {value!r}")
    return tuple(value)


Converter = Callable[[str, str, Any], Any]
T = TypeVar("T")


def _get(
    source: str,
    prefix: str,
    raw: dict[str, Any],
    key: str,
    conv: Callable[[str, str, Any], Any],
    default: Any,
) -> Any:
    if key not in raw or raw[key] is None:
        return default
    return conv(source, f"{prefix}.{key}" if prefix else key, raw[key])


def _app_name(source: str, key: str, value: Any) -> str:
    from mozagent.desired.keys import NAME_RE

    text = _string(source, key, value)
    if not NAME_RE.fullmatch(text):
        raise _fail(source, key, f"{text!r} is not a valid name (letters, digits, '.', '_', '-')")
    return text


def parse_zk_root(source: str, key: str, value: Any) -> str:
    text = _string(source, key, value)
    if not text.startswith("/") or "//" in text:
        raise _fail(source, key, f"must be an absolute znode path like /mozagent, got {text!r}")
    return text.rstrip("/") or "/"


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


def _choice(choices: tuple[str, ...]) -> Callable[[str, str, Any], str]:
    def conv(source: str, key: str, value: Any) -> str:
        if value not in choices:
            raise _fail(source, key, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return conv


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Turn the parsed YAML into a Config, or raise ConfigError naming the bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    top = {
        "app",
        "node",
        "state_dir",
        "zookeeper",
        "heat",
        "hiera",
        "facts",
        "puppet",
        "apply",
        "releases",
        "orders",
        "log",
    }
    _check_keys(source, "", raw, top)

    app = _get(source, "", raw, "app", _app_name, None)
    node = _get(source, "", raw, "node", _app_name, None) or socket.getfqdn()
    state_dir = _get(source, "", raw, "state_dir", _string, "/var/lib/mozagent")

    zk_raw = raw.get("zookeeper")
    zookeeper = None
    if zk_raw is not None:
        zk_raw = _section(source, raw, "zookeeper")
        _check_keys(
            source,
            "zookeeper",
            zk_raw,
            {
                "hosts",
                "root",
                "session_timeout",
                "connect_timeout",
                "retry_initial",
                "retry_max",
                "resync_interval",
            },
        )
        if "hosts" not in zk_raw:
            raise _fail(source, "zookeeper.hosts", "is required when zookeeper is configured")
        zookeeper = ZooKeeperConfig(
            hosts=_get(source, "zookeeper", zk_raw, "hosts", parse_zk_hosts, None),
            root=_get(source, "zookeeper", zk_raw, "root", parse_zk_root, DEFAULT_ROOT),
            session_timeout=_get(source, "zookeeper", zk_raw, "session_timeout", _positive, 10.0),
            connect_timeout=_get(source, "zookeeper", zk_raw, "connect_timeout", _positive, 10.0),
            retry_initial=_get(source, "zookeeper", zk_raw, "retry_initial", _positive, 0.5),
            retry_max=_get(source, "zookeeper", zk_raw, "retry_max", _positive, 30.0),
            resync_interval=_get(source, "zookeeper", zk_raw, "resync_interval", _number, 600.0),
        )
        if app is None:
            raise _fail(source, "app", "is required when zookeeper is configured")

    hiera = _section(source, raw, "hiera")
    _check_keys(source, "hiera", hiera, {"datadir", "config"})
    facts = _section(source, raw, "facts")
    _check_keys(source, "facts", facts, {"path"})

    p = _section(source, raw, "puppet")
    _check_keys(
        source,
        "puppet",
        p,
        {"binary", "manifests", "modulepath", "timeout", "extra_args", "tree_ref_file"},
    )
    puppet = PuppetConfig(
        binary=_get(source, "puppet", p, "binary", _string, "puppet"),
        manifests=_get(source, "puppet", p, "manifests", _string_list, ()),
        modulepath=_get(source, "puppet", p, "modulepath", _string_list, ()),
        timeout=_get(source, "puppet", p, "timeout", _positive, 1800.0),
        extra_args=_get(source, "puppet", p, "extra_args", _string_list, ()),
        tree_ref_file=_get(source, "puppet", p, "tree_ref_file", _string, None),
    )

    a = _section(source, raw, "apply")
    _check_keys(
        source,
        "apply",
        a,
        {"min_wait", "max_wait", "interval", "retry_initial", "retry_max", "containment"},
    )
    apply = ApplyConfig(
        min_wait=_get(source, "apply", a, "min_wait", _number, 0.5),
        max_wait=_get(source, "apply", a, "max_wait", _number, 5.0),
        interval=_get(source, "apply", a, "interval", _number, 0.0),
        retry_initial=_get(source, "apply", a, "retry_initial", _positive, 30.0),
        retry_max=_get(source, "apply", a, "retry_max", _positive, 600.0),
        containment=_get(source, "apply", a, "containment", _choice(CONTAINMENTS), "auto"),
    )
    if apply.max_wait < apply.min_wait:
        raise _fail(source, "apply.max_wait", "must be >= apply.min_wait")

    log = _section(source, raw, "log")
    _check_keys(source, "log", log, {"level", "format"})
    heat = _heat(source, raw) if raw.get("heat") is not None or "heat" in raw else None
    releases, orders = _releases(source, raw), _orders(source, raw)

    return Config(
        app=app,
        node=node,
        state_dir=state_dir,
        hieradata_dir=_get(
            source, "hiera", hiera, "datadir", _string, os.path.join(state_dir, "hieradata")
        ),
        hiera_config=_get(
            source, "hiera", hiera, "config", _string, os.path.join(state_dir, "hiera.yaml")
        ),
        facts_file=_get(
            source,
            "facts",
            facts,
            "path",
            _string,
            os.path.join(state_dir, "facts.d", "mozagent.json"),
        ),
        puppet=puppet,
        apply=apply,
        zookeeper=zookeeper,
        heat=heat,
        releases=releases,
        orders=orders,
        log_level=_get(source, "log", log, "level", _choice(LOG_LEVELS), "info"),
        log_format=_get(source, "log", log, "format", _choice(LOG_FORMATS), "auto"),
        source=source,
    )


COLLECTORS = ("heat_local", "local", "request", "heat", "cfn", "ec2", "zaqar")


def _collectors(source: str, key: str, value: Any) -> tuple[str, ...]:
    names = _string_list(source, key, value)
    for name in names:
        if name not in COLLECTORS:
            raise _fail(source, key, f"unknown collector {name!r} (known: {', '.join(COLLECTORS)})")
    return names


SHORTEST_POLL = 0.2  # seconds: faster polling is a busy loop against Heat's API and Keystone


def _poll_interval(source: str, key: str, value: Any) -> float:
    number = _number(source, key, value)
    if number < SHORTEST_POLL:
        raise _fail(
            source,
            key,
            f"must be >= {SHORTEST_POLL} s (each poll costs Heat and Keystone a request), "
            f"got {value!r}",
        )
    return number


def _heat(source: str, raw: dict[str, Any]) -> HeatConfig:
    convs: dict[str, Converter] = {
        "collectors": _collectors,
        "heat_local_paths": _string_list,
        "local_paths": _string_list,
        "os_collect_config_conf": _string,
        "poll_min": _poll_interval,
        "poll_max": _poll_interval,
        "retry_max": _positive,
        "request_timeout": _positive,
        "hook_dirs": _string_list,
        "timeout": _positive,
        "signal_retry_max": _positive,
    }
    out = _typed_section(source, raw, "heat", HeatConfig, convs)
    if out.poll_max < out.poll_min:
        raise _fail(source, "heat.poll_max", "must be >= heat.poll_min")
    return out


def _count(source: str, key: str, value: Any) -> int:
    """A number of things kept: at least the one in use."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(source, key, f"must be a whole number >= 1, got {value!r}")
    return value


def _typed_section(
    source: str, raw: dict[str, Any], key: str, cls: type[T], convs: dict[str, Converter]
) -> T:
    """A section that maps one to one onto a dataclass: each field converted,
    its default where it is not set."""
    section = _section(source, raw, key)
    _check_keys(source, key, section, set(convs))
    defaults = cls()
    return cls(
        **{
            name: _get(source, key, section, name, conv, getattr(defaults, name))
            for name, conv in convs.items()
        }
    )


def _releases(source: str, raw: dict[str, Any]) -> ReleasesConfig:
    convs: dict[str, Converter] = {
        "apps_dir": _string,
        "keep": _count,
        "user": _app_name,
        "timeout": _positive,
        "fetch_timeout": _positive,
    }
    return _typed_section(source, raw, "releases", ReleasesConfig, convs)


def _orders(source: str, raw: dict[str, Any]) -> OrdersConfig:
    convs: dict[str, Converter] = dict.fromkeys(("max_age", "retention", "timeout"), _positive)
    return _typed_section(source, raw, "orders", OrdersConfig, convs)


def check_runnable(cfg: Config) -> None:
    """A daemon with nothing to apply would report "OK" forever while doing
    nothing: refuse it, as a config error, at start."""
    if not cfg.puppet.manifests and cfg.heat is None and cfg.zookeeper is None:
        raise _fail(
            cfg.source,
            "puppet.manifests",
            "nothing to apply: list at least one manifest, configure heat:, or zookeeper: "
            "(an app's releases and orders) (an empty or "
            "comment-only config gives the agent no work)",
        )


def config_path(explicit: str | None) -> str:
    """--config wins over $MOZAGENT_CONFIG, which wins over the default path."""
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    from mozagent.desired.keys import InvalidValue, parse_yaml_text

    try:
        raw = parse_yaml_text(text)  # strict: a duplicated key is an error, not a silent override
    except InvalidValue as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(raw, source=path)
