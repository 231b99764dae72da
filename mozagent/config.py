"""The agent's configuration: one YAML file, validated before anything runs.

Every path the agent touches is a setting, so the same code runs as root on an
image and unprivileged in a sandbox. Validation is strict (unknown keys are
errors) because a typo in an infrastructure config that is silently ignored is
worse than a daemon that refuses to start.

Each section is a frozen dataclass whose fields say, once, their default and
how a YAML value becomes them (``_setting``); one builder (``_typed_section``)
reads every section the same way, so a new setting is one line and every
message names the file, the key and what is wrong.
"""

from __future__ import annotations

import dataclasses
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


# --- validation helpers -------------------------------------------------------


def _fail(source: str, key: str, why: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {why}")


def _check_keys(source: str, prefix: str, raw: dict[str, Any], allowed: set[str]) -> None:
    # str: YAML keys may be numbers (``1: x``), which do not sort with strings;
    # repr for a key that is not printable, so the message stays one line.
    unknown = sorted(
        (k if isinstance(k, str) and k.isprintable() else repr(k)) for k in set(raw) - allowed
    )
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


def _absolute_path(source: str, key: str, value: Any) -> str:
    text = _string(source, key, value)
    if not os.path.isabs(text):
        raise _fail(source, key, f"must be an absolute path, got {text!r}")
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


# os-collect-config collectors that mozagent can drive (sources/collectors.py
# uses this list as its own, so the config and the sources agree).
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


def _count(source: str, key: str, value: Any) -> int:
    """A number of things kept: at least the one in use."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(source, key, f"must be a whole number >= 1, got {value!r}")
    return value


# --- sections -----------------------------------------------------------------

_CONVERT = "mozagent.convert"
_AT_LEAST = "mozagent.at_least"


def _setting(conv: Converter, default: Any = dataclasses.MISSING, at_least: str = "") -> Any:
    """A section's field: its one default (none: the key is required once the
    section is there), how a YAML value becomes it, and the field it may not
    be below (``max_wait`` and ``min_wait``)."""
    return field(default=default, metadata={_CONVERT: conv, _AT_LEAST: at_least})


@dataclass(frozen=True)
class ZooKeeperConfig:
    hosts: str = _setting(parse_zk_hosts)
    root: str = _setting(parse_zk_root, DEFAULT_ROOT)
    session_timeout: float = _setting(_positive, 10.0)
    connect_timeout: float = _setting(_positive, 10.0)
    retry_initial: float = _setting(_positive, 0.5)
    retry_max: float = _setting(_positive, 30.0)
    resync_interval: float = _setting(_number, 600.0)
    # A file holding this agent's digest identity, user:password (0600,
    # owned by the agent's user: mozagent/zkauth.py). Never the password here.
    credentials_file: str | None = _setting(_absolute_path, None)
    # TLS to ZooKeeper's secureClientPort (hosts name that port): the CA that
    # signed the servers' certificates, and this client's certificate and key
    # (its x509 identity). With tls_ca set there is no plain-text fallback.
    tls_ca: str | None = _setting(_absolute_path, None)
    tls_cert: str | None = _setting(_absolute_path, None)
    tls_key: str | None = _setting(_absolute_path, None)


PUPPET_RUNNERS = ("warm", "exec")


@dataclass(frozen=True)
class PuppetConfig:
    binary: str = _setting(_string, "puppet")
    manifests: tuple[str, ...] = _setting(_string_list, ())
    modulepath: tuple[str, ...] = _setting(_string_list, ())
    timeout: float = _setting(_positive, 1800.0)
    extra_args: tuple[str, ...] = _setting(_string_list, ())
    tree_ref_file: str | None = _setting(_string, None)
    # "warm": runs forked from a warm parent (apply/warm.py), ~2.5x faster here;
    # "exec": a fresh `puppet apply` process per run.
    runner: str = _setting(_choice(PUPPET_RUNNERS), "warm")
    warm_idle_exit: float = _setting(_positive, 900.0)
    warm_max_runs: int = _setting(_count, 500)
    warm_max_rss_mib: float = _setting(_positive, 512.0)
    warm_start_timeout: float = _setting(_positive, 60.0)


CONTAINMENTS = ("auto", "cgroup", "processes")


@dataclass(frozen=True)
class ApplyConfig:
    min_wait: float = _setting(_number, 0.5)
    max_wait: float = _setting(_number, 5.0, at_least="min_wait")
    interval: float = _setting(_number, 0.0)
    retry_initial: float = _setting(_positive, 30.0)
    retry_max: float = _setting(_positive, 600.0)
    # The run budget (apply/scheduler.py): at most one run per N seconds, and
    # at most N CPU seconds of runs in any minute; 0: no bound.
    min_interval: float = _setting(_number, 0.0)
    cpu_per_minute: float = _setting(_number, 0.0)
    # How a run's processes are held: a cgroup per run where one can be made
    # ("auto", or "cgroup" to refuse to start without), else /proc sweeps.
    containment: str = _setting(_choice(CONTAINMENTS), "auto")


@dataclass(frozen=True)
class HeatConfig:
    """Heat SoftwareDeployments: where metadata comes from and how often."""

    # Remote collectors to poll; empty: as the local metadata's os-collect-config
    # section says (what a Heat-booted server is told).
    collectors: tuple[str, ...] = _setting(_collectors, ())
    heat_local_paths: tuple[str, ...] = _setting(
        _string_list, ("/var/lib/heat-cfntools/cfn-init-data", "/var/lib/cloud/data/cfn-init-data")
    )
    local_paths: tuple[str, ...] = _setting(
        _string_list, ("/var/lib/os-collect-config/local-data",)
    )
    os_collect_config_conf: str | None = _setting(_string, "/etc/os-collect-config.conf")
    poll_min: float = _setting(_poll_interval, 1.0)
    poll_max: float = _setting(_poll_interval, 2.0, at_least="poll_min")
    retry_max: float = _setting(_positive, 60.0)
    request_timeout: float = _setting(_positive, 10.0)
    hook_dirs: tuple[str, ...] = _setting(
        _string_list, ("/var/lib/heat-config/hooks", "/usr/libexec/heat-config/hooks")
    )
    timeout: float = _setting(_positive, 3600.0)  # per script or hook deployment
    signal_retry_max: float = _setting(_positive, 300.0)


@dataclass(frozen=True)
class ReleasesConfig:
    """App code: where releases live and how their install script runs."""

    apps_dir: str = _setting(_string, "/srv/apps")
    keep: int = _setting(_count, 3)  # releases kept on disk, the current one included
    user: str | None = _setting(_app_name, None)  # default: a user named like the app, else nobody
    timeout: float = _setting(_positive, 1800.0)  # the install script
    fetch_timeout: float = _setting(_positive, 600.0)  # git fetching the ref
    # Credentials for private sources: a git-credential-store file (0600, the
    # agent's); with it, a source URL carrying credentials is refused.
    git_credentials: str | None = _setting(_absolute_path, None)


@dataclass(frozen=True)
class OrdersConfig:
    """Commands pushed to the app's hosts (what Shove did)."""

    # An agent that comes back later than this skips (expires) the order.
    max_age: float = _setting(_positive, 3600.0)
    # Orders (znodes and local records) older than this are removed.
    retention: float = _setting(_positive, 7 * 86400.0)
    timeout: float = _setting(_positive, 3600.0)  # one command


@dataclass(frozen=True)
class HieraConfig:
    """Where the rendered data and hiera.yaml go; unset: under state_dir."""

    datadir: str | None = _setting(_string, None)
    config: str | None = _setting(_string, None)


@dataclass(frozen=True)
class FactsConfig:
    path: str | None = _setting(_string, None)  # unset: under state_dir


@dataclass(frozen=True)
class LogConfig:
    level: str = _setting(_choice(LOG_LEVELS), "info")
    format: str = _setting(_choice(LOG_FORMATS), "auto")


@dataclass(frozen=True)
class Config:
    """What ``parse_config`` made of the file; every default lives in a section."""

    app: str | None
    node: str
    state_dir: str
    hieradata_dir: str
    hiera_config: str
    facts_file: str
    puppet: PuppetConfig
    apply: ApplyConfig
    zookeeper: ZooKeeperConfig | None
    heat: HeatConfig | None
    releases: ReleasesConfig
    orders: OrdersConfig
    log_level: str
    log_format: str
    source: str = field(compare=False)

    @property
    def status_file(self) -> str:
        return os.path.join(self.state_dir, "status.json")

    @property
    def lastgood_file(self) -> str:
        return os.path.join(self.state_dir, "lastgood.json")


def _typed_section(source: str, raw: dict[str, Any], key: str, cls: type[T]) -> T:
    """Read section ``key`` into ``cls`` as its fields say: unknown keys refused,
    each value converted (unset or null: the default), required ones present,
    then each ``at_least`` pair compared."""
    section = _section(source, raw, key)
    settings = dataclasses.fields(cls)  # type: ignore[arg-type]
    _check_keys(source, key, section, {s.name for s in settings})
    values: dict[str, Any] = {}
    for s in settings:
        if s.default is dataclasses.MISSING and section.get(s.name) is None:
            raise _fail(source, f"{key}.{s.name}", f"is required when {key} is configured")
        values[s.name] = _get(source, key, section, s.name, s.metadata[_CONVERT], s.default)
    for s in settings:
        lower = s.metadata[_AT_LEAST]
        if lower and values[s.name] < values[lower]:
            raise _fail(source, f"{key}.{s.name}", f"must be >= {key}.{lower}")
    return cls(**values)


def _check_tls(source: str, z: ZooKeeperConfig) -> None:
    if (z.tls_cert is None) != (z.tls_key is None):
        given = "zookeeper.tls_cert" if z.tls_cert else "zookeeper.tls_key"
        raise _fail(source, given, "needs both zookeeper.tls_cert and zookeeper.tls_key")
    if z.tls_cert and not z.tls_ca:
        raise _fail(source, "zookeeper.tls_cert", "needs zookeeper.tls_ca (the CA of the servers)")


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Turn the parsed YAML into a Config, or raise ConfigError naming the bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    sections = (
        "zookeeper",
        "heat",
        "hiera",
        "facts",
        "puppet",
        "apply",
        "releases",
        "orders",
        "log",
    )
    _check_keys(source, "", raw, {"app", "node", "state_dir", *sections})

    def section(key: str, cls: type[T]) -> T:
        return _typed_section(source, raw, key, cls)

    app = _get(source, "", raw, "app", _app_name, None)
    node = _get(source, "", raw, "node", _app_name, None) or socket.getfqdn()
    state_dir = _get(source, "", raw, "state_dir", _string, "/var/lib/mozagent")
    zookeeper = None
    if raw.get("zookeeper") is not None:  # zookeeper: null is no ZooKeeper
        zookeeper = section("zookeeper", ZooKeeperConfig)
        _check_tls(source, zookeeper)
        if app is None:
            raise _fail(source, "app", "is required when zookeeper is configured")
    hiera = section("hiera", HieraConfig)
    facts = section("facts", FactsConfig)
    log = section("log", LogConfig)
    return Config(
        app=app,
        node=node,
        state_dir=state_dir,
        hieradata_dir=hiera.datadir or os.path.join(state_dir, "hieradata"),
        hiera_config=hiera.config or os.path.join(state_dir, "hiera.yaml"),
        facts_file=facts.path or os.path.join(state_dir, "facts.d", "mozagent.json"),
        puppet=section("puppet", PuppetConfig),
        apply=section("apply", ApplyConfig),
        zookeeper=zookeeper,
        heat=section("heat", HeatConfig) if "heat" in raw else None,  # heat: null is all defaults
        releases=section("releases", ReleasesConfig),
        orders=section("orders", OrdersConfig),
        log_level=log.level,
        log_format=log.format,
        source=source,
    )


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
