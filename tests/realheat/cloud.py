"""A real OpenStack Heat on 127.0.0.1: Debian bookworm's Heat 19 on the
Keystone of tests/glance/cloud.py, all state in one directory.

``heat-all`` runs the orchestration API, the CloudFormation-compatible API
(metadata for POLL_SERVER_CFN, CFN_SIGNAL's pre-signed URLs) and one engine in
one process, so their RPC can stay in-process (``transport_url = fake://``):
no message broker. Heat's database is sqlite. Config files are written here and
passed on the command line; nothing under /etc/heat is changed.

    cloud = HeatCloud(tmp_dir)
    cloud.start()        # keystone + heat's users, domain, roles, catalog + heat-all
    cloud.heat()         # a python-heatclient Client for the admin
    cloud.stop_heat()    # SIGTERM, then SIGKILL after 5 s: heat-all ignores SIGTERM
    cloud.start_heat()   # again, on the same database and ports
    cloud.stop()

Two stand-ins, both in Heat's own dependencies (none between mozagent and Heat):

* There is no Nova. One thing Heat asks Nova matters to a DeployedServer:
  before it waits for a deployment's DELETE action, SoftwareDeployment asks
  Nova whether the server exists (without a compute endpoint the stack DELETE
  fails with EndpointNotFound; a real Nova, which does not know a
  DeployedServer, would make Heat skip the DELETE action). ``ComputeStandIn``
  answers that one call, GET /servers/<id>, for the ids a test names
  (``cloud.compute.servers``).
* heat-api-cfn checks EC2 signatures (POLL_SERVER_CFN metadata requests,
  CFN_SIGNAL pre-signed URLs) by posting them to Keystone's /v3/ec2tokens
  without a token of its own. Debian's Keystone security update
  (2:22.0.2-0+deb12u1, Launchpad bug 2119646) takes that call only from the
  admin or service role, so Heat 19 as packaged answers every signed request
  403 AccessDenied. heat-api-cfn reaches Keystone through ``Ec2TokensRelay``
  (``[ec2authtoken] auth_uri``), which adds the heat service user's token to
  the ec2tokens call and passes everything else through untouched.

What it needs to work here, beyond what Keystone needs (see LocalCloud):
  * sqlite reuses the highest row id after a delete; Heat, written for MySQL,
    then takes a new row for a stale one and a stack UPDATE fails with
    "ResourcePropertiesData ... not found". Every ``id INTEGER`` primary key
    gets AUTOINCREMENT after ``heat-manage db_sync`` (``autoincrement_ids``);
  * one engine worker, one API worker each, all in heat-all (fake:// RPC);
  * heat-all keeps running on SIGTERM (its API servers do): SIGKILL after 5 s.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.glance.cloud import (
    ADMIN_PASSWORD,
    ADMIN_PROJECT,
    ADMIN_USER,
    HOST,
    PYTHON,
    REGION,
    SERVICE_PROJECT,
    CloudError,
    LocalCloud,
    Server,
    authtoken_section,
    call,
    free_ports,
    missing,
    request,
)

HEAT_ALL = "/usr/bin/heat-all"
HEAT_MANAGE = "/usr/bin/heat-manage"
HEAT_USER = "heat"
HEAT_PASSWORD = "heat-secret"
STACK_DOMAIN = "heat"
STACK_DOMAIN_ADMIN = "heat_domain_admin"
STACK_DOMAIN_ADMIN_PASSWORD = "heat-domain-secret"

# Debian packages the fixture needs (tools/install-deps --test).
PACKAGES = (
    "python3-keystone",
    "python3-waitress",
    "heat-common",
    "python3-heat",
    "python3-heatclient",
    "python3-openstackclient",
)


def heat_missing() -> list[str]:
    """What Keystone + heat-all need here and the machine lacks."""
    return missing(
        files=(PYTHON, "/usr/bin/keystone-manage", HEAT_ALL, HEAT_MANAGE),
        modules=("keystone", "heat", "waitress"),
    )


def autoincrement_ids(db: Path) -> None:
    """Give every ``id INTEGER`` primary key of a sqlite database AUTOINCREMENT
    (rebuilding each table), so that no id is ever handed out twice."""
    conn = sqlite3.connect(db, isolation_level=None)
    with contextlib.closing(conn):
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA legacy_alter_table=ON")
        conn.execute("BEGIN")
        tables = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
        for name, sql in tables.fetchall():
            column = re.search(r"\bid INTEGER NOT NULL\b", sql or "")
            key = re.search(r",\s*PRIMARY KEY \(id\)", sql or "")
            if not (column and key):
                continue
            rebuilt = sql[: key.start()] + sql[key.end() :]
            rebuilt = rebuilt.replace(
                column.group(0), "id INTEGER PRIMARY KEY AUTOINCREMENT", 1
            ).replace(f"CREATE TABLE {name} ", f"CREATE TABLE {name}__ai ", 1)
            indexes = conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND sql IS NOT NULL",
                (name,),
            ).fetchall()
            conn.execute(rebuilt)
            conn.execute(f"INSERT INTO {name}__ai SELECT * FROM {name}")
            conn.execute(f"DROP TABLE {name}")
            conn.execute(f"ALTER TABLE {name}__ai RENAME TO {name}")
            for (index,) in indexes:
                conn.execute(index)
        conn.execute("COMMIT")


class LoopbackHTTP:
    """A threaded HTTP server on a free loopback port, in the test process."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer((HOST, 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(timeout=10)
        self.httpd.server_close()


class Ec2TokensRelay(LoopbackHTTP):
    """Keystone for heat-api-cfn: every request passed on as it is, except that
    POST .../ec2tokens carries the token ``token()`` gives (the heat service
    user's), as Keystone now requires."""

    def __init__(self, keystone_port: int, token: Callable[[], str]) -> None:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "connection", "content-length")
                }
                if self.command == "POST" and self.path.rstrip("/").endswith("/ec2tokens"):
                    headers["X-Auth-Token"] = token()
                    relay.ec2tokens += 1
                conn = http.client.HTTPConnection(HOST, keystone_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for key, value in resp.getheaders():
                        if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                            self.send_header(key, value)
                except OSError as exc:
                    data = f"relay: keystone unreachable: {exc}".encode()
                    self.send_response(502)
                finally:
                    conn.close()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)
        self.ec2tokens = 0  # how many signature checks went through
        self.url = f"http://{HOST}:{self.port}/v3"


class ComputeStandIn:
    """Nova's ``GET /servers/<id>``, for the server ids in ``servers`` (404 for
    any other), and the version documents clients read first."""

    def __init__(self) -> None:
        self.servers: set[str] = set()
        self.asked: list[str] = []  # the server ids Heat asked about
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                status, body = 200, None
                if path in ("", "/v2.1"):
                    version = {
                        "id": "v2.1",
                        "status": "CURRENT",
                        "version": "2.1",
                        "min_version": "2.1",
                        "links": [{"rel": "self", "href": f"{stand_in.url}/"}],
                    }
                    body = {"versions": [version]} if path == "" else {"version": version}
                elif path.startswith("/v2.1/servers/"):
                    server_id = path.rsplit("/", 1)[-1]
                    stand_in.asked.append(server_id)
                    if server_id in stand_in.servers:
                        body = {"server": {"id": server_id, "name": server_id, "status": "ACTIVE"}}
                if body is None:
                    status = 404
                    body = {"itemNotFound": {"code": 404, "message": "not found"}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.http = LoopbackHTTP(Handler)
        self.url = f"http://{HOST}:{self.http.port}/v2.1"

    def start(self) -> None:
        self.http.start()

    def stop(self) -> None:
        self.http.stop()


class HeatCloud(LocalCloud):
    """Keystone (LocalCloud, without Glance) and heat-all."""

    def __init__(self, root: Path):
        super().__init__(root, glance=False)
        self.heat_port, self.cfn_port = free_ports(2)
        while {self.heat_port, self.cfn_port} & {self.keystone_port}:
            self.heat_port, self.cfn_port = free_ports(2)
        self.heat_url = f"http://{HOST}:{self.heat_port}"
        self.cfn_url = f"http://{HOST}:{self.cfn_port}"
        self.heat_server: Server | None = None
        self.compute = ComputeStandIn()
        self.ec2_relay = Ec2TokensRelay(self.keystone_port, self.service_token)
        self._client: Any = None
        self._service_token: tuple[str, float] | None = None

    # --- start and stop ---------------------------------------------------------------

    def _start_services(self, deadline: float) -> None:
        self.compute.start()
        self.ec2_relay.start()
        self._bootstrap_heat()
        self._configure_heat()
        self._start_heat(deadline)

    def _bootstrap_heat(self) -> None:
        """What heat needs in Keystone: its service user, the domain of the users
        it creates for each stack (and that domain's admin), its roles, its
        endpoints."""
        ks, token = self.auth_url, self.token()
        self.service_user(HEAT_USER, HEAT_PASSWORD)
        domain = call(
            "POST",
            f"{ks}/domains",
            {"domain": {"name": STACK_DOMAIN, "description": "users heat creates for stacks"}},
            token,
        )["domain"]
        admin_role = self.role_id("admin")
        domain_admin = call(
            "POST",
            f"{ks}/users",
            {
                "user": {
                    "name": STACK_DOMAIN_ADMIN,
                    "password": STACK_DOMAIN_ADMIN_PASSWORD,
                    "domain_id": domain["id"],
                }
            },
            token,
        )["user"]
        grant = f"{ks}/domains/{domain['id']}/users/{domain_admin['id']}/roles/{admin_role}"
        call("PUT", grant, None, token)
        self.role_id("heat_stack_user")  # given to the users heat creates for servers
        owner = self.role_id("heat_stack_owner")
        admin = call("GET", f"{ks}/users?name={ADMIN_USER}&domain_id=default", token=token)
        project = call("GET", f"{ks}/projects?name={ADMIN_PROJECT}&domain_id=default", token=token)
        grant = f"{ks}/projects/{project['projects'][0]['id']}/users/{admin['users'][0]['id']}"
        call("PUT", f"{grant}/roles/{owner}", None, token)
        self.register_service("heat", "orchestration", f"{self.heat_url}/v1/%(tenant_id)s")
        self.register_service("heat-cfn", "cloudformation", f"{self.cfn_url}/v1")
        self.register_service("nova", "compute", self.compute.url)

    def _configure_heat(self) -> None:
        conf = self.etc / "heat.conf"
        db = self.root / "heat.sqlite"
        keystone = f"http://{HOST}:{self.keystone_port}"
        conf.write_text(
            f"""\
[DEFAULT]
log_file = {self.logs / "heat.log"}
# In-process RPC: valid only because the APIs and the one engine share a process.
transport_url = fake://
num_engine_workers = 1
host = mozagent-realheat
heat_metadata_server_url = {self.cfn_url}
heat_waitcondition_server_url = {self.cfn_url}/v1/waitcondition
region_name_for_services = {REGION}
stack_user_domain_name = {STACK_DOMAIN}
stack_domain_admin = {STACK_DOMAIN_ADMIN}
stack_domain_admin_password = {STACK_DOMAIN_ADMIN_PASSWORD}
deferred_auth_method = trusts
default_software_config_transport = POLL_SERVER_HEAT
default_deployment_signal_transport = HEAT_SIGNAL
[heat_all]
enabled_services = api,api_cfn,engine
[heat_api]
bind_host = {HOST}
bind_port = {self.heat_port}
workers = 1
[heat_api_cfn]
bind_host = {HOST}
bind_port = {self.cfn_port}
workers = 1
[database]
connection = sqlite:///{db}
[oslo_messaging_notifications]
driver = noop
[oslo_policy]
policy_file = {self.etc / "heat-policy.yaml"}
[paste_deploy]
api_paste_config = /etc/heat/api-paste.ini
{authtoken_section(self.auth_url, HEAT_USER, HEAT_PASSWORD)}[trustee]
auth_type = password
auth_url = {self.auth_url}
username = {HEAT_USER}
password = {HEAT_PASSWORD}
user_domain_name = Default
[clients_keystone]
auth_uri = {keystone}
[ec2authtoken]
# Through the relay: it adds the service token Keystone wants on /v3/ec2tokens.
auth_uri = {self.ec2_relay.url}
[clients]
endpoint_type = publicURL
"""
        )
        self._run("heat-manage db_sync", [HEAT_MANAGE, "--config-file", str(conf), "db_sync"])
        autoincrement_ids(db)
        self._wal(db)

    def _start_heat(self, deadline: float) -> None:
        server = Server(
            "heat-all",
            [HEAT_ALL, "--config-file", str(self.etc / "heat.conf")],
            self.logs / "heat-all.out",
            self._env(),
        )
        self.servers.append(server)
        self.heat_server = server
        self._wait_http(server, f"{self.heat_url}/", deadline)
        self._wait_http(server, f"{self.cfn_url}/", deadline)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.heat_server = None
            self.compute.stop()
            self.ec2_relay.stop()

    def start_heat(self, timeout: float = 60) -> None:
        """heat-all again (after stop_heat), on the same database and ports."""
        if self.heat_server is not None and self.heat_server.running():
            return
        self._start_heat(time.monotonic() + timeout)

    def stop_heat(self) -> None:
        """heat-all only (Keystone stays up): SIGTERM, SIGKILL after 5 s."""
        server, self.heat_server = self.heat_server, None
        if server is None:
            return
        self.servers.remove(server)
        server.stop(grace=5.0)

    def service_token(self) -> str:
        """A token of the heat service user, on the service project (cached)."""
        if self._service_token and self._service_token[1] > time.monotonic():
            return self._service_token[0]
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": HEAT_USER,
                            "domain": {"id": "default"},
                            "password": HEAT_PASSWORD,
                        }
                    },
                },
                "scope": {"project": {"name": SERVICE_PROJECT, "domain": {"id": "default"}}},
            }
        }
        status, headers, data = request("POST", f"{self.auth_url}/auth/tokens", body)
        if status != 201:
            raise CloudError(f"keystone refused the heat token: HTTP {status}: {data[:300]!r}")
        self._service_token = (headers["X-Subject-Token"], time.monotonic() + 600)
        return self._service_token[0]

    # --- the admin's view --------------------------------------------------------

    def session(self) -> Any:
        """A keystoneauth1 session for the admin (the venv's keystoneauth1)."""
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        auth = v3.Password(
            auth_url=self.auth_url,
            username=ADMIN_USER,
            password=ADMIN_PASSWORD,
            project_name=ADMIN_PROJECT,
            user_domain_id="default",
            project_domain_id="default",
        )
        return session.Session(auth=auth, timeout=30)

    def heat(self) -> Any:
        """python-heatclient (the venv's) for the admin, through the catalog."""
        if self._client is None:
            from heatclient import client

            self._client = client.Client(
                "1", session=self.session(), interface="public", region_name=REGION
            )
        return self._client
