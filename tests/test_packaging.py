"""What an image gets: the wheel carries the agent and none of the checkout's
test servers (``mozagent_dev``) or tests.

The wheel is built the way the DIB element builds one (pip, from a source
tree), offline (``--no-index``, the venv's setuptools), in a copy of the
checkout so the build leaves nothing in the shared working tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO

# Every top-level Python package of the checkout goes into the copy, so a
# packages= that picked up more than mozagent would show here.
CHECKOUT_PACKAGES = sorted(p.parent.name for p in REPO.glob("*/__init__.py"))


def build_wheel(tmp_path: Path) -> zipfile.ZipFile:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.rst"):
        shutil.copy2(REPO / name, src / name)
    for package in CHECKOUT_PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check"]
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = out.glob("mozagent-*.whl")
    return zipfile.ZipFile(wheel)


def test_wheel_carries_the_agent_and_no_test_servers(tmp_path: Path) -> None:
    assert {"mozagent", "mozagent_dev", "tests"} <= set(CHECKOUT_PACKAGES)
    with build_wheel(tmp_path) as whl:
        names = whl.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        console = whl.read(entry_points).decode()
    top = {name.split("/", 1)[0] for name in names}
    assert {n for n in top if not n.endswith(".dist-info")} == {"mozagent"}, sorted(top)
    modules = {name for name in names if name.endswith(".py")}
    # The agent: every module of the package in the checkout, entry point included.
    src = tmp_path / "src"
    shipped = {path.relative_to(src).as_posix() for path in (src / "mozagent").rglob("*.py")}
    assert modules == shipped
    assert {"mozagent/__main__.py", "mozagent/daemon.py", "mozagent/cli/__init__.py"} <= modules
    assert "mozagent/apply/warm_runner.rb" in names  # the warm puppet runner
    assert not [n for n in names if "testing" in n or "heatstub" in n or "conftest" in n]
    assert "mozagent = mozagent.cli:main" in console


def test_importing_the_package_or_asking_status_loads_no_logging_stack(tmp_path: Path) -> None:
    """`mozagent status` is what a person types when something is wrong: it
    must stay light, so only the daemon's entry imports structlog."""
    probe = (
        "import sys; import mozagent; from mozagent.cli import main; "
        f"main(['status', '--state-dir', {str(tmp_path)!r}]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('structlog', 'kazoo', 'rich')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
