"""The reference service of the blueprint, made ready to run on this host: the
puppet tree (``examples/mozpuppet``) with its Puppetfile resolved, and the
sample WSGI app (``examples/webapp``) in a git repository of its own, one tag
per release. The demo, the tests and ``bench/`` stand the service up from
these, the same way an image build and a developer's push would.

The service itself is the machine's Apache (with mod_wsgi) and MariaDB,
which the tree's front ends manage; ``stop_services`` stops them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

CHECKOUT = Path(__file__).resolve().parent.parent
TREE = CHECKOUT / "examples" / "mozpuppet"
APP = CHECKOUT / "examples" / "webapp"
STACK = CHECKOUT / "examples" / "heat" / "webapp.yaml"
# What the service needs from Debian (tools/install-deps --test installs them).
PACKAGES = (
    "apache2", "libapache2-mod-wsgi-py3", "mariadb-server", "python3-pymysql",
    "librarian-puppet", "puppet-module-puppetlabs-apache",
    "puppet-module-puppetlabs-mysql",
)  # fmt: skip


def missing() -> list[str]:
    """The programs of the service this host lacks (empty: it can run)."""
    needed = {
        "apache2": "/usr/sbin/apache2",
        "mod_wsgi": "/usr/lib/apache2/modules/mod_wsgi.so",
        "mariadb": "/usr/sbin/mariadbd",
        "librarian-puppet": "/usr/bin/librarian-puppet",
        "puppetlabs-apache": "/usr/share/puppet/modules.available/puppetlabs-apache",
        "puppetlabs-mysql": "/usr/share/puppet/modules.available/puppetlabs-mysql",
    }
    return [name for name, path in needed.items() if not os.path.exists(path)]


def resolve_tree(dest: Path, resolver: str = "librarian-puppet") -> Path:
    """A copy of the tree at ``dest`` with its Puppetfile resolved into
    ``modules/``, as the image element does at build time."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(TREE, dest, ignore=shutil.ignore_patterns("modules", ".tmp", "*.lock"))
    with tempfile.TemporaryDirectory(prefix="mozpuppet-home.") as home:
        env = dict(os.environ, HOME=home)
        if resolver == "r10k":
            cmd = ["r10k", "puppetfile", "install", "--moduledir", str(dest / "modules")]
        else:
            cmd = ["librarian-puppet", "install", "--path", "modules"]
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True, text=True)
    return dest


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=dev", "-c", "user.email=dev@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class AppRepo:
    """The sample app's code in a real git repository: ``release`` commits
    the app (changed as a test asks) and tags it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not (path / ".git").exists():
            path.mkdir(parents=True, exist_ok=True)
            git(path, "init", "-q", "-b", "main")

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def release(self, tag: str, install_fails: bool = False) -> str:
        """Commit the app as ``tag``; its commit. ``install_fails`` makes its
        install script fail after building the venv (a broken release)."""
        shutil.copytree(APP, self.path, dirs_exist_ok=True)
        (self.path / "VERSION").write_text(tag + "\n")
        if install_fails:
            install = self.path / "bin" / "install"
            text = install.read_text()
            install.write_text(text.replace("venv/bin/python -m webapp.manage migrate", "exit 7"))
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", tag)
        git(self.path, "tag", tag)
        return git(self.path, "rev-parse", "HEAD")


def heat_metadata(
    heat_url: str, template: Path = STACK, action: str = "CREATE", **params: Any
) -> dict[str, Any]:
    """The deployments a HOT stack of SoftwareConfigs and SoftwareDeployments
    puts on its server, as Heat's metadata shows them (``depends_on`` order),
    each signalled to the stand-in at ``heat_url`` (mozagent_dev.heatstub):
    the demo's Heat, where no real one runs. Only ``get_param`` and
    ``get_resource`` are resolved: what these templates use."""
    from mozagent_dev import heatstub

    doc = yaml.safe_load(template.read_text())
    values = {k: v.get("default") for k, v in (doc.get("parameters") or {}).items()}
    values.update(params)
    resources = doc["resources"]

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and list(value) == ["get_param"]:
            return values[value["get_param"]]
        return value

    deployments = []
    for name, res in resources.items():
        if res["type"] != "OS::Heat::SoftwareDeployment":
            continue
        config = resources[res["properties"]["config"]["get_resource"]]["properties"]
        given = {k: resolve(v) for k, v in (res["properties"].get("input_values") or {}).items()}
        declared = {i["name"]: i.get("type", "String") for i in config.get("inputs") or []}
        extra = {k: (declared.get(k, "String"), v) for k, v in given.items()}
        deployments.append(
            {
                "id": f"{name}-1",
                "name": name,
                "group": config["group"],
                "creation_time": "2026-01-01T00:00:00Z",
                "config": config["config"],
                "inputs": heatstub.inputs(
                    "TEMP_URL_SIGNAL", heat_url, f"{name}-1", action, **extra
                ),
                "outputs": config.get("outputs") or [],
                "options": config.get("options") or {},
                "depends_on": res.get("depends_on"),
            }
        )
    ordered: list[dict[str, Any]] = []
    while deployments:  # depends_on order (these templates have no cycles)
        ready = [d for d in deployments if d["depends_on"] in (None, *[o["name"] for o in ordered])]
        if not ready:
            raise ValueError(f"{template}: deployments depend on each other in a cycle")
        for dep in ready:
            deployments.remove(dep)
            ordered.append({k: v for k, v in dep.items() if k != "depends_on"})
    return {"deployments": ordered}


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """One request: its status and body (0 and the error when nothing answered)."""
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def stop_services() -> None:
    """Stop the Apache and the MariaDB the front ends started."""
    for cmd in (["apache2ctl", "stop"], ["/etc/init.d/mariadb", "stop"]):
        if shutil.which(cmd[0]) or os.path.exists(cmd[0]):
            subprocess.run(cmd, capture_output=True, timeout=60, check=False)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mozagent_dev.webservice")
    sub = parser.add_subparsers(dest="what", required=True)
    tree = sub.add_parser("tree", help="copy the puppet tree to DEST and resolve its Puppetfile")
    tree.add_argument("dest", type=Path)
    tree.add_argument(
        "--resolver", choices=("librarian-puppet", "r10k"), default="librarian-puppet"
    )
    repo = sub.add_parser("release", help="commit the sample app in the git repo DEST as TAG")
    repo.add_argument("dest", type=Path)
    repo.add_argument("tag")
    heat = sub.add_parser("heat", help="the Heat metadata of examples/heat/webapp.yaml's stack")
    heat.add_argument("heat_url")
    heat.add_argument("param", nargs="*", help="NAME=VALUE (a stack parameter)")
    sub.add_parser("stop", help="stop the service's Apache and MariaDB")
    args = parser.parse_args(argv)
    if args.what == "tree":
        print(resolve_tree(args.dest, args.resolver))
    elif args.what == "release":
        print(AppRepo(args.dest).release(args.tag))
    elif args.what == "heat":
        params = dict(p.split("=", 1) for p in args.param)
        print(json.dumps(heat_metadata(args.heat_url, **params), indent=2))
    else:
        stop_services()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
