"""Installing an app's release: fetch the code, run its install script, switch.

Under ``<apps_dir>/<app>/``::

   releases/<commit>/       one tree per fetched commit (no .git), the app user's
   releases/<commit>.json   the agent's record of it (0600): complete once written
   current -> releases/<commit>   what the app runs; switched only after a good install
   logs/<commit>-<UTC>.log  each install script's output (0600, its last 1 MiB)
   tmp/                     fetches and data files in flight; emptied at each install

Everything here survives the agent being killed at any point. A fetch happens
in ``tmp/`` and is renamed into ``releases/`` only when its tree is whole, and
the record beside it is written (durably) only after that, so a tree without a
record is debris and is fetched again. ``current`` moves by renaming a new
symlink over it, so the app sees the old release or the new one, never none;
and it moves only after the install script exits 0, so a crash mid-install
leaves it where it was, and the next attempt runs the script again.

git runs as the agent, in directories only the agent writes, with no user or
system configuration and no prompts, through the agent's ``ChildRunner`` so that a
hanging server costs ``fetch_timeout`` and no more. The fetched tree has no
``.git``: the tree is handed to the app's user, and git must never again run as
root in a directory another user controls (its config can run commands).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from mozagent.apply.process import ChildApplier, ChildExit, ChildRunner
from mozagent.apply.runas import RunAs
from mozagent.apply.script import base_env
from mozagent.desired.keys import check_name
from mozagent.desired.release import (
    Release,
    display_source,
    is_commit,
    pick_ref,
    split_userinfo,
)
from mozagent.fileio import (
    disk_full,
    read_json_object,
    remove_temps_in,
    write_atomic,
    write_json,
)
from mozagent.zkauth import CredentialsError, read_private

# How a script or git that ran out of space says so in its own words.
NO_SPACE = os.strerror(errno.ENOSPC)

MAX_LOG_BYTES = 1024 * 1024
LOGS_PER_RELEASE = 5
# Hands git the credentials split off the URL (``split_userinfo``), from the
# environment: the helper's text holds none.
# Only for the source's own host: a redirect elsewhere gets nothing.
_ENV_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || return 0; h=; while IFS== read -r k v; do '
    '[ "$k" = host ] && h=$v; done; [ "$h" = "$MOZAGENT_GIT_HOST" ] && '
    'printf "username=%s\\npassword=%s\\n" "$MOZAGENT_GIT_USERNAME" "$MOZAGENT_GIT_PASSWORD"; }; f'
)
_GIT_CONFIG = (
    "protocol.ext.allow=never",
    "protocol.fd.allow=never",
    "init.defaultBranch=main",
    "advice.detachedHead=false",
    "core.hooksPath=/dev/null",
)


@dataclass
class InstallResult:
    """What one ``install`` did, for status and the operator. ``source`` is shown
    without credentials; ``returncode`` is the install script's, when it ran."""

    ok: bool
    message: str
    ref: str
    source: str
    commit: str | None
    release_dir: str | None
    log_path: str | None
    returncode: int | None
    started: float
    ended: float
    previous: str | None = None  # the commit ``current`` pointed to before
    switched: bool = False
    # The install failed for want of space (ENOSPC, the app dir full, or the
    # script saying so): worth trying again once space is back.
    disk_full: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Failed(Exception):
    """Ends an install with its message; the result says what was done so far."""


class _OutputTail:
    """The end of an install script's output, at most ``limit`` bytes of whole
    lines: errors come last, and a script printing forever must not fill the disk."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: deque[str] = deque()
        self.size = 0
        self.dropped = 0
        self.lock = threading.Lock()

    def add(self, line: str) -> None:
        line = line[-self.limit :] + "\n"
        with self.lock:
            self.lines.append(line)
            self.size += len(line.encode("utf-8", "replace"))
            while self.size > self.limit and len(self.lines) > 1:
                self.size -= len(self.lines.popleft().encode("utf-8", "replace"))
                self.dropped += 1

    def text(self) -> str:
        with self.lock:
            head = (
                f"[mozagent: {self.dropped} earlier line(s) dropped: only the last "
                f"{self.limit} bytes are kept]\n"
                if self.dropped
                else ""
            )
            return head + "".join(self.lines)


def _git_error(out: ChildExit) -> str:
    """git's own words for a failure: its first fatal/error line (later ones are
    generic, "Could not read from remote repository"), else its last line."""
    lines = [line.strip() for line in (out.stderr or "").splitlines() if line.strip()]
    lines = lines or [line.strip() for line in out.tail if line.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[-1] if lines else f"exit code {out.returncode}"


def _utc_stamp(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int(when % 1 * 1e6):06d}Z"


class ReleaseInstaller(ChildApplier):
    """Installs releases of one app on this host; one install at a time (the
    executor's thread), which is what lets it empty ``tmp/`` at each start."""

    def __init__(
        self,
        apps_dir: str,
        app: str,
        node: str,
        keep: int,
        run_as: RunAs,
        runner: ChildRunner,
        timeout: float,
        fetch_timeout: float,
        git: str = "git",
        git_credentials: str | None = None,
    ) -> None:
        super().__init__(runner, timeout)
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the current release), not {keep}")
        self.app = check_name("app", app)
        self.node = node
        self.keep = keep
        self.run_as = run_as
        self.fetch_timeout = fetch_timeout
        self.git = git
        # A git-credential-store file (``https://user:token@host`` lines), 0600:
        # with it, sources must not carry credentials of their own.
        self.git_credentials = git_credentials
        self.app_dir = os.path.join(os.path.abspath(apps_dir), app)
        self.releases = os.path.join(self.app_dir, "releases")
        self.logs = os.path.join(self.app_dir, "logs")
        self.tmp = os.path.join(self.app_dir, "tmp")
        self.current_link = os.path.join(self.app_dir, "current")

    # -- what is installed ------------------------------------------------

    def _release_dir(self, commit: str) -> str:
        return os.path.join(self.releases, commit)

    def _record_path(self, commit: str) -> str:
        return os.path.join(self.releases, commit + ".json")

    def _record(self, commit: str) -> dict[str, Any] | None:
        """The agent's record of a fetched tree; None means the tree is not to be trusted."""
        doc = read_json_object(self._record_path(commit))
        if (
            doc is None
            or doc.get("commit") != commit
            or not os.path.isdir(self._release_dir(commit))
        ):
            return None
        return doc

    def _current_commit(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        head, name = os.path.split(target)
        if head != "releases" or not is_commit(name):
            return None
        return name

    def current_dir(self) -> str | None:
        """The release the app runs, or None when none was ever installed."""
        commit = self._current_commit()
        if commit is None or not os.path.isdir(self._release_dir(commit)):
            return None
        return self._release_dir(commit)

    def installed(self) -> dict[str, Any] | None:
        """What ``current`` points to: ref, commit, source (as desired, for
        comparing with the znode), installed (epoch seconds) and dir."""
        directory = self.current_dir()
        if directory is None:
            return None
        commit = os.path.basename(directory)
        record = self._record(commit) or {}
        return {
            "ref": record.get("ref"),
            "commit": commit,
            "source": record.get("source"),
            "installed": record.get("installed"),
            "dir": directory,
        }

    # -- installing -------------------------------------------------------

    def install(self, release: Release, data: Mapping[str, Any]) -> InstallResult:
        """Make ``release`` current, or say why not; never raises for bad input,
        an unreachable source or a failing script, and never moves ``current``
        unless the install script exited 0."""
        started = time.time()
        result = InstallResult(
            ok=False,
            message="",
            ref=release.ref,
            source=display_source(release.source),
            commit=None,
            release_dir=None,
            log_path=None,
            returncode=None,
            started=started,
            ended=started,
            previous=self._current_commit(),
        )
        try:
            self._install(release, data, result)
        except _Failed as exc:
            result.message = str(exc)
        except OSError as exc:
            result.message = f"cannot install {release.ref}: {exc}"
            result.disk_full = exc.errno == errno.ENOSPC
        if not result.ok and result.message and not result.switched:
            full = disk_full(self.app_dir)
            result.disk_full = result.disk_full or full or NO_SPACE in result.message
            if full and self._drop(result.commit, result.previous):
                result.message += "; the disk is full: the tree it left was removed"
            result.message += f"; current stays at {self._describe(result.previous)}"
        result.ended = time.time()
        return result

    def _drop(self, commit: str | None, previous: str | None) -> bool:
        """A failed release that left the disk full is removed (its log stays):
        kept for its explanation, it would keep the host from working at all."""
        if commit is None or commit == previous:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._record_path(commit))
        _remove(self._release_dir(commit))
        self._clean_tmp()
        return True

    def _describe(self, commit: str | None) -> str:
        if commit is None:
            return "nothing (no release installed)"
        record = self._record(commit) or {}
        return f"{record.get('ref') or '?'} ({commit[:12]})"

    def _install(self, release: Release, data: Mapping[str, Any], result: InstallResult) -> None:
        self._prepare()
        try:
            commit = self._resolve_and_fetch(release)
            result.commit = commit
            result.release_dir = self._release_dir(commit)
            if commit == result.previous and (self._record(commit) or {}).get("installed"):
                self._note_installed(commit, release, keep_time=True)
                result.ok = True
                result.message = f"{release.ref} ({commit[:12]}) is already installed"
                return
            script = self._script_path(release, commit)
            self._run_script(release, commit, script, data, result)
            self._note_installed(commit, release, keep_time=False)
            self._switch(commit)
            result.switched = True
            result.ok = True
            result.message = (
                f"installed {release.ref} ({commit[:12]}) from {result.source}; "
                f"current was {self._describe(result.previous)}; log: {result.log_path}"
            )
        finally:
            self._prune(result.commit)
            self._clean_tmp()

    def _prepare(self) -> None:
        """Directories the app's user must traverse or must not read: the app's
        own dir is 0750 and its group the app user's, so another app's code
        (another user) cannot enter it; inside, what the app may read."""
        for path, mode in (
            (self.app_dir, 0o750),
            (self.releases, 0o755),
            (self.logs, 0o700),
            (self.tmp, 0o711),
        ):
            os.makedirs(path, mode=mode, exist_ok=True)
            os.chmod(path, mode)
        self.run_as.group_owns(self.app_dir)
        for name in os.listdir(self.app_dir):
            if name.startswith(".current."):  # a switch a killed agent did not finish
                _remove(os.path.join(self.app_dir, name))
        for directory in (self.releases, self.logs):  # records and logs a kill -9 cut short
            remove_temps_in(directory)
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        """Whatever a killed agent left in flight is debris: nothing in tmp/ is
        ever resumed."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.tmp):
                _remove(os.path.join(self.tmp, name))

    # -- git --------------------------------------------------------------

    def _git_env(self, home: str) -> dict[str, str]:
        return {
            **base_env(),
            "HOME": home,
            "XDG_CONFIG_HOME": home,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            # No repository around the agent's dirs may lend git its config
            # (a remote named like the source, a credential helper).
            "GIT_CEILING_DIRECTORIES": self.tmp,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        }

    def _git(
        self, args: Sequence[str], cwd: str, home: str, deadline: float, what: str, source: str
    ) -> ChildExit:
        """One git command, bounded by what is left of the fetch's time."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Failed(f"{what} timed out after {self.fetch_timeout:g} s (fetch_timeout)")
        cmd = [self.git]
        for setting in _GIT_CONFIG:
            cmd += ["-c", setting]
        env = self._git_env(home)
        args = self._credentials(args, source, env)
        out = self.runner.run(
            cmd + list(args),
            env,
            left,
            cwd=cwd,
            split_stderr=True,
            keep_bytes=MAX_LOG_BYTES,
        )
        if out.returncode is None:
            raise _Failed(f"cannot run git ({self.git}): {out.start_error}")
        if out.stopped == "timeout":  # the whole fetch's limit, not this command's
            raise _Failed(f"{what} timed out after {self.fetch_timeout:g} s (fetch_timeout)")
        if out.stopped or out.cleanup_error:
            raise _Failed(f"{what} {out.failure(left)}")
        if source and source != display_source(source):
            out.stderr = out.stderr.replace(source, display_source(source))
        return out

    def _credentials(self, args: Sequence[str], source: str, env: dict[str, str]) -> list[str]:
        """Credentials reach git through a helper that reads the environment
        (which only the agent's user and root can read) or the configured
        file: never the argv, which every user sees in /proc while git runs."""
        url, user, password = split_userinfo(source) if source else (source, None, None)
        helper = None
        if user is not None:
            if self.git_credentials:
                raise _Failed(
                    f"the source {display_source(source)} carries credentials in its URL; "
                    "with releases.git_credentials configured they are refused (whoever can "
                    "read the release znode would have them): put them in that file"
                )
            env["MOZAGENT_GIT_USERNAME"], env["MOZAGENT_GIT_PASSWORD"] = user, password or ""
            env["MOZAGENT_GIT_HOST"] = urlsplit(url).netloc
            helper = _ENV_CREDENTIAL_HELPER
        elif self.git_credentials:
            try:
                read_private(self.git_credentials, "git credentials file", 64 * 1024)
            except CredentialsError as exc:
                raise _Failed(str(exc)) from None
            # get only: git's erase after a refusal must not edit the admin's file.
            store = shlex.quote(self.git_credentials)
            helper = f'!f() {{ test "$1" = get && git credential-store --file={store} get; }}; f'
        if helper is not None:
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="credential.helper",
                GIT_CONFIG_VALUE_0=helper,
            )
        return [url if a == source else a for a in args]

    def _resolve_and_fetch(self, release: Release) -> str:
        """The commit ``release`` names, its tree complete in releases/.

        A full commit id needs no server when its tree is already here, and a
        tag or a branch costs one ``ls-remote``, so a rollback to a release
        still on disk does not fetch it again.
        """
        work = tempfile.mkdtemp(prefix="fetch-", dir=self.tmp)
        home = os.path.join(work, "home")
        os.mkdir(home, 0o700)
        deadline = time.monotonic() + self.fetch_timeout
        shown = display_source(release.source)
        if is_commit(release.ref):
            commit, fetch_ref = release.ref, release.ref
        else:
            out = self._git(
                ["ls-remote", "--", release.source, release.ref],
                work,
                home,
                deadline,
                f"asking {shown} for {release.ref} (git ls-remote)",
                release.source,
            )
            if out.returncode != 0:
                raise _Failed(f"cannot fetch from {shown}: {_git_error(out)}")
            picked = pick_ref(out.stdout, release.ref)
            if picked is None:
                raise _Failed(
                    f"ref {release.ref!r} does not exist in {shown}: name a branch, "
                    "a tag or a full commit id"
                )
            fetch_ref, commit = picked
        if self._record(commit) is not None:
            return commit
        return self._fetch(release, fetch_ref, commit, work, home, deadline)

    def _fetch(
        self,
        release: Release,
        fetch_ref: str,
        commit: str,
        work: str,
        home: str,
        deadline: float,
    ) -> str:
        """Shallow where the server allows it, else whole; into tmp/, then renamed."""
        tree = os.path.join(work, "tree")
        shown = display_source(release.source)
        what = f"fetching {release.ref} from {shown}"

        def git(*args: str) -> ChildExit:
            return self._git(["-C", tree, *args], work, home, deadline, what, release.source)

        init = self._git(["init", "-q", tree], work, home, deadline, what, "")
        if init.returncode != 0:
            raise _Failed(f"cannot prepare a fetch: {_git_error(init)}")
        out = git("fetch", "-q", "--no-tags", "--depth", "1", "--", release.source, fetch_ref)
        if out.returncode != 0:
            if "couldn't find remote ref" in out.stderr:
                raise _Failed(f"ref {release.ref!r} does not exist in {shown}")
            # A dumb server cannot fetch shallow, and an old one refuses a bare
            # commit id: fetch every branch and tag instead.
            wanted = (
                ["+refs/heads/*:refs/m/heads/*", "+refs/tags/*:refs/m/tags/*"]
                if fetch_ref == commit
                else [fetch_ref]
            )
            out = git("fetch", "-q", "--no-tags", "--", release.source, *wanted)
            if out.returncode != 0:
                raise _Failed(f"cannot fetch {release.ref} from {shown}: {_git_error(out)}")
        target = commit if fetch_ref == commit else "FETCH_HEAD"
        out = git("rev-parse", "-q", "--verify", f"{target}^{{commit}}")
        fetched = out.stdout.strip()
        if out.returncode != 0 or not is_commit(fetched):
            raise _Failed(
                f"commit {release.ref} is not in {shown} (no branch or tag of it reaches it)"
                if fetch_ref == commit
                else f"{release.ref} in {shown} is not a commit"
            )
        # A branch may have moved since ls-remote: what was fetched is what is
        # installed, and its id names it.
        if fetched != commit and self._record(fetched) is not None:
            return fetched
        out = git("checkout", "-q", "--detach", fetched)
        if out.returncode != 0:
            raise _Failed(f"cannot check out {fetched[:12]}: {_git_error(out)}")
        shutil.rmtree(os.path.join(tree, ".git"))
        final = self._release_dir(fetched)
        _remove(final)  # a tree without a record: half-fetched by a killed agent
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._record_path(fetched))
        os.chmod(tree, 0o755)
        os.rename(tree, final)
        write_json(
            self._record_path(fetched),
            {
                "commit": fetched,
                "ref": release.ref,
                "source": release.source,
                "fetched": time.time(),
            },
            0o600,
            durable=True,
        )
        return fetched

    # -- the install script -----------------------------------------------

    def _script_path(self, release: Release, commit: str) -> str:
        """The install script, refused unless it is an executable file inside
        the tree: a symlink out of it (``bin/install -> /bin/sh``) included."""
        root = os.path.realpath(self._release_dir(commit))
        path = os.path.join(root, release.install_script)
        name = f"install script {release.install_script}"
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            raise _Failed(f"{name} points outside the release ({commit[:12]}): refused")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise _Failed(f"{name} does not exist in {release.ref} ({commit[:12]})") from None
        if not stat.S_ISREG(st.st_mode):
            raise _Failed(f"{name} in {release.ref} ({commit[:12]}) is not a file")
        if not st.st_mode & 0o111:
            raise _Failed(
                f"{name} in {release.ref} ({commit[:12]}) is not executable "
                f"(git update-index --chmod=+x {release.install_script})"
            )
        return real

    def _run_script(
        self,
        release: Release,
        commit: str,
        script: str,
        data: Mapping[str, Any],
        result: InstallResult,
    ) -> None:
        directory = self._release_dir(commit)
        try:
            payload = json.dumps(dict(data), sort_keys=True).encode()
        except (TypeError, ValueError) as exc:
            raise _Failed(f"the app's data cannot be given to the install script: {exc}") from None
        # The data dir is the user's (its secrets are the app's own) and goes
        # away with tmp/ when the install ends.
        data_dir = tempfile.mkdtemp(prefix="data-", dir=self.tmp)
        data_path = os.path.join(data_dir, "data.json")
        write_atomic(data_path, payload, 0o640, durable=False)
        self.run_as.owns(data_dir)
        self.run_as.owns(directory)
        env = {
            **base_env(),
            **self.run_as.env(),
            "MOZAGENT_APP": self.app,
            "MOZAGENT_NODE": self.node,
            "MOZAGENT_RELEASE_REF": release.ref,
            "MOZAGENT_RELEASE_COMMIT": commit,
            "MOZAGENT_RELEASE_DIR": directory,
            "MOZAGENT_DATA": data_path,
        }
        output = _OutputTail(MAX_LOG_BYTES)
        begun = time.time()
        out = self.child([script], env, on_line=output.add, cwd=directory, run_as=self.run_as)
        name = f"install script {release.install_script}"
        if out.returncode is None:
            # The script was there a moment ago: "not found" is its #! interpreter.
            why = (
                "its interpreter (the #! line) does not exist"
                if out.start_error == "not found"
                else out.start_error
            )
            raise _Failed(f"cannot run the {name}: {why}")
        result.returncode = out.returncode
        failure = out.failure(self.timeout)
        if failure is None:
            verdict = ""
        elif out.returncode > 0 and not out.stopped:  # the script's own failure
            verdict = f"the {name} failed with exit code {out.returncode}"
        else:
            verdict = f"the {name} {failure}"
        result.log_path = self._write_log(commit, begun, release, output, out, verdict)
        if verdict:
            raise _Failed(f"{verdict} ({release.ref}, {commit[:12]}); log: {result.log_path}")

    def _write_log(
        self,
        commit: str,
        begun: float,
        release: Release,
        output: _OutputTail,
        out: ChildExit,
        verdict: str,
    ) -> str:
        path = os.path.join(self.logs, f"{commit}-{_utc_stamp(begun)}.log")
        footer = verdict or f"the install script exited {out.returncode}"
        text = (
            f"[mozagent: install of {release.ref} ({commit}) from "
            f"{display_source(release.source)} at {_utc_stamp(begun)}]\n"
            + output.text()
            + f"[mozagent: {footer}]\n"
        )
        write_atomic(path, text.encode("utf-8", "replace"), 0o600, durable=False)
        return path

    # -- switching and pruning --------------------------------------------

    def _note_installed(self, commit: str, release: Release, keep_time: bool) -> None:
        """Record what the operator asked for under this commit, before ``current``
        points to it: ``installed()`` then tells the truth from the first moment."""
        record = self._record(commit) or {"commit": commit}
        updated = {**record, "ref": release.ref, "source": release.source}
        if not keep_time or "installed" not in record:
            updated["installed"] = time.time()
        if updated != record:
            write_json(self._record_path(commit), updated, 0o600, durable=True)

    def _switch(self, commit: str) -> None:
        """A new symlink under a temporary name renamed over ``current``: atomic."""
        temp = os.path.join(self.app_dir, f".current.{uuid.uuid4().hex}")
        os.symlink(os.path.join("releases", commit), temp)
        try:
            os.replace(temp, self.current_link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        dir_fd = os.open(self.app_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _prune(self, just_installed: str | None) -> None:
        """Keep the ``keep`` most recently used releases, and always the current
        one and the one just tried (its log and tree explain a failure)."""
        keep = {c for c in (self._current_commit(), just_installed) if c}
        try:
            names = os.listdir(self.releases)
        except FileNotFoundError:
            return
        commits = {n.removesuffix(".json") for n in names if is_commit(n.removesuffix(".json"))}
        complete = {c: self._record(c) for c in commits}

        def used(commit: str) -> float:
            record = complete[commit] or {}
            return max(float(record.get("installed") or 0), float(record.get("fetched") or 0))

        ranked = sorted((c for c in commits if complete[c] is not None), key=used, reverse=True)
        for commit in ranked:
            if len(keep) >= self.keep:
                break
            keep.add(commit)
        for commit in commits - keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._record_path(commit))
            _remove(self._release_dir(commit))
        self._prune_logs(keep)

    def _prune_logs(self, kept: set[str]) -> None:
        try:
            names = sorted(os.listdir(self.logs), reverse=True)  # newest first
        except FileNotFoundError:
            return
        seen: dict[str, int] = {}
        for name in names:
            commit = name.partition("-")[0]
            seen[commit] = seen.get(commit, 0) + 1
            if commit not in kept or seen[commit] > LOGS_PER_RELEASE:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.logs, name))


def _remove(path: str) -> None:
    """Remove a file or a tree, never following a symlink out of it."""
    if os.path.islink(path) or os.path.isfile(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
