"""Helpers for the real image build test: the apt mirror, a puppet tree and
a module in local git repositories, a git daemon on the loopback, and a
chroot with private /dev, /proc and /sys mounts.

The tree is the project's reference tree, examples/mozpuppet (its
Puppetfile of Debian's packaged backend modules at pinned versions, its front
ends in site/, its manifests/site.pp), with a test module from git added to
its Puppetfile and its manifest, and Hiera data for it.

No network but the Debian package mirror (for debootstrap and the module
packages) and PyPI (pip in the chroot) is needed: the puppet tree is cloned
from a local path on the build host, and librarian-puppet in the chroot
takes the backend modules from the packages' directories and fetches the
test module from a git daemon on 127.0.0.1 (the chroot shares the host's
network namespace; a file:// URL of the host would mean nothing in the
chroot).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE_TREE = REPO / "examples" / "mozpuppet"
# The reference Puppetfile's backend modules, as resolved into modules/:
# directory -> (metadata.json name, version).  Debian 12's packages.
REFERENCE_MODULES = {
    "apache": ("puppetlabs-apache", "5.5.0"),
    "mysql": ("puppetlabs-mysql", "8.1.0"),
    "stdlib": ("puppetlabs-stdlib", "8.5.0"),
    "concat": ("puppetlabs-concat", "7.3.1"),
    "translate": ("puppetlabs-translate", "2.2.0"),
}
MODULES_AVAILABLE = "/usr/share/puppet/modules.available"

DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
SOURCES_LIST = Path("/etc/apt/sources.list")

MODULE_NAME = "mozpuppet_test"
MODULE_FULL_NAME = f"mozagent-{MODULE_NAME}"  # librarian-puppet wants owner-name
MODULE_TAG = "v1.0.0"
MODULE_VERSION = "1.0.0"  # its metadata.json at MODULE_TAG (1.0.1 after)
TREE_TAG = "0.1.0"
RESULT_FILE = "/etc/mozpuppet-test"
TREE_MESSAGE = "from the tree's hiera data"


@dataclass
class Mirror:
    release: str
    mirror: str
    security: str


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas, current = [], {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
            continue
        if line[0] in " \t" and key:
            current[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def apt_mirror() -> Mirror:
    """The Debian mirror, release and security mirror apt uses on this host."""
    entries: list[tuple[str, list[str]]] = []
    if DEBIAN_SOURCES.exists():
        for stanza in _deb822_stanzas(DEBIAN_SOURCES.read_text()):
            if "deb" not in stanza.get("Types", "").split():
                continue
            for uri in stanza.get("URIs", "").split():
                entries.append((uri.rstrip("/"), stanza.get("Suites", "").split()))
    elif SOURCES_LIST.exists():
        for line in SOURCES_LIST.read_text().splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1].rstrip("/"), [words[2]]))
    main = next(((u, s) for u, s in entries for suite in s if "-" not in suite), None)
    if main is None:
        raise RuntimeError(f"no Debian mirror found in {DEBIAN_SOURCES} or {SOURCES_LIST}")
    mirror = main[0]
    release = next(suite for suite in main[1] if "-" not in suite)
    security = next(
        (u for u, s in entries if any(suite.endswith("-security") for suite in s)),
        mirror.rsplit("/", 1)[0] + "/debian-security",
    )
    return Mirror(release=release, mirror=mirror, security=security)


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="mozagent tests",
        GIT_AUTHOR_EMAIL="tests@mozagent.invalid",
        GIT_COMMITTER_NAME="mozagent tests",
        GIT_COMMITTER_EMAIL="tests@mozagent.invalid",
        GIT_CONFIG_NOSYSTEM="1",
        HOME=str(cwd),
    )
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=60
    )
    return out.stdout.strip()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def _module_metadata(version: str) -> str:
    return (
        f'{{"name": "{MODULE_FULL_NAME}", "version": "{version}",'
        ' "author": "mozagent", "license": "MPL-2.0", "summary": "test",'
        ' "source": "none", "dependencies": []}\n'
    )


def puppetfile(module_url: str) -> str:
    """The test module's Puppetfile entry: from git at its tag, in the syntax
    both librarian-puppet and r10k read (`:ref`; an owner-name title, of
    which r10k keeps the name for the directory).  Alone, the Puppetfile of
    the git-only tree."""
    return f"""\
# Resolved at image build time into modules/ (librarian-puppet or r10k).
mod '{MODULE_FULL_NAME}',
  :git => '{module_url}',
  :ref => '{MODULE_TAG}'
"""


def reference_puppetfile(module_url: str) -> str:
    """The reference tree's Puppetfile with the test module appended
    (librarian-puppet's: r10k knows neither `exclusion` nor `:path`)."""
    text = (REFERENCE_TREE / "Puppetfile").read_text()
    return text.rstrip("\n") + "\n\n# The image test's module.\n" + puppetfile(module_url)


def reference_site_pp() -> str:
    """The reference tree's manifest, then the test module (what the image
    test's puppet runs show); the front ends declare nothing without data."""
    text = (REFERENCE_TREE / "manifests" / "site.pp").read_text()
    return text.rstrip("\n") + f"\n\n# The image test's module.\ninclude {MODULE_NAME}\n"


def _copy_reference_tree(dest: Path) -> None:
    """examples/mozpuppet as committed: not what resolving it on this host
    may have left there."""
    shutil.copytree(
        REFERENCE_TREE,
        dest,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(
            "modules", ".tmp", ".librarian", "Puppetfile.lock", "__pycache__"
        ),
    )


@dataclass
class PuppetRepos:
    tree: Path  # the puppet tree's repository (the build clones it)
    tree_commit: str  # what TREE_TAG points to
    module_commit: str  # what MODULE_TAG of the module points to
    git_root: Path  # the git daemon's base path


def make_puppet_repos(base: Path, git_port: int, reference: bool = True) -> PuppetRepos:
    """A module repo (tag v1.0.0, version 1.0.0 in its metadata.json) and a
    puppet tree repo (tag 0.1.0) whose Puppetfile takes the module at that
    tag from git://127.0.0.1:<git_port>/.

    ``reference``: the tree is examples/mozpuppet with the module added to
    its Puppetfile and manifest (librarian-puppet resolves it, with Debian's
    puppet-module-puppetlabs-* packages installed); else a tree of the
    module alone, whose Puppetfile r10k reads too."""
    git_root = base / "git"
    module = git_root / f"{MODULE_NAME}.git"
    module.mkdir(parents=True)
    git(module, "init", "-q", "-b", "main")
    _write(
        module / "manifests" / "init.pp",
        f"""\
# Test module: writes what the run saw (facts and Hiera data).
class {MODULE_NAME} (
  String $message = 'module default',
) {{
  $tree_ref = $facts['mozpuppet_ref']
  $agent_ref = $facts['mozagent_puppet_ref']
  file {{ '{RESULT_FILE}':
    ensure  => file,
    mode    => '0644',
    content => "tree_ref=${{tree_ref}}\\nagent_ref=${{agent_ref}}\\nmessage=${{message}}\\n",
  }}
}}
""",
    )
    _write(module / "metadata.json", _module_metadata(MODULE_VERSION))
    module_commit = _commit_all(module, f"module {MODULE_TAG}")
    git(module, "tag", MODULE_TAG)
    # A later commit the Puppetfile must not pick up.
    _write(module / "manifests" / "init.pp", "class mozpuppet_test { fail('not the tag') }\n")
    _write(module / "metadata.json", _module_metadata("1.0.1"))
    _commit_all(module, f"after {MODULE_TAG}")

    tree = base / "mozpuppet"
    tree.mkdir()
    git(tree, "init", "-q", "-b", "main")
    module_url = f"git://127.0.0.1:{git_port}/{MODULE_NAME}.git"
    if reference:
        _copy_reference_tree(tree)
        _write(tree / "Puppetfile", reference_puppetfile(module_url))
        _write(tree / "manifests" / "site.pp", reference_site_pp())
    else:
        _write(tree / "Puppetfile", puppetfile(module_url))
        _write(tree / "manifests" / "site.pp", f"include {MODULE_NAME}\n")
        _write(tree / "site" / "README", "The tree's own modules.\n")
    _write(
        tree / "hiera.yaml",
        """\
---
version: 5
defaults:
  datadir: data
  data_hash: yaml_data
hierarchy:
  - name: common
    path: common.yaml
""",
    )
    _write(tree / "data" / "common.yaml", f'---\n{MODULE_NAME}::message: "{TREE_MESSAGE}"\n')
    tree_commit = _commit_all(tree, "tree 0.1.0")
    git(tree, "tag", "-a", TREE_TAG, "-m", f"release {TREE_TAG}")
    _write(tree / "manifests" / "site.pp", "fail('main, not the tag')\n")
    _commit_all(tree, "after 0.1.0")
    return PuppetRepos(
        tree=tree, tree_commit=tree_commit, module_commit=module_commit, git_root=git_root
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def git_daemon(base_path: Path, port: int, log: Path):
    """`git daemon` serving base_path read-only on 127.0.0.1:port."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--export-all",
                "--reuseaddr",
                f"--base-path={base_path}",
                "--listen=127.0.0.1",
                f"--port={port}",
                str(base_path),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"git daemon did not start: {log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point.startswith(prefix) or mount_point == prefix.rstrip("/"):
            found.append(mount_point)
    return found


@contextlib.contextmanager
def chroot_mounts(root: Path):
    """Private proc, sysfs and a tmpfs /dev with the usual nodes: nothing of
    the host is bind-mounted, so removing the tree cannot touch the host."""
    mounted: list[Path] = []

    def mount(*args: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True, timeout=30)
        mounted.append(target)

    try:
        mount("-t", "proc", "proc", target=root / "proc")
        mount("-t", "sysfs", "sysfs", target=root / "sys")
        mount("-t", "tmpfs", "-o", "mode=0755,size=16m", "mozagent-test-dev", target=root / "dev")
        for name, major, minor in (
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ):
            node = root / "dev" / name
            os.mknod(node, 0o20666, os.makedev(major, minor))
            os.chmod(node, 0o666)
        (root / "dev" / "pts").mkdir()
        (root / "dev" / "shm").mkdir()
        os.chmod(root / "dev" / "shm", 0o1777)
        os.symlink("/proc/self/fd", root / "dev" / "fd")
        mount("-t", "tmpfs", "-o", "mode=0755,size=64m", "mozagent-test-run", target=root / "run")
        yield root
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], check=False, timeout=60)
        for target in _mounts_under(root):
            subprocess.run(["umount", "-l", target], check=False, timeout=60)


def remove_tree(root: Path) -> None:
    """rm -rf, refusing while anything is still mounted below root."""
    if not root.exists():
        return
    left = _mounts_under(root)
    if left:
        raise RuntimeError(f"not removing {root}: still mounted: {left}")
    shutil.rmtree(root, ignore_errors=True)


# --- booting the image ------------------------------------------------------------


def make_boot_disk(root: Path, disk: Path) -> tuple[Path, Path]:
    """An ext4 filesystem image of the unpacked tree (mkfs.ext4 -d: no loop
    device, no device-mapper), and the image's own kernel and initramfs.

    The vm element's partitioned disk needs kpartx (device-mapper), which
    this sandbox's kernel does not offer; booting the image's kernel directly
    on its root filesystem runs the same systemd, units and agent.
    """
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeError(f"no kernel in {root / 'boot'}")
    kernel = kernels[-1]
    initrd = root / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-")
    if not initrd.exists():
        raise RuntimeError(f"no initramfs {initrd}")
    used = int(run_out(["du", "-sm", "--one-file-system", str(root)]).split()[0])
    size = used + max(512, used // 2)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "cloudimg-rootfs", "-d", str(root), str(disk), f"{size}M"],
        check=True,
        timeout=900,
    )
    boot_dir = disk.parent / "boot"
    boot_dir.mkdir(exist_ok=True)
    shutil.copy2(kernel, boot_dir / kernel.name)
    shutil.copy2(initrd, boot_dir / initrd.name)
    return boot_dir / kernel.name, boot_dir / initrd.name


def run_out(cmd: list[str], timeout: float = 600) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def boot_until(
    disk: Path,
    kernel: Path,
    initrd: Path,
    console: Path,
    markers: list[str],
    timeout: float,
    accel: str,
) -> tuple[str, bool]:
    """Boot under qemu-system-x86_64, without any network device, until the
    serial console shows every marker (True) or timeout (False); then stop
    the VM.  The journal is forwarded to the console."""
    cmd = [
        "qemu-system-x86_64",
        *(["-enable-kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg"]),
        "-m", "1536",
        "-smp", "2",
        "-nodefaults",
        "-display", "none",
        "-no-reboot",
        "-serial", f"file:{console}",
        "-nic", "none",
        "-drive", f"file={disk},format=raw,if=virtio",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append",
        # No network device: nothing would bring network-online.target up
        # but a 2-minute timeout of systemd-networkd-wait-online.
        "root=/dev/vda rw console=ttyS0,115200 panic=-1 systemd.journald.forward_to_console=1"
        " systemd.mask=systemd-networkd-wait-online.service",
    ]  # fmt: skip
    console.write_text("")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    found = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            text = console.read_text(errors="replace")
            if all(marker in text for marker in markers):
                found = True
                break
            time.sleep(1)
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=20)
    text = console.read_text(errors="replace")
    if not found and proc.returncode not in (None, 0, -15) and not text:
        raise RuntimeError(f"qemu failed ({proc.returncode}): {out.decode(errors='replace')}")
    return text, found
