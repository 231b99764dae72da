"""os-collect-config's collectors, used as a library, with its global settings
confined to this module.

os-collect-config keeps every setting in oslo.config's process-global ``CONF``;
nothing else in mozagent touches it. Collector modules are imported lazily and
one by one (a ZooKeeper-only host never loads oslo; a Heat host loads only the
collectors its metadata names), because the whole package costs ~22 MiB here.
Each collector keeps its own object between polls (the ``request`` collector
remembers Last-Modified, so an unchanged metadata costs a HEAD).
"""

from __future__ import annotations

import importlib
import json
import locale
import logging
import os
import time
from typing import Any

from mozagent.desired.deployments import redact

KNOWN = ("heat_local", "local", "request", "heat", "cfn", "ec2", "zaqar")
LOCAL = ("heat_local", "local")
# A metadata document over this size is refused: Heat's own API stops at 1 MiB
# per request body, and a deployment list this large is an attack or a bug.
MAX_METADATA_BYTES = 16 * 1024 * 1024


class NotConfigured(Exception):
    """The collector has no settings (yet): not an error at bootstrap."""


class Unavailable(Exception):
    """The collector is configured but failed this time; str() says why."""


class NotModified(Exception):
    """The source answered that nothing changed (``request``: Last-Modified)."""


def _request_impl() -> Any:
    """The ``requests`` the request collector is built with (its own injection
    point): records that a HEAD was answered and whether a GET followed,
    because the collector raises the same exception for "not modified" as for
    a failure or a document that is not JSON."""
    import requests

    class Session(requests.Session):
        head_answered = 0.0
        get_called = 0.0
        fresh = False

        def head(self, *args: Any, **kwargs: Any) -> Any:
            response = super().head(*args, **kwargs)
            self.head_answered = time.monotonic()
            return response

        def get(self, *args: Any, **kwargs: Any) -> Any:
            self.get_called = time.monotonic()
            response = super().get(*args, **kwargs)
            self.fresh = _written_recently(response.headers)
            return response

    class Impl:
        exceptions = requests.exceptions

    Impl.Session = Session  # type: ignore[attr-defined]
    return Impl


def _written_recently(headers: Any) -> bool:
    """Whether the document may still change within its Last-Modified second.

    Last-Modified has whole seconds: a write later in the same second as the
    one we fetched keeps it, and the collector's HEAD check would then call it
    unchanged for ever. Until the server's clock (Date) is two seconds past it,
    the document is fetched again at every poll."""
    from email.utils import parsedate_to_datetime

    try:
        modified = parsedate_to_datetime(headers["Last-Modified"])
        served = parsedate_to_datetime(headers["Date"])
    except (KeyError, TypeError, ValueError):
        return True
    return (served - modified).total_seconds() < 2


def _heat_clients(timeout: float) -> dict[str, Any]:
    """keystone and heat clients with a timeout on every request (the heat
    collector's injection points): a hung API must not hang the source."""
    from heatclient import client as heatclient
    from keystoneclient.v3 import client as keystoneclient

    class Keystone:
        @staticmethod
        def Client(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout)
            return keystoneclient.Client(*args, **kwargs)

    class Heat:
        @staticmethod
        def Client(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout)
            return heatclient.Client(*args, **kwargs)

    return {"keystoneclient": Keystone, "heatclient": Heat}


def _in_c_locale(collect: Any) -> Any:
    """The local collector sorts under the C locale and then restores what
    ``locale.getlocale()`` reported, which on Python 3.11 under C.UTF-8 is
    en_US.UTF-8, often not installed ("unsupported locale setting"). Entering
    it from plain C makes that restore a no-op; ours puts the real one back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_ALL, "C")
        return collect()
    finally:
        locale.setlocale(locale.LC_ALL, saved)


class Collectors:
    def __init__(self, state_dir: str, conf_file: str | None, timeout: float = 10.0) -> None:
        self._state_dir = state_dir
        self._timeout = timeout
        self._conf_file = conf_file
        self._cfg: Any = None
        self._instances: dict[str, Any] = {}
        self._settings: dict[str, dict[str, Any]] = {}

    def _conf(self) -> Any:
        """oslo's CONF, set up once: our cache dirs, then the operator's
        /etc/os-collect-config.conf when present (its values win over defaults)."""
        if self._cfg is not None:
            return self._cfg
        from oslo_config import cfg

        conf = cfg.CONF
        # Read by os-collect-config's merger, which "explodes" ungrouped
        # deployments into keys of their own (for os-apply-config) and raises
        # KeyError on an entry without a config. We read the deployments list
        # ourselves, validated, so nothing is exploded.
        conf.register_opts(
            [
                cfg.MultiStrOpt("deployment-key", default=[]),
                # What /etc/os-collect-config.conf says to poll, when it says.
                cfg.MultiStrOpt("collectors", default=[]),
            ]
        )
        files = [self._conf_file] if self._conf_file and os.path.exists(self._conf_file) else []
        conf(args=[], project="os-collect-config", default_config_files=files)
        self._cfg = conf
        # The collectors log their failures with the URL they polled: a Swift
        # TempURL's signature or Heat's credentials would reach our log. Our
        # own messages (redacted) say what failed.
        logging.getLogger("os_collect_config").setLevel(logging.ERROR)
        return conf

    def _register(self, name: str) -> Any:
        from oslo_config import cfg

        conf = self._cfg
        if name in ("heat", "zaqar") and "keystone" not in conf:
            # Their token cache (keystoneclient) lives under our state dir.
            self._register("keystone")
            cache = os.path.join(self._state_dir, "heat", "keystone-cache")
            conf.set_override("cache_dir", cache, group="keystone")
        module = importlib.import_module(f"os_collect_config.{name}")
        if name not in conf:
            conf.register_group(cfg.OptGroup(name=name))
        conf.register_opts(module.opts, group=name)
        return module

    def from_conf_file(self) -> list[str]:
        """The collectors named in /etc/os-collect-config.conf, if any."""
        return [c for c in self._conf().collectors if c in KNOWN]

    def configure(self, name: str, settings: dict[str, Any]) -> list[str]:
        """Apply one collector's settings (from the metadata's ``os-collect-config``
        section, or mozagent's own config); returns what was refused, and why."""
        if name not in KNOWN:
            return [f"unknown collector {name!r}"]
        if self._settings.get(name) == settings:
            return []
        conf = self._conf()
        module = self._register(name)
        multi = {o.dest for o in module.opts if getattr(o, "multi", False)}
        group = getattr(conf, name)
        refused = []
        for key, value in settings.items():
            opt = str(key).replace("-", "_")
            if opt not in group:
                refused.append(f"{name}.{key}: unknown setting")
                continue
            if opt in multi and isinstance(value, str):
                # Heat gives one value (cfn's "path": "server.Metadata") where
                # the option takes several; set as a string, the collector
                # would iterate over its characters.
                value = [value]
            try:
                conf.set_override(opt, value, group=name)
            except (ValueError, TypeError) as exc:
                refused.append(f"{name}.{key}: {exc}")
        self._settings[name] = dict(settings)
        self._instances.pop(name, None)  # new settings, new collector object
        return refused

    def collect(self, name: str) -> dict[str, Any]:
        """One poll of one collector: its metadata document."""
        if name not in KNOWN:
            raise NotConfigured(f"unknown collector {name!r}")
        self._conf()
        collector = self._instances.get(name)
        if collector is None:
            module = self._register(name)
            kwargs: dict[str, Any] = {}
            if name == "request":
                kwargs["requests_impl"] = _request_impl()
                self._cfg.set_override("timeout", self._timeout, group="request")
            elif name == "cfn":
                self._cfg.set_override("timeout", self._timeout, group="cfn")
            elif name == "heat":
                kwargs.update(_heat_clients(self._timeout))
            collector = self._instances[name] = module.Collector(**kwargs)
        from os_collect_config import exc

        asked = time.monotonic()
        try:
            content = _in_c_locale(collector.collect) if name == "local" else collector.collect()
        except exc.SourceNotConfigured as err:
            raise NotConfigured(f"{name}: not configured") from err
        except exc.SourceNotAvailable as err:
            session = getattr(collector, "_session", None)
            answered = getattr(session, "head_answered", 0.0) >= asked
            fetched = getattr(session, "get_called", 0.0) >= asked
            if answered and not fetched and collector.last_modified:
                raise NotModified(name) from err
            raise Unavailable(f"{name}: unavailable ({type(err).__name__})") from err
        except Exception as err:  # the library must not take the source down
            raise Unavailable(redact(f"{name}: {type(err).__name__}: {err}")) from err
        session = getattr(collector, "_session", None)
        if getattr(session, "fresh", False):
            collector.last_modified = None  # fetch again next poll (see _written_recently)
        if name == "local":
            # One (file name, document) pair per file, in C-locale order: the
            # later file wins, as os-apply-config merges them.
            document: Any = {}
            for _, doc in content:
                if isinstance(doc, dict):
                    document.update(doc)
        else:
            document = dict(content).get(name)
        if not isinstance(document, dict):
            raise Unavailable(f"{name}: metadata is a {type(document).__name__}, not a mapping")
        try:
            size = len(json.dumps(document))
        except (TypeError, ValueError, RecursionError) as err:
            raise Unavailable(f"{name}: metadata cannot be used ({err})") from err
        if size > MAX_METADATA_BYTES:
            raise Unavailable(f"{name}: metadata is {size} bytes, over the 16 MiB limit")
        return document
