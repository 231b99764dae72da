"""App code is not the agent: an install script runs as the app's user with a
clean environment, and this proves what that buys. From inside a real
install (a real agent, git, ZooKeeper), the script tries to read the agent's
state dir, the Heat metadata cache (credentials and signal URLs), the
ZooKeeper credentials file, a TLS key, the app's secrets and another app's
release dir, and writes down its environment and argv; the test checks every
read was refused and no credential reached it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mozagent.apply.runas import resolve_user
from tests.test_fleet import Fleet, fleet  # noqa: F401 (fleet is a fixture)

PASSWORD = "zk-pw-5f0e-not-for-apps"
KEY_MATERIAL = "KEY-MATERIAL-77c1-not-for-apps"
SIGNAL = "https://heat.example/v1/signal?token=SIG-TOKEN-a19b"

PROBE = """
for f in {targets}; do
  if {{ [ -d "$f" ] && ls "$f"; }} >/dev/null 2>&1 || cat "$f" >/dev/null 2>&1
  then echo "READ $f"; else echo "DENIED $f"; fi
done > "$MOZAGENT_RELEASE_DIR/probe.txt"
env > "$MOZAGENT_RELEASE_DIR/env.txt"
{{ tr '\\0' ' ' < /proc/self/cmdline; echo; tr '\\0' ' ' < /proc/$PPID/cmdline; }} \\
  > "$MOZAGENT_RELEASE_DIR/argv.txt"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the app's user needs root")
def test_an_install_script_cannot_reach_the_agents_secrets(fleet: Fleet) -> None:  # noqa: F811
    box = fleet.agent("web1")
    cred = box.root / "zk.cred"
    cred.write_text(f"agent:{PASSWORD}\n")
    cred.chmod(0o600)
    key = box.root / "tls.key"
    key.write_text(f"-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n")
    key.chmod(0o600)  # as zkauth requires of a TLS key
    zookeeper = {**box.config()["zookeeper"], "credentials_file": str(cred)}
    box.write_config(
        zookeeper=zookeeper,
        releases={"apps_dir": str(box.root / "apps"), "keep": 2, "timeout": 30},
    )
    # The Heat metadata cache as os-collect-config's collectors leave it
    # (their files are 0644: the state dir is what keeps them the agent's).
    cache = box.state / "heat" / "collector-cache"
    cache.mkdir(parents=True)
    (cache / "ec2.json").write_text(json.dumps({"signal_url": SIGNAL}))
    (cache / "ec2.json").chmod(0o644)
    # Another app on the same host, its dir made as the agent makes an app's
    # (0750, the group of that app's user: here `daemon`).
    other = box.root / "apps" / "blog"
    (other / "releases" / "abc").mkdir(parents=True)
    (other / "releases" / "abc" / "settings.py").write_text("SECRET_KEY = 'blog'\n")
    other.chmod(0o750)
    resolve_user("daemon", "blog").group_owns(str(other))
    targets = [
        box.state / "status.json",
        box.state,
        cache / "ec2.json",
        cred,
        key,
        other / "releases" / "abc" / "settings.py",
    ]
    fleet.repo.release("v1", slow=PROBE.format(targets=" ".join(map(str, targets))))
    fleet.start()
    res = fleet.deploy("v1", "--wait", "--timeout", "90")
    assert res.returncode == 0, res.stdout + res.stderr + box.daemon_log()[-2000:]
    current = fleet.root / "web1" / "apps" / "shop" / "current"
    probe = (current / "probe.txt").read_text().splitlines()
    assert probe == [f"DENIED {t}" for t in targets], probe
    seen = "".join((current / n).read_text() for n in ("env.txt", "argv.txt", "data.json"))
    for credential in (PASSWORD, KEY_MATERIAL, "SIG-TOKEN", str(cred)):
        assert credential not in seen, credential
    assert "installed.txt" in os.listdir(current)
    app_dir = Path(current).parent
    assert oct(app_dir.stat().st_mode & 0o777) == "0o750"
