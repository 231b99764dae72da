"""The app's code as the fleet tests and ``bench/fleet.py`` use it: a real git
repository with an install script and a procfile, one tag per release."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

INSTALL = """#!/bin/sh
set -e
case "$MOZAGENT_NODE" in {fail_nodes}) echo "install refused on $MOZAGENT_NODE" >&2; exit 7;; esac
{{
  echo "app=$MOZAGENT_APP node=$MOZAGENT_NODE ref=$MOZAGENT_RELEASE_REF"
  echo "commit=$MOZAGENT_RELEASE_COMMIT dir=$MOZAGENT_RELEASE_DIR"
  echo "user=$(id -un)"
}} > "$MOZAGENT_RELEASE_DIR/installed.txt"
cp "$MOZAGENT_DATA" "$MOZAGENT_RELEASE_DIR/data.json"
{slow}
"""

PROCFILE = """\
# the commands an operator may push
hello: echo "hello from $MOZAGENT_NODE in $(pwd)"; echo ran >> {marks}/hello-$MOZAGENT_NODE
slow: sleep 6; echo ran >> {marks}/slow-$MOZAGENT_NODE
fail: echo "no luck" >&2; exit 3
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


class AppRepo:
    """The app's code in a real git repository, one tag per release."""

    def __init__(self, root: Path) -> None:
        self.path = root / "app.git"
        self.marks = root / "marks"
        self.marks.mkdir(mode=0o777)
        os.chmod(self.marks, 0o777)  # the app's user (nobody, under root) writes here
        self.path.mkdir()
        git(self.path, "init", "-q", "-b", "main")
        git(self.path, "config", "user.email", "dev@example.invalid")
        git(self.path, "config", "user.name", "dev")

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def release(
        self, tag: str, fail_nodes: str = "none-such", slow: str = "", commands: str = ""
    ) -> str:
        """A tagged commit; ``slow`` is shell run at the end of the install
        script, ``commands`` extra procfile lines."""
        bin_dir = self.path / "bin"
        bin_dir.mkdir(exist_ok=True)
        install = bin_dir / "install"
        install.write_text(INSTALL.format(fail_nodes=fail_nodes, slow=slow))
        install.chmod(0o755)
        (bin_dir / "commands.procfile").write_text(PROCFILE.format(marks=self.marks) + commands)
        (self.path / "VERSION").write_text(tag + "\n")
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", tag)
        git(self.path, "tag", tag)
        return git(self.path, "rev-parse", "HEAD")
