"""Releases: the znode's rules, and installing real git repos made here.

Each repository is a real one (``git init`` in the test's dir, fetched over
file://); each install script really runs, as the user app code runs as (as
root that is ``nobody``, so the agent's dirs are made traversable for it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mozagent.apply.process import ChildRunner, Ledger
from mozagent.apply.release import MAX_LOG_BYTES, ReleaseInstaller
from mozagent.apply.runas import resolve_user
from mozagent.desired.release import (
    InvalidRelease,
    Release,
    parse_release,
    pick_ref,
    split_userinfo,
)
from mozagent.fileio import TEMP_SUFFIX
from mozagent_dev.githttp import GitHttpServer

WHERE = "/mozagent/apps/shop/release"

INSTALL = """#!/bin/sh
set -e
echo run >> runs.txt
{ echo "user=$(id -un)"; echo "cwd=$(pwd)"; echo "datamode=$(stat -c %a "$MOZAGENT_DATA")";
  env | grep '^MOZAGENT_' | sort; } > installed.env
cat "$MOZAGENT_DATA" > seen-data.json
echo "install says hello"
if grep -q '"fail": true' "$MOZAGENT_DATA"; then echo "failing on purpose" >&2; exit 3; fi
if grep -q '"hang": true' "$MOZAGENT_DATA"; then touch started; sleep 60; fi
exit 0
"""


# -- real repositories --------------------------------------------------------


class Repo:
    """A git repository the test writes commits into."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(path.parent),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.org",
        }
        self.git("init", "-q", "-b", "main")

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=self.path,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()

    def commit(
        self,
        version: str,
        script: str | None = INSTALL,
        script_mode: int = 0o755,
        extra: dict[str, str] | None = None,
        tag: str | None = None,
        annotated: bool = False,
    ) -> str:
        (self.path / "VERSION").write_text(version + "\n")
        if script is not None:
            bin_dir = self.path / "bin"
            bin_dir.mkdir(exist_ok=True)
            (bin_dir / "install").write_text(script)
            (bin_dir / "install").chmod(script_mode)
        for name, content in (extra or {}).items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_text(content)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", version)
        if tag:
            self.git("tag", *(["-a", "-m", tag] if annotated else []), tag)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def base() -> Iterator[Path]:
    """A dir the app's user can traverse (pytest's own tmp dirs are root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mozagent-release-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "shop")


Make = Callable[..., ReleaseInstaller]


@pytest.fixture
def make(base: Path) -> Make:
    def build(
        keep: int = 3,
        timeout: float = 30,
        fetch_timeout: float = 30,
        cancel: threading.Event | None = None,
        **options: Any,
    ) -> ReleaseInstaller:
        return ReleaseInstaller(
            apps_dir=str(base / "apps"),
            app="shop",
            node="web-1",
            keep=keep,
            run_as=resolve_user(None, "nosuchapp"),
            runner=ChildRunner(cancel or threading.Event(), Ledger(str(base / "running.json"))),
            timeout=timeout,
            fetch_timeout=fetch_timeout,
            **options,
        )

    return build


def app_dir(base: Path) -> Path:
    return base / "apps" / "shop"


def current_target(base: Path) -> str | None:
    link = app_dir(base) / "current"
    return os.readlink(link) if link.is_symlink() else None


def release_dirs(base: Path) -> set[str]:
    releases = app_dir(base) / "releases"
    return {p.name for p in releases.iterdir() if p.is_dir()} if releases.exists() else set()


def runs(base: Path, commit: str) -> int:
    path = app_dir(base) / "releases" / commit / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def env_seen(base: Path, commit: str) -> dict[str, str]:
    text = (app_dir(base) / "releases" / commit / "installed.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


# -- installing -----------------------------------------------------------------


def test_install_switches_current_and_gives_the_script_its_environment(
    repo: Repo, make: Make, base: Path
) -> None:
    commit = repo.commit("1.0", tag="v1")
    installer = make()
    assert installer.installed() is None
    data = {"db_host": "db.example.org", "workers": 4, "nested": {"a": [1, 2]}}

    result = installer.install(Release("v1", repo.url), data)

    assert result.ok, result.message
    assert result.switched and result.commit == commit and result.returncode == 0
    assert result.previous is None
    assert current_target(base) == f"releases/{commit}"
    release_dir = str(app_dir(base) / "releases" / commit)
    assert installer.current_dir() == release_dir
    assert (app_dir(base) / "current" / "VERSION").read_text() == "1.0\n"
    assert not (app_dir(base) / "current" / ".git").exists()
    seen = env_seen(base, commit)
    assert seen["user"] == resolve_user(None, "nosuchapp").name
    assert seen["cwd"] == release_dir
    assert seen["datamode"] == "640"
    assert seen["MOZAGENT_APP"] == "shop"
    assert seen["MOZAGENT_NODE"] == "web-1"
    assert seen["MOZAGENT_RELEASE_REF"] == "v1"
    assert seen["MOZAGENT_RELEASE_COMMIT"] == commit
    assert seen["MOZAGENT_RELEASE_DIR"] == release_dir
    assert json.loads((Path(release_dir) / "seen-data.json").read_text()) == data
    # The data file (secrets) does not outlive the install.
    assert not os.path.exists(seen["MOZAGENT_DATA"])
    # A clean environment: nothing of the agent's own.
    assert "MOZAGENT_RUN" in seen  # the child runner's mark, and no other agent variable
    assert set(seen) - {"user", "cwd", "datamode"} == {
        "MOZAGENT_APP",
        "MOZAGENT_NODE",
        "MOZAGENT_RELEASE_REF",
        "MOZAGENT_RELEASE_COMMIT",
        "MOZAGENT_RELEASE_DIR",
        "MOZAGENT_DATA",
        "MOZAGENT_RUN",
    }
    assert result.log_path and "install says hello" in Path(result.log_path).read_text()
    assert Path(result.log_path).name.startswith(commit + "-")
    installed = installer.installed()
    assert installed is not None
    assert installed["ref"] == "v1" and installed["commit"] == commit
    assert installed["source"] == repo.url and installed["dir"] == release_dir
    assert abs(installed["installed"] - time.time()) < 60
    assert json.loads(json.dumps(result.as_dict()))["commit"] == commit


def test_failed_install_keeps_current_and_says_exit_code_and_log(
    repo: Repo, make: Make, base: Path
) -> None:
    good = repo.commit("1.0", tag="v1")
    bad = repo.commit("2.0", tag="v2")
    installer = make()
    assert installer.install(Release("v1", repo.url), {}).ok

    result = installer.install(Release("v2", repo.url), {"fail": True})

    assert not result.ok and not result.switched
    assert result.returncode == 3 and result.commit == bad
    assert "exit code 3" in result.message
    assert result.log_path and result.log_path in result.message
    assert f"current stays at v1 ({good[:12]})" in result.message
    log = Path(result.log_path).read_text()
    assert "failing on purpose" in log and "exit code 3" in log
    assert current_target(base) == f"releases/{good}"
    assert (installer.installed() or {})["commit"] == good


def test_rollback_reuses_the_tree_still_on_disk_and_runs_the_script_again(
    repo: Repo, make: Make, base: Path
) -> None:
    first = repo.commit("1.0", tag="v1")
    second = repo.commit("2.0", tag="v2")
    installer = make()
    assert installer.install(Release("v1", repo.url), {}).ok
    assert installer.install(Release("v2", repo.url), {}).ok
    assert current_target(base) == f"releases/{second}"

    result = installer.install(Release("v1", repo.url), {})

    assert result.ok and result.switched, result.message
    assert result.previous == second
    assert current_target(base) == f"releases/{first}"
    # Same tree (what the first run left is still there), script ran again.
    assert runs(base, first) == 2

    # By commit id the rollback needs no server at all.
    shutil.rmtree(repo.path)
    result = installer.install(Release(second, repo.url), {})
    assert result.ok, result.message
    assert current_target(base) == f"releases/{second}"
    assert runs(base, second) == 2


def test_the_same_commit_is_not_installed_again(repo: Repo, make: Make, base: Path) -> None:
    commit = repo.commit("1.0", tag="v1")
    repo.git("branch", "stable")
    installer = make()
    assert installer.install(Release("v1", repo.url), {}).ok

    result = installer.install(Release("v1", repo.url), {})
    assert result.ok and not result.switched
    assert "already installed" in result.message
    assert result.returncode is None and runs(base, commit) == 1

    # Another name for the same commit: nothing to run, but installed() follows it.
    result = installer.install(Release("stable", repo.url), {})
    assert result.ok and "already installed" in result.message
    assert runs(base, commit) == 1
    assert (installer.installed() or {})["ref"] == "stable"


@pytest.mark.parametrize("kind", ["lightweight tag", "annotated tag", "branch", "commit"])
def test_a_ref_may_be_a_tag_a_branch_or_a_full_commit(
    kind: str, repo: Repo, make: Make, base: Path
) -> None:
    wanted = repo.commit("1.0", tag="v1", annotated=kind == "annotated tag")
    repo.git("branch", "release-1")
    repo.commit("2.0")  # main moves on: what is installed is what the ref names
    ref = {"branch": "release-1", "commit": wanted}.get(kind, "v1")

    result = make().install(Release(ref, repo.url), {})

    assert result.ok, result.message
    assert result.commit == wanted
    assert (app_dir(base) / "current" / "VERSION").read_text() == "1.0\n"


def test_a_branch_that_moves_installs_its_new_commit(repo: Repo, make: Make, base: Path) -> None:
    first = repo.commit("1.0")
    installer = make()
    assert installer.install(Release("main", repo.url), {}).commit == first
    second = repo.commit("2.0")

    result = installer.install(Release("main", repo.url), {})

    assert result.ok and result.commit == second and result.previous == first
    assert current_target(base) == f"releases/{second}"


def test_unknown_ref_unfetchable_source_and_missing_commit_say_so(
    repo: Repo, make: Make, base: Path, tmp_path: Path
) -> None:
    good = repo.commit("1.0", tag="v1")
    installer = make()
    assert installer.install(Release("v1", repo.url), {}).ok

    unknown = installer.install(Release("v9", repo.url), {})
    assert "ref 'v9' does not exist" in unknown.message and repo.url in unknown.message

    missing = (tmp_path / "nowhere").as_uri()
    unfetchable = installer.install(Release("v1", missing), {})
    assert f"cannot fetch from {missing}" in unfetchable.message
    assert "does not appear to be a git repository" in unfetchable.message

    absent = installer.install(Release("1" * 40, repo.url), {})
    assert "commit 1111111111" in absent.message and "is not in" in absent.message

    for result in (unknown, unfetchable, absent):
        assert not result.ok and not result.switched
        assert f"current stays at v1 ({good[:12]})" in result.message
    assert current_target(base) == f"releases/{good}"
    assert release_dirs(base) == {good}


def test_a_source_with_credentials_is_never_shown_with_them(make: Make) -> None:
    source = "https://deploy:s3cr3t-token@127.0.0.1:9/shop.git"  # nothing listens on 9

    result = make(fetch_timeout=20).install(Release("v1", source), {})

    assert not result.ok
    assert "s3cr3t" not in result.message and "s3cr3t" not in json.dumps(result.as_dict())
    assert "https://***@127.0.0.1:9/shop.git" in result.message


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A git:// server that accepts connections and never answers: a hung git."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"git://127.0.0.1:{listener.getsockname()[1]}/shop.git"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.parametrize("ref", ["v1", "ab" * 20])
def test_a_hanging_git_is_stopped_at_fetch_timeout(
    ref: str, silent_server: str, make: Make, base: Path
) -> None:
    began = time.monotonic()

    result = make(fetch_timeout=1.5).install(Release(ref, silent_server), {})

    assert time.monotonic() - began < 15
    assert not result.ok
    assert "timed out after 1.5 s (fetch_timeout)" in result.message
    assert current_target(base) is None
    assert release_dirs(base) == set()
    assert os.listdir(app_dir(base) / "tmp") == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "install script bin/install does not exist"),
        ("not executable", "is not executable"),
        ("symlink out", "points outside the release"),
        ("hangs", "timed out after 1 s and was killed"),
        ("bad interpreter", "its interpreter (the #! line) does not exist"),
    ],
)
def test_install_script_problems_keep_current(
    case: str, expected: str, repo: Repo, make: Make, base: Path
) -> None:
    good = repo.commit("1.0", tag="v1")
    installer = make(timeout=1)
    assert installer.install(Release("v1", repo.url), {}).ok
    if case == "missing":
        repo.git("rm", "-q", "bin/install")
        repo.commit("2.0", script=None)
    elif case == "not executable":
        repo.commit("2.0", script_mode=0o644)
    elif case == "symlink out":
        (repo.path / "bin" / "install").unlink()
        (repo.path / "bin" / "install").symlink_to("/bin/true")
        repo.commit("2.0", script=None)
    elif case == "hangs":
        repo.commit("2.0", script="#!/bin/sh\necho waiting\nsleep 60\n")
    else:
        repo.commit("2.0", script="#!/nonexistent/interpreter\n")
    began = time.monotonic()

    result = installer.install(Release("main", repo.url), {})

    assert time.monotonic() - began < 15
    assert not result.ok and not result.switched
    assert expected in result.message
    assert f"current stays at v1 ({good[:12]})" in result.message
    assert current_target(base) == f"releases/{good}"
    if case == "hangs":
        assert result.log_path and "waiting" in Path(result.log_path).read_text()


def test_install_script_elsewhere_in_the_tree(repo: Repo, make: Make, base: Path) -> None:
    commit = repo.commit("1.0", script=None, extra={"deploy/setup.sh": INSTALL})
    (repo.path / "deploy" / "setup.sh").chmod(0o755)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "x")
    commit = repo.git("rev-parse", "HEAD")

    result = make().install(Release("main", repo.url, install_script="./deploy/setup.sh"), {})

    assert result.ok, result.message
    assert runs(base, commit) == 1


def test_an_interrupted_install_runs_again_next_time(repo: Repo, make: Make, base: Path) -> None:
    good = repo.commit("1.0", tag="v1")
    new = repo.commit("2.0", tag="v2")
    assert make().install(Release("v1", repo.url), {}).ok
    cancel = threading.Event()
    started = app_dir(base) / "releases" / new / "started"

    def stop_once_started() -> None:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        cancel.set()

    stopper = threading.Thread(target=stop_once_started)
    stopper.start()
    result = make(cancel=cancel).install(Release("v2", repo.url), {"hang": True})
    stopper.join()

    assert not result.ok and "shutting down" in result.message
    assert current_target(base) == f"releases/{good}"

    # The next agent: the tree is complete, so it is not fetched again, but the
    # script runs again before current moves.
    result = make().install(Release("v2", repo.url), {})
    assert result.ok and result.switched, result.message
    assert runs(base, new) == 2
    assert current_target(base) == f"releases/{new}"


def test_temp_files_a_kill_left_among_records_and_logs_go_at_the_next_install(
    repo: Repo, make: Make, base: Path
) -> None:
    """A kill -9 between write_atomic's mkstemp and rename, while a record or a
    log was written, leaves a temp file next to it; the next install removes
    those, and nothing of the app's own trees (not walked) or else."""
    good = repo.commit("1.0", tag="v1")
    assert make().install(Release("v1", repo.url), {}).ok
    releases, logs = app_dir(base) / "releases", app_dir(base) / "logs"
    stale = [
        releases / f".{good}.json.a1b2c3d4{TEMP_SUFFIX}",
        logs / f".{good}-20261207T000000Z.log.zz_9x0a{TEMP_SUFFIX}",
    ]
    apps_own = releases / good / f".settings.py.abcdefgh{TEMP_SUFFIX}"  # in the app's tree
    for path in [*stale, apps_own]:
        path.write_text("half")
    repo.commit("2.0", tag="v2")
    assert make().install(Release("v2", repo.url), {}).ok
    assert not [p for p in stale if p.exists()]
    assert apps_own.exists()


def test_a_half_fetched_release_is_fetched_again(repo: Repo, make: Make, base: Path) -> None:
    commit = repo.commit("1.0", tag="v1")
    half = app_dir(base) / "releases" / commit
    half.mkdir(parents=True)
    (half / "VERSION").write_text("garbage from a killed fetch\n")
    (half / "runs.txt").write_text("run\nrun\nrun\n")
    leftover = app_dir(base) / "tmp" / "fetch-dead"
    leftover.mkdir(parents=True)

    result = make().install(Release("v1", repo.url), {})

    assert result.ok, result.message
    assert (half / "VERSION").read_text() == "1.0\n"
    assert runs(base, commit) == 1
    assert not leftover.exists()


def test_pruning_keeps_the_newest_and_never_current(repo: Repo, make: Make, base: Path) -> None:
    commits = [repo.commit(f"{n}.0", tag=f"v{n}") for n in range(1, 5)]
    installer = make(keep=2)
    for n in range(1, 5):
        assert installer.install(Release(f"v{n}", repo.url), {}).ok

    assert release_dirs(base) == set(commits[2:])
    assert current_target(base) == f"releases/{commits[3]}"
    logs = os.listdir(app_dir(base) / "logs")
    assert {name.partition("-")[0] for name in logs} == set(commits[2:])

    # Back to v3 (kept), then a failed v4 install with keep=1: both the
    # current one and the one just tried stay.
    installer = make(keep=1)
    assert installer.install(Release("v3", repo.url), {}).ok
    assert release_dirs(base) == {commits[2]}
    failed = installer.install(Release("v4", repo.url), {"fail": True})
    assert not failed.ok
    assert release_dirs(base) == {commits[2], commits[3]}
    assert current_target(base) == f"releases/{commits[2]}"


def test_the_log_keeps_the_end_of_a_long_output(repo: Repo, make: Make) -> None:
    script = (
        "#!/bin/sh\n"
        "i=0; while [ $i -lt 30000 ]; do echo \"line $i $(printf '%080d' 0)\"; "
        "i=$((i+1)); done\necho the-last-line\n"
    )
    repo.commit("1.0", script=script)

    result = make().install(Release("main", repo.url), {})

    assert result.ok and result.log_path
    log = Path(result.log_path).read_text()
    assert len(log.encode()) < MAX_LOG_BYTES + 4096
    assert "the-last-line" in log and "line 29999 " in log
    assert "line 0 " not in log and "earlier line(s) dropped" in log


# -- the release znode ------------------------------------------------------------


def test_a_release_is_parsed_with_its_defaults() -> None:
    assert parse_release(None, WHERE) is None
    release = parse_release(b"ref: v1\nsource: https://git.example.org/shop.git\n", WHERE)
    assert release == Release("v1", "https://git.example.org/shop.git", "bin/install")
    full = parse_release(
        b'{"ref": "v2", "source": "file:///srv/shop", "install_script": "deploy/go",'
        b' "by": "alice", "at": 1700000000}',
        WHERE,
    )
    assert full is not None
    assert full.to_doc() == {
        "ref": "v2",
        "source": "file:///srv/shop",
        "install_script": "deploy/go",
        "by": "alice",
        "at": 1700000000.0,
    }
    # Who and when are information: the same release written again is the same.
    assert full == Release("v2", "file:///srv/shop", "deploy/go")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "the release is empty"),
        (b"ref: [v1\n", "not valid YAML"),
        (b"\xff\xfe", "not UTF-8"),
        (b"a: &x [1]\nb: *x\n", "aliases"),
        (b"- v1\n- file:///x\n", "must be a mapping"),
        (b"just-a-string", "must be a mapping"),
        (b"source: file:///x\n", "lacks ref"),
        (b"ref: v1\n", "lacks source"),
        (b"ref: v1\nsource: file:///x\nsoruce: y\n", "unknown key(s) soruce"),
        (b"ref: v1\nref: v2\nsource: file:///x\n", "duplicate key"),
        (b"ref: 1.10\nsource: file:///x\n", "ref must be a string, not float (quote it"),
        (b"ref: v1\nsource: [file:///x]\n", "source must be a string, not list"),
        (b"ref: v1\nsource: file:///x\nat: soon\n", "at must be a time"),
        (b"ref: v1\nsource: file:///x\nby: 3\n", "by must be a string"),
        (b"ref: --upload-pack=touch /tmp/x\nsource: file:///x\n", "starts with '-'"),
        (b"ref: v1\nsource: --upload-pack=sh\n", "starts with '-'"),
        (b"ref: v1:refs/heads/x\nsource: file:///x\n", "is not a git ref name"),
        (b"ref: v1\nsource: ext::sh -c touch% /tmp/x\n", "holds whitespace"),
        (b"ref: v1\nsource: ext::sh\n", "a git transport that runs commands"),
        (b"ref: v1\nsource: file:///x\ninstall_script: ../x\n", "leaves the code root"),
        (b"ref: v1\nsource: file:///x\ninstall_script: bin/../../x\n", "leaves the code root"),
        (b"ref: v1\nsource: file:///x\ninstall_script: /bin/sh\n", "is absolute"),
        (b"ref: v1\nsource: file:///x\ninstall_script: ''\n", "install_script is empty"),
        (b"ref: ''\nsource: file:///x\n", "ref is empty"),
    ],
)
def test_a_bad_release_znode_is_refused_naming_it(raw: bytes, expected: str) -> None:
    with pytest.raises(InvalidRelease) as info:
        parse_release(raw, WHERE)
    message = str(info.value)
    assert message.startswith(WHERE + ": ")
    assert expected in message
    assert "\n" not in message


def test_an_alias_bomb_is_refused_without_expanding_it() -> None:
    lines = [b"ref: v1", b"source: file:///x", b"b0: &b0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"b{i}: &b{i} [*b{i - 1}, *b{i - 1}]".encode() for i in range(1, 40)]
    bomb = b"\n".join(lines) + b"\n"
    began = time.monotonic()
    with pytest.raises(InvalidRelease, match="aliases"):
        parse_release(bomb, WHERE)
    assert time.monotonic() - began < 2


def test_ls_remote_names_resolve_as_git_fetch_does() -> None:
    listing = "\n".join(
        [
            f"{'1' * 40}\tHEAD",
            f"{'2' * 40}\trefs/heads/main",
            f"{'3' * 40}\trefs/heads/v1",
            f"{'4' * 40}\trefs/tags/v1",
            f"{'5' * 40}\trefs/tags/v1^{{}}",
            f"{'6' * 40}\trefs/heads/team/main",
        ]
    )
    assert pick_ref(listing, "v1") == ("refs/tags/v1", "5" * 40)  # tag first, peeled
    assert pick_ref(listing, "main") == ("refs/heads/main", "2" * 40)
    assert pick_ref(listing, "heads/v1") == ("refs/heads/v1", "3" * 40)
    assert pick_ref(listing, "HEAD") == ("HEAD", "1" * 40)
    assert pick_ref(listing, "team") is None


def test_keep_must_leave_room_for_the_current_release(make: Make) -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        make(keep=0)


# -- private sources: credentials never reach git's argv ---------------------
# (visible in /proc to every user while git runs), whether they come in the
# source's URL or from the credentials file the config names; with that file
# configured, a URL that carries credentials is refused. Against a real git
# smart-HTTP server that asks for Basic auth, through a ``git`` that records
# its argv.

TOKEN = "tok-61e2-never-in-argv"


@pytest.fixture
def server(repo: Repo) -> Iterator[GitHttpServer]:
    srv = GitHttpServer(repo.path.parent, "deploy", TOKEN).start()
    yield srv
    srv.stop()


def recording_git(tmp_path: Path) -> tuple[str, Path]:
    log = tmp_path / "argv.log"
    wrapper = tmp_path / "git"
    wrapper.write_text(f'#!/bin/sh\nprintf \'%s\\n\' "$*" >> {log}\nexec git "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


def test_credentials_in_the_url_work_and_never_reach_gits_argv(
    make: Make,
    repo: Repo,
    server: GitHttpServer,
    tmp_path: Path,
) -> None:
    repo.commit("v1", tag="v1")
    git, log = recording_git(tmp_path)
    source = server.url("shop/.git", f"deploy:{TOKEN}")
    result = make(git=git).install(Release("v1", source), {})
    assert result.ok, result.message
    argv = log.read_text()
    assert "fetch" in argv and f"127.0.0.1:{server.port}/shop/.git" in argv
    assert TOKEN not in argv and "deploy:" not in argv
    assert TOKEN not in result.message
    wrong = make(git=git).install(Release("v1", server.url("shop/.git", "deploy:nope")), {})
    assert not wrong.ok and "nope" not in wrong.message and server.refused


def test_with_a_credentials_file_urls_with_credentials_are_refused(
    make: Make,
    repo: Repo,
    server: GitHttpServer,
    tmp_path: Path,
) -> None:
    repo.commit("v1", tag="v1")
    git, log = recording_git(tmp_path)
    creds = tmp_path / "git.cred"
    creds.write_text(f"http://deploy:{TOKEN}@127.0.0.1:{server.port}\n")
    creds.chmod(0o600)
    installer = make(git=git, git_credentials=str(creds))
    refused = installer.install(Release("v1", server.url("shop/.git", f"deploy:{TOKEN}")), {})
    assert not refused.ok
    assert "credentials in its URL" in refused.message and TOKEN not in refused.message
    result = installer.install(Release("v1", server.url("shop/.git")), {})
    assert result.ok, result.message
    assert TOKEN not in log.read_text()
    creds.chmod(0o644)  # others could read it: refused, saying how to fix it
    loose = make(git=git, git_credentials=str(creds)).install(
        Release("v1", server.url("shop/.git")), {}
    )
    assert not loose.ok and "chmod 600" in loose.message


def test_only_http_credentials_are_split_off_the_url() -> None:
    assert split_userinfo("https://deploy:t%40k@git.example/shop") == (
        "https://git.example/shop",
        "deploy",
        "t@k",
    )
    ssh = "ssh://git@git.example/shop"
    assert split_userinfo(ssh) == (ssh, None, None)
    assert split_userinfo("/srv/git/shop") == ("/srv/git/shop", None, None)
