"""A real Keystone and a real Glance on 127.0.0.1, all state in one directory.

Debian bookworm's library packages (python3-keystone 22, python3-glance 25;
not the keystone/glance-api service packages, whose systemd units and
init scripts are of no use here) run with Debian's /usr/bin/python3 and
config files written here, passed on the command line: nothing under
/etc/keystone or /etc/glance is read or changed.  Both use sqlite; Glance
keeps images in a file store under the state directory.

    cloud = LocalCloud(tmp_dir)
    cloud.start()          # keystone + bootstrap + glance; raises CloudError
    cloud.credentials()    # OS_* variables for the admin user
    cloud.stop()

``LocalCloud(tmp_dir, glance=False)`` is Keystone alone; tests/realheat/cloud.py
builds Heat on it (``_start_services`` is where a subclass adds its servers,
``service_user`` and ``register_service`` what it needs in Keystone).

What it needs to work here:
  * sqlite: WAL journal mode and check_same_thread=False (Keystone fails
    with "database is locked" without them; Glance gets the same settings);
  * Keystone under waitress (see keystone_server.py), an in-process cache
    and cheap password hashing (a few ms per request instead of ~250 ms);
    the cache pickles what it keeps (memory_pickle): with plain ``memory``
    Keystone decrypts a cached credential in place and the next read of it
    fails (KeyError 'encrypted_blob'; seen as HTTP 500 when Heat deletes the
    EC2 credentials of a CFN-signalled deployment);
  * glance-api with workers = 0: one process, no forked children.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.parse
from pathlib import Path

PYTHON = "/usr/bin/python3"  # Debian's, with the OpenStack libraries
KEYSTONE_MANAGE = "/usr/bin/keystone-manage"
GLANCE_API = [PYTHON, "-m", "glance.cmd.api"]
GLANCE_MANAGE = [PYTHON, "-m", "glance.cmd.manage"]
HOST = "127.0.0.1"
REGION = "RegionOne"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"
ADMIN_PROJECT = "admin"
GLANCE_USER = "glance"
GLANCE_PASSWORD = "glance-secret"
SERVICE_PROJECT = "service"
HERE = Path(__file__).resolve().parent

# Debian packages the fixture needs (tools/install-deps --test).
PACKAGES = ("python3-keystone", "python3-glance", "python3-openstacksdk", "python3-waitress")
REQUIRED_FILES = (PYTHON, KEYSTONE_MANAGE)


def authtoken_section(auth_url: str, user: str, password: str) -> str:
    """The [keystone_authtoken] section every service on this Keystone needs."""
    return f"""[keystone_authtoken]
www_authenticate_uri = {auth_url}
auth_url = {auth_url}
auth_type = password
username = {user}
password = {password}
user_domain_name = Default
project_name = {SERVICE_PROJECT}
project_domain_name = Default
region_name = {REGION}
"""


class CloudError(RuntimeError):
    """Keystone or Glance did not come up."""


def missing(
    files: tuple[str, ...] = REQUIRED_FILES,
    modules: tuple[str, ...] = ("keystone", "glance", "openstack", "waitress"),
) -> list[str]:
    """The executables and Python modules the fixture needs but lacks."""
    lacking = [path for path in files if not os.access(path, os.X_OK)]
    if os.access(PYTHON, os.X_OK):
        probe = subprocess.run(
            [PYTHON, "-c", f"import {', '.join(modules)}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode != 0:
            lacking.append(f"{PYTHON} modules ({probe.stderr.strip().splitlines()[-1]})")
    return lacking


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def request(
    method: str,
    url: str,
    body: dict | None = None,
    token: str | None = None,
    timeout: float = 30,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP request; returns status, headers and body, whatever the status."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["X-Auth-Token"] = token
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def call(method: str, url: str, body: dict | None = None, token: str | None = None) -> dict:
    """A JSON API call that must succeed (2xx)."""
    status, _, data = request(method, url, body, token)
    if not 200 <= status < 300:
        raise CloudError(f"{method} {url}: HTTP {status}: {data[:500]!r}")
    return json.loads(data) if data else {}


class Server:
    """A server process in its own process group, output to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]):
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period."""
        pgid = self.proc.pid  # start_new_session: the group id is the pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; make sure nothing it forked lingers.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return
        raise CloudError(f"{self.name} (pid {self.proc.pid}) survived SIGKILL")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class LocalCloud:
    def __init__(self, root: Path, glance: bool = True):
        self.root = Path(root)
        self.etc = self.root / "etc"
        self.logs = self.root / "log"
        self.images = self.root / "images"
        self.with_glance = glance
        self.keystone_port, self.glance_port = free_ports(2)
        self.auth_url = f"http://{HOST}:{self.keystone_port}/v3"
        self.glance_url = f"http://{HOST}:{self.glance_port}"
        self.servers: list[Server] = []
        self._token: tuple[str, float] | None = None
        self._service_project: str | None = None

    # --- the admin's view --------------------------------------------------------

    def credentials(self, **overrides: str) -> dict[str, str]:
        """The OS_* variables of a keystone rc file for the admin user."""
        creds = {
            "OS_AUTH_URL": self.auth_url,
            "OS_IDENTITY_API_VERSION": "3",
            "OS_REGION_NAME": REGION,
            "OS_INTERFACE": "public",
            "OS_USERNAME": ADMIN_USER,
            "OS_PASSWORD": ADMIN_PASSWORD,
            "OS_PROJECT_NAME": ADMIN_PROJECT,
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default",
        }
        creds.update(overrides)
        return creds

    def rc_file(self, path: Path, **overrides: str) -> Path:
        lines = ["# keystone rc file for the test cloud's admin"]
        lines += [f"export {k}={v}" for k, v in self.credentials(**overrides).items()]
        path.write_text("\n".join(lines) + "\n")
        return path

    def token(self, user: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> str:
        if user == ADMIN_USER and self._token and self._token[1] > time.monotonic():
            return self._token[0]
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": user, "domain": {"id": "default"}, "password": password}
                    },
                },
                "scope": {"project": {"name": ADMIN_PROJECT, "domain": {"id": "default"}}},
            }
        }
        status, headers, data = request("POST", f"{self.auth_url}/auth/tokens", body)
        if status != 201:
            raise CloudError(f"keystone refused the {user} token: HTTP {status}: {data[:300]!r}")
        token = headers["X-Subject-Token"]
        if user == ADMIN_USER:
            self._token = (token, time.monotonic() + 600)
        return token

    def images_named(self, name: str) -> list[dict]:
        query = urllib.parse.urlencode({"name": name})
        doc = call("GET", f"{self.glance_url}/v2/images?{query}", token=self.token())
        return doc["images"]

    def image(self, image_id: str) -> dict:
        return call("GET", f"{self.glance_url}/v2/images/{image_id}", token=self.token())

    def image_data(self, image_id: str) -> bytes:
        status, _, data = request(
            "GET", f"{self.glance_url}/v2/images/{image_id}/file", token=self.token(), timeout=60
        )
        if status != 200:
            raise CloudError(f"download of image {image_id}: HTTP {status}")
        return data

    def delete_image(self, image_id: str) -> None:
        call("DELETE", f"{self.glance_url}/v2/images/{image_id}", token=self.token())

    # --- start and stop ---------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        for d in (self.etc, self.logs, self.images):
            d.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            self._start_keystone(deadline)
            if self.with_glance:
                self._bootstrap_catalog()
                self._start_glance(deadline)
            self._start_services(deadline)
        except BaseException:
            self.stop()
            raise

    def _start_services(self, deadline: float) -> None:
        """What a subclass starts after Keystone (and Glance)."""

    def stop(self) -> None:
        errors = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except CloudError as exc:
                errors.append(str(exc))
        self.servers.clear()
        if errors:
            raise CloudError("; ".join(errors))

    def logs_tail(self) -> str:
        return "\n".join(f"--- {s.name} ({s.log})\n{s.tail()}" for s in self.servers)

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))
        }
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        return env

    def _run(self, what: str, argv: list[str], timeout: float = 300, **env: str) -> None:
        log = self.logs / "manage.log"
        with open(log, "ab") as out:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
            out.flush()
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**self._env(), **env},
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired as exc:
                raise CloudError(f"{what} took more than {timeout} s (see {log})") from exc
        if result.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise CloudError(f"{what} failed (exit {result.returncode}):\n{tail}")

    @staticmethod
    def _wal(db: Path) -> None:
        # Readers no longer block the writer: no "database is locked".
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")

    def _wait_http(self, server: Server, url: str, deadline: float) -> None:
        while True:
            if not server.running():
                raise CloudError(
                    f"{server.name} exited with status {server.proc.returncode}:\n{server.tail()}"
                )
            try:
                request("GET", url, timeout=5)
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CloudError(f"{server.name} not answering at {url}:\n{server.tail()}")
            time.sleep(0.2)

    def _start_keystone(self, deadline: float) -> None:
        conf = self.etc / "keystone.conf"
        db = self.root / "keystone.sqlite"
        conf.write_text(
            f"""\
[DEFAULT]
log_file = {self.logs / "keystone.log"}
[database]
connection = sqlite:///{db}?check_same_thread=False
[identity]
password_hash_rounds = 4
[token]
provider = fernet
[fernet_tokens]
key_repository = {self.etc / "fernet-keys"}
[fernet_receipts]
key_repository = {self.etc / "fernet-keys"}
[credential]
key_repository = {self.etc / "credential-keys"}
[cache]
enabled = true
backend = dogpile.cache.memory_pickle
[oslo_policy]
policy_file = {self.etc / "keystone-policy.yaml"}
"""
        )
        manage = [KEYSTONE_MANAGE, "--config-file", str(conf)]
        self._run("keystone-manage db_sync", [*manage, "db_sync"])
        self._wal(db)
        owner = ["--keystone-user", "root", "--keystone-group", "root"]
        self._run("keystone-manage fernet_setup", [*manage, "fernet_setup", *owner])
        self._run("keystone-manage credential_setup", [*manage, "credential_setup", *owner])
        self._run(
            "keystone-manage bootstrap",
            [
                *manage,
                "bootstrap",
                "--bootstrap-username",
                ADMIN_USER,
                "--bootstrap-password",
                ADMIN_PASSWORD,
                "--bootstrap-project-name",
                ADMIN_PROJECT,
                "--bootstrap-role-name",
                "admin",
                "--bootstrap-service-name",
                "keystone",
                "--bootstrap-region-id",
                REGION,
                "--bootstrap-public-url",
                self.auth_url,
                "--bootstrap-internal-url",
                self.auth_url,
                "--bootstrap-admin-url",
                self.auth_url,
            ],
        )
        server = Server(
            "keystone",
            [PYTHON, str(HERE / "keystone_server.py"), HOST, str(self.keystone_port)],
            self.logs / "keystone-server.log",
            {**self._env(), "OS_KEYSTONE_CONFIG_FILES": str(conf)},
        )
        self.servers.append(server)
        self._wait_http(server, self.auth_url, deadline)

    def service_project(self) -> str:
        """The id of the ``service`` project (created once)."""
        if self._service_project is None:
            project = call(
                "POST",
                f"{self.auth_url}/projects",
                {"project": {"name": SERVICE_PROJECT, "domain_id": "default"}},
                self.token(),
            )["project"]
            self._service_project = project["id"]
        return self._service_project

    def role_id(self, name: str) -> str:
        """The id of role ``name``, created when Keystone has none."""
        ks, token = self.auth_url, self.token()
        roles = call("GET", f"{ks}/roles?name={urllib.parse.quote(name)}", token=token)["roles"]
        if roles:
            return roles[0]["id"]
        return call("POST", f"{ks}/roles", {"role": {"name": name}}, token)["role"]["id"]

    def service_user(self, name: str, password: str, domain_id: str = "default") -> str:
        """A user of ``domain_id`` with the admin role on the service project; its id."""
        ks, token = self.auth_url, self.token()
        user = call(
            "POST",
            f"{ks}/users",
            {"user": {"name": name, "password": password, "domain_id": domain_id}},
            token,
        )["user"]
        grant = f"{ks}/projects/{self.service_project()}/users/{user['id']}/roles/"
        call("PUT", grant + self.role_id("admin"), None, token)
        return user["id"]

    def register_service(self, name: str, kind: str, url: str) -> None:
        """A catalog entry: public, internal and admin endpoints at ``url``."""
        ks, token = self.auth_url, self.token()
        body = {"service": {"name": name, "type": kind}}
        service = call("POST", f"{ks}/services", body, token)["service"]
        for interface in ("public", "internal", "admin"):
            endpoint = {
                "service_id": service["id"],
                "interface": interface,
                "region_id": REGION,
                "url": url,
            }
            call("POST", f"{ks}/endpoints", {"endpoint": endpoint}, token)

    def _bootstrap_catalog(self) -> None:
        """A service project, Glance's service user and the image endpoints."""
        self.service_user(GLANCE_USER, GLANCE_PASSWORD)
        self.register_service("glance", "image", self.glance_url)

    def _start_glance(self, deadline: float) -> None:
        conf = self.etc / "glance-api.conf"
        paste = self.etc / "glance-api-paste.ini"
        db = self.root / "glance.sqlite"
        store = self.root / "glance"
        for sub in ("images", "staging", "tasks", "locks"):
            (store / sub).mkdir(parents=True, exist_ok=True)
        # Only what this test uses: keystone auth, the v2 API, no caching.
        paste.write_text(
            """\
[pipeline:glance-api-keystone]
pipeline = versionnegotiation authtoken context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = true

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory
"""
        )
        conf.write_text(
            f"""\
[DEFAULT]
bind_host = {HOST}
bind_port = {self.glance_port}
workers = 0
log_file = {self.logs / "glance-api.log"}
enabled_backends = local:file
[database]
connection = sqlite:///{db}?check_same_thread=False
[glance_store]
default_backend = local
[local]
filesystem_store_datadir = {store / "images"}
[os_glance_staging_store]
filesystem_store_datadir = {store / "staging"}
[os_glance_tasks_store]
filesystem_store_datadir = {store / "tasks"}
[oslo_concurrency]
lock_path = {store / "locks"}
[oslo_policy]
policy_file = {self.etc / "glance-policy.yaml"}
[paste_deploy]
flavor = keystone
config_file = {paste}
{authtoken_section(self.auth_url, GLANCE_USER, GLANCE_PASSWORD)}"""
        )
        self._run("glance-manage db_sync", [*GLANCE_MANAGE, "--config-file", str(conf), "db_sync"])
        self._wal(db)
        server = Server(
            "glance-api",
            [*GLANCE_API, "--config-file", str(conf)],
            self.logs / "glance-api.out",
            self._env(),
        )
        self.servers.append(server)
        self._wait_http(server, f"{self.glance_url}/versions", deadline)
