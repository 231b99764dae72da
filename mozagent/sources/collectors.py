"""os-collect-config's collectors, used as a library, with its global settings
confined to this module.

os-collect-config keeps every setting in oslo.config's process-global ``CONF``;
nothing else in mozagent touches it. Collector modules are imported lazily and
one by one (a ZooKeeper-only host never loads oslo; a Heat host loads only the
collectors its metadata names), because the whole package costs ~22 MiB here.
Each collector keeps its own object between polls (the ``request`` collector
remembers Last-Modified, so an unchanged metadata costs a HEAD).

What a collector reads is bounded while it is read, whatever the source sends:
HTTP bodies (every collector's, through each one's injection point: a
``requests_impl``, a heat or zaqar client) are streamed, refused at
``MAX_METADATA_BYTES`` (Content-Length first) and must arrive within the
request timeout in all; files are read up to the limit, and the JSON the
collector modules decode goes through ``loads_bounded`` (their module-level
``json`` and, for the modules that read files, ``open`` are ours: the library
has no other injection point for them), so no document can cost the agent its
memory, its stack or its worker. A document the source serves but that cannot
be used is ``Unusable``, with the reason; one too slow to arrive is
``Unavailable``, with the reason. Zaqar's websocket transport is the exception
(no injection point: see the README's Known limits).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import locale
import logging
import os
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from mozagent.config import COLLECTORS, ConfigError
from mozagent.desired.deployments import loads_bounded, redact

KNOWN = COLLECTORS  # the names heat.collectors accepts: one list, kept in config
LOCAL = ("heat_local", "local")
# A metadata document over this size is refused: Heat's own API stops at 1 MiB
# per request body, and a deployment list this large is an attack or a bug.
MAX_METADATA_BYTES = 16 * 1024 * 1024
LIMIT = "16 MiB"
CHUNK = 64 * 1024
INSTALL = "pip install 'mozagent[heat]'"


class NotConfigured(Exception):
    """The collector has no settings (yet): not an error at bootstrap."""


class Unavailable(Exception):
    """The collector is configured but failed this time; str() says why."""


class NotModified(Exception):
    """The source answered that nothing changed (``request``: Last-Modified)."""


class Unusable(Unavailable):
    """The source served a document that cannot be used (not JSON, over the size
    limit, not a mapping); str() says why. It stays so until the document changes."""


class _Refused(ValueError):
    """Raised inside a collector's read: the collectors treat a ValueError as a
    bad document, so they give up on it the way they do on bad JSON."""


class _Reading:
    """What went wrong with the documents of the collect() under way, and what
    is left of its byte budget. Collectors run on the Heat source's thread only,
    one at a time, so one instance serves them all."""

    def __init__(self) -> None:
        self.refused: list[str] = []
        self.slow: list[str] = []  # a read that passed its deadline: a failure
        self.budget = MAX_METADATA_BYTES
        self.where = "the metadata"

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def refuse(self, why: str) -> _Refused:
        self.refused.append(why)
        return _Refused(why)


_reading = _Reading()


def _loads(text: str | bytes, *args: Any, **kwargs: Any) -> Any:
    """The collector modules' ``json.loads``: bounded depth, and the reason kept.
    Every document they decode must be a mapping (they merge it into one)."""
    try:
        doc = loads_bounded(text)
    except ValueError as exc:
        raise _reading.refuse(f"{_reading.where} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _reading.refuse(f"{_reading.where} is a {type(doc).__name__}, not a mapping")
    return doc


# The ``json`` the collector modules see.
_JSON = SimpleNamespace(loads=_loads, load=lambda fh, *a, **k: _loads(fh.read()), dumps=json.dumps)


class _BoundedFile:
    """What ``open`` gives the file collectors: one bounded, UTF-8 read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by __exit__

    def __enter__(self) -> _BoundedFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()

    def read(self) -> str:
        _reading.where = self.path
        data = self._fh.read(_reading.budget + 1)
        if len(data) > _reading.budget:
            raise _reading.refuse(f"{self.path} is over the {LIMIT} limit for metadata")
        _reading.budget -= len(data)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _reading.refuse(f"{self.path} is not UTF-8 ({exc})") from None


# The modules that read metadata from files: the local collectors, and ec2
# (its cache file, and the config drive's meta-data.json).
_FILE_READERS = (*LOCAL, "ec2", "config_drive")


def _guard(module: Any) -> Any:
    """Give a collector module our bounded ``json`` (and ``open`` for the file ones)."""
    if getattr(module, "json", None) is not None:
        module.json = _JSON
    if module.__name__.rsplit(".", 1)[-1] in _FILE_READERS:
        module.open = lambda path, *args, **kwargs: _BoundedFile(path)
    return module


def _read_capped(response: Any, deadline: float, seconds: float) -> bytes:
    """A streamed body, refused at the limit: by Content-Length before reading,
    else when the bytes read pass it (the budget is the collect()'s: ec2 reads
    a tree of documents). Memory stays at the limit at most.

    Read by ``deadline`` (monotonic) in all, the request's ``seconds``:
    requests' timeout is per read, so a server sending a byte every few seconds
    would hold the poll until the watchdog restarts the agent. At the deadline
    the socket is shut down, which ends a read blocked anywhere in the body
    (a chunk's size line too)."""
    length = str(response.headers.get("Content-Length") or "")
    if length.isdigit() and int(length) > _reading.budget:
        raise _reading.refuse(
            f"the metadata is {int(length)} bytes (Content-Length), over the {LIMIT} limit"
        )
    watch = _Deadline(response, deadline)
    body = bytearray()
    try:
        for chunk in response.iter_content(CHUNK):
            if watch.late:
                break
            body += chunk
            if len(body) > _reading.budget:
                raise _reading.refuse(
                    f"the metadata is over the {LIMIT} limit (stopped reading at {len(body)} bytes)"
                )
    except Exception:
        if not watch.late:  # the shutdown's own errors are the deadline's
            raise
    finally:
        watch.close()
    if watch.late:
        why = (
            f"the metadata did not arrive within {seconds:g} s "
            f"(heat.request_timeout): {len(body)} bytes of it read"
        )
        _reading.slow.append(why)
        raise _Slow(why)
    _reading.budget -= len(body)
    return bytes(body)


class _Slow(Exception):
    """A body still arriving at the request's deadline."""


class _Deadline:
    """Shuts a response's socket down at ``deadline``, unless closed first.

    It holds a duplicate of the socket's descriptor from the start: the
    response's own may be closed and its number reused by the time the timer
    fires, and a shutdown must never reach another connection."""

    def __init__(self, response: Any, deadline: float) -> None:
        self.late = False
        self._lock = threading.Lock()
        try:
            self._sock: socket.socket | None = socket.socket(fileno=os.dup(response.raw.fileno()))
        except (OSError, ValueError, AttributeError):  # no body left to read
            self._sock = None
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._stop)
        self._timer.daemon = True
        self._timer.start()

    def _stop(self) -> None:
        with self._lock:
            self.late = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def bounded_session(seconds: float) -> Any:
    """A ``requests.Session`` class whose every request has a timeout (zaqar's
    client gives none) and a body read under the limit and within ``seconds``
    of its start, uncompressed (a small compressed body must not inflate past
    the limit), and decoded as UTF-8 unless the server says otherwise (JSON is
    UTF-8; guessing costs a pass over the body). ``answered`` sees the headers
    before the body is read."""
    import requests

    class BoundedSession(requests.Session):
        def request(self, method: str, url: str, **kwargs: Any) -> Any:  # type: ignore[override]
            deadline = time.monotonic() + seconds
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = seconds
            if method.upper() == "HEAD":  # no body (its Content-Length is the GET's)
                return super().request(method, url, **kwargs)
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Accept-Encoding": "identity"}
            kwargs["stream"] = True
            response = super().request(method, url, **kwargs)
            self.answered(method.upper(), response.headers)
            try:
                response._content = _read_capped(response, deadline, seconds)
            except _Refused as exc:
                raise requests.exceptions.RequestException(str(exc)) from None
            except _Slow as exc:
                raise requests.exceptions.Timeout(str(exc)) from None
            finally:
                response.close()
            response._content_consumed = True
            if response.encoding is None:
                response.encoding = "utf-8"
            return response

        def answered(self, method: str, headers: Any) -> None:
            """The headers of a response whose body is about to be read."""

    return BoundedSession


def _request_impl(seconds: float) -> Any:
    """The ``requests`` the request, cfn and ec2 collectors are built with
    (their own injection point): bounded reads, and for the request collector
    a record of whether a HEAD was answered and a GET followed, because it
    raises the same exception for "not modified" as for a failure or a
    document that is not JSON."""
    import requests

    class Session(bounded_session(seconds)):  # type: ignore[misc]
        head_answered = 0.0
        head_headers: Any = {}
        get_called = 0.0
        fresh = False

        def head(self, *args: Any, **kwargs: Any) -> Any:
            response = super().head(*args, **kwargs)
            self.head_answered = time.monotonic()
            self.head_headers = response.headers
            return response

        def get(self, *args: Any, **kwargs: Any) -> Any:
            self.get_called = time.monotonic()
            self.fresh = True  # until the answer's headers say otherwise
            return super().get(*args, **kwargs)

        def answered(self, method: str, headers: Any) -> None:
            if method == "GET":
                self.fresh = _written_recently(headers)

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


def _bounded_metadata(client: Any, timeout: float) -> Any:
    """The heat client's ``resources.metadata``, read under the limit.

    heatclient reads whole bodies with module-level ``requests`` calls, with no
    session to hand it: the one call the heat collector makes for metadata is
    made here instead, with the client's endpoint, token and TLS settings."""
    http = client.http_client
    resources = client.resources

    def metadata(stack_id: str, resource_name: str) -> Any:
        stack_id = resources._resolve_stack_id(stack_id)
        url = (
            f"{http.endpoint_url.rstrip('/')}/stacks/{quote(stack_id)}"
            f"/resources/{quote(resource_name, safe='')}/metadata"
        )
        kwargs: dict[str, Any] = {"timeout": timeout}
        if http.verify_cert is not None:
            kwargs["verify"] = http.verify_cert
        if http.cert_file and http.key_file:
            kwargs["cert"] = (http.cert_file, http.key_file)
        _reading.where = "the metadata"
        with bounded_session(timeout)() as session:
            response = session.get(
                url,
                headers={"X-Auth-Token": http.auth_token, "Accept": "application/json"},
                **kwargs,
            )
        response.raise_for_status()
        body = _loads(response.content)
        return body.get("metadata") if isinstance(body, dict) else None

    return metadata


def _keystone(timeout: float) -> Any:
    """A keystone client with a timeout on every request: a hung API must not
    hang the source."""
    from keystoneclient.v3 import client as keystoneclient

    class Keystone:
        @staticmethod
        def Client(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout)
            return keystoneclient.Client(*args, **kwargs)

    return Keystone


def _heat_clients(timeout: float) -> dict[str, Any]:
    """keystone and heat clients with a timeout on every request (the heat
    collector's injection points), and the metadata read under the limit."""
    from heatclient import client as heatclient

    class Heat:
        @staticmethod
        def Client(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout)
            client = heatclient.Client(*args, **kwargs)
            client.resources.metadata = _bounded_metadata(client, timeout)
            return client

    return {"keystoneclient": _keystone(timeout), "heatclient": Heat}


def _zaqar_clients(timeout: float) -> dict[str, Any]:
    """keystone with a timeout, and a zaqar client whose HTTP transport reads
    through a bounded session (the zaqar collector's injection points):
    zaqarclient's own session has no timeout and reads whole bodies. Its
    websocket transport (``zaqar.use_websockets``) has no such point."""
    from zaqarclient.queues.v2 import client as zaqarclient

    session = bounded_session(timeout)

    class Client(zaqarclient.Client):  # type: ignore[misc]
        def _get_transport(self, request: Any) -> Any:
            transport = super()._get_transport(request)
            http = getattr(transport, "client", None)  # the HTTP transport's
            if http is not None and not isinstance(getattr(http, "session", None), session):
                http.session = session()
            return transport

    return {"keystoneclient": _keystone(timeout), "zaqarclient": SimpleNamespace(Client=Client)}


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
                # Where ec2 looks for a cached document first (os-collect-config's
                # own option, which ec2 reads and never registers): ours, empty.
                cfg.StrOpt("cachedir"),
            ]
        )
        conf.set_default("cachedir", os.path.join(self._state_dir, "heat", "collector-cache"))
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
        module = _guard(importlib.import_module(f"os_collect_config.{name}"))
        if name == "ec2":
            _guard(importlib.import_module("os_collect_config.config_drive"))
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
        try:
            module = self._register(name)
        except ImportError as exc:
            return [_missing(name, exc)]
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
            try:
                module = self._register(name)
            except ImportError as exc:
                raise Unavailable(_missing(name, exc)) from None
            kwargs: dict[str, Any] = {}
            if name in ("request", "cfn", "ec2"):
                kwargs["requests_impl"] = _request_impl(self._timeout)
                self._cfg.set_override("timeout", self._timeout, group=name)
            elif name == "heat":
                kwargs.update(_heat_clients(self._timeout))
            elif name == "zaqar":
                kwargs.update(_zaqar_clients(self._timeout))
            collector = self._instances[name] = module.Collector(**kwargs)
        from os_collect_config import exc

        asked = time.monotonic()
        session = getattr(collector, "_session", None)
        _reading.reset()
        try:
            content = _in_c_locale(collector.collect) if name == "local" else collector.collect()
        except exc.SourceNotConfigured as err:
            raise NotConfigured(f"{name}: not configured") from err
        except exc.SourceNotAvailable as err:
            answered = getattr(session, "head_answered", 0.0) >= asked
            fetched = getattr(session, "get_called", 0.0) >= asked
            if answered and not fetched and collector.last_modified:
                raise NotModified(name) from err
            if _reading.refused:
                raise self._unusable(name, collector, session) from err
            if _reading.slow:
                raise Unavailable(redact(f"{name}: {_reading.slow[0]}")) from err
            raise Unavailable(f"{name}: unavailable ({type(err).__name__})") from err
        except Exception as err:  # the library must not take the source down
            if _reading.refused:
                raise self._unusable(name, collector, session) from err
            if _reading.slow:
                raise Unavailable(redact(f"{name}: {_reading.slow[0]}")) from err
            raise Unavailable(redact(f"{name}: {type(err).__name__}: {err}")) from err
        if _reading.refused:  # a file skipped (heat_local): not the whole metadata
            raise self._unusable(name, collector, session)
        if getattr(session, "fresh", False) and hasattr(collector, "last_modified"):
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
            raise Unusable(f"{name}: the metadata is a {type(document).__name__}, not a mapping")
        try:
            size = len(json.dumps(document))
        except (TypeError, ValueError, RecursionError) as err:
            raise Unusable(f"{name}: the metadata cannot be used ({err})") from err
        if size > MAX_METADATA_BYTES:
            raise Unusable(f"{name}: the metadata is {size} bytes, over the {LIMIT} limit")
        return document

    @staticmethod
    def _unusable(name: str, collector: Any, session: Any) -> Unusable:
        """The reason, and no new download of the same document: the request
        collector fetches again only once Last-Modified moves on."""
        if not hasattr(collector, "last_modified"):
            pass  # fetched in full at every poll (cfn, heat): nothing to hold
        elif getattr(session, "fresh", True):
            collector.last_modified = None  # may still change within its second
        elif not collector.last_modified:  # refused before the collector kept it
            try:
                collector.last_modified = collector.check_fetch_content(session.head_headers)
            except Exception:  # the library's own parse of Last-Modified
                collector.last_modified = None
        return Unusable(redact(f"{name}: {_reading.refused[0]}"))


def _missing(name: str, exc: ImportError) -> str:
    return (
        f"{name}: os-collect-config's {name} collector cannot be loaded ({exc}); "
        f"install mozagent's heat extra: {INSTALL}"
    )


# What a heat: section needs at start, imported there (the first poll imports
# them anyway); keystoneauth1 is only looked for: it is loaded at the first
# HEAT_SIGNAL or ZAQAR_SIGNAL.
_NEEDED = ("oslo_config.cfg", "os_collect_config.exc", "requests")
_LOOKED_FOR = ("keystoneauth1",)


def require_libraries(source: str) -> None:
    """Refuse a ``heat:`` section the installed mozagent cannot serve: without
    the heat extra every poll would fail the same way, for ever. ConfigError:
    exit 2 at start, naming the extra and the command that installs it."""
    missing = []
    for module in _NEEDED:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module.split('.')[0]} ({exc})")
    for module in _LOOKED_FOR:
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} (not installed)")
    if missing:
        raise ConfigError(
            f"{source}: heat: needs mozagent's heat extra (os-collect-config, "
            f"keystoneauth1, requests), and {', '.join(missing)} cannot be imported; "
            f"install it: {INSTALL}"
        )
