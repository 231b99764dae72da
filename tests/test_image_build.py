"""A real diskimage-builder build of a mozagent image, then checks inside it.

tools/build-image builds `debian-minimal` + the Heat elements + `mozagent`
as a tar (no upload), from this host's Debian mirror, with a puppet tree from
a local git repository made here (tag 0.1.0): the reference tree
examples/mozpuppet, whose Puppetfile names Debian's packaged backend modules
(installed by the element's default DIB_MOZ_PUPPET_PACKAGES) at pinned
versions, plus a test module that the element's default resolver,
librarian-puppet, fetches from a git daemon on 127.0.0.1
(tests/test_build_image.py resolves the same Puppetfile on this host, and a
git-only one with r10k too).  The tar is unpacked and checked in a chroot:
mozagent runs, the unit is enabled, puppet and the tree at the ref with its
modules at the pinned versions are there, the front ends validate and
compile against them, and `mozagent daemon --once` applies the tree's
manifest.

It takes minutes and needs root, debootstrap and diskimage-builder:
`pytest -m image` runs it alone, `pytest -m "not image"` skips it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD_IMAGE = REPO / "tools" / "build-image"
BUILD_TIMEOUT = 2400  # seconds; a build takes about 3-5 minutes here


def _load_fixtures():
    spec = importlib.util.spec_from_file_location(
        "mozagent_image_fixtures", HERE / "image" / "fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fx = _load_fixtures()

# pytest.ini's per-test timeout would cut the build (done in the first test's setup).
pytestmark = [pytest.mark.image, pytest.mark.timeout(BUILD_TIMEOUT + 900)]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the image build needs root (debootstrap, chroot, mounts)"
    if shutil.which("debootstrap") is None:
        return "the image build needs debootstrap (apt-get install debootstrap)"
    return None


def run(cmd, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


class Image:
    """The built image, unpacked, with chroot mounts in place."""

    def __init__(
        self, root: Path, name: str, tarball: Path, repos, build_log: Path, build_seconds: float
    ):
        self.boot: tuple[Path, Path, Path] | None = None  # disk, kernel, initrd
        self.root = root
        self.name = name
        self.tarball = tarball
        self.repos = repos
        self.build_log = build_log
        self.build_seconds = build_seconds

    def chroot(self, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
        }
        return run(["chroot", str(self.root), *cmd], timeout=timeout, env=env)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


def _tail(path: Path, lines: int = 80) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(why)
    # diskimage-builder may be installed in the virtualenv running the tests.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    for tool in ("disk-image-create", "sudo", "git"):
        assert shutil.which(tool, path=path), (
            f"{tool} is not installed: the image build needs diskimage-builder "
            "(pip install diskimage-builder) and apt-get install debootstrap qemu-utils "
            "squashfs-tools kpartx sudo git"
        )
    base = tmp_path_factory.mktemp("image-build")
    mirror = fx.apt_mirror()
    port = fx.free_port()
    repos = fx.make_puppet_repos(base / "repos", port)
    out_dir = base / "out"
    build_log = base / "build.log"
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("DIB_", "MOZ_DIB_", "OS_")) or key == "ELEMENTS_PATH":
            del env[key]
    env.update(
        PATH=path,
        MOZ_DIB_DISTRO="debian",
        MOZ_DIB_RELEASE=mirror.release,
        MOZ_DIB_IMAGE_TYPE="tar",
        MOZ_DIB_IMAGE_ARCH="amd64",
        DIB_MOZ_PUPPET_REMOTE=f"file://{repos.tree}",
        DIB_MOZ_PUPPET_REF=fx.TREE_TAG,
        DIB_DISTRIBUTION_MIRROR=mirror.mirror,
        DIB_DEBIAN_SECURITY_MIRROR=mirror.security,
        DIB_DEBIAN_COMPONENTS="main",
        MOZ_DIB_LOCK_FILE=str(base / "build.lock"),
    )
    start = time.monotonic()
    with fx.git_daemon(repos.git_root, port, base / "git-daemon.log"), open(build_log, "w") as log:
        try:
            proc = subprocess.run(
                [str(BUILD_IMAGE), "--no-upload", "--output-dir", str(out_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=BUILD_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"image build timed out after {BUILD_TIMEOUT}s; log {build_log}:\n"
                + _tail(build_log)
            )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"image build failed; log {build_log}:\n" + _tail(build_log)
    last = build_log.read_text().strip().splitlines()[-1].split()
    name, tarball = last[0], Path(last[1])
    assert tarball.is_file(), f"no image at {tarball}"

    root = base / "root"
    root.mkdir()
    subprocess.run(
        ["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)], check=True, timeout=600
    )
    built = Image(root, name, tarball, repos, build_log, seconds)
    if shutil.which("qemu-system-x86_64"):
        # The pristine tree as a bootable disk, before the chroot tests touch it.
        disk = base / "vm" / "disk.raw"
        disk.parent.mkdir()
        built.boot = (disk, *fx.make_boot_disk(root, disk))
    try:
        with fx.chroot_mounts(root):
            yield built
    finally:
        fx.remove_tree(root)
        tarball.unlink(missing_ok=True)
        if built.boot:
            built.boot[0].unlink(missing_ok=True)


def test_image_name_and_build_time(image):
    assert image.name.startswith(f"debian-{fx.apt_mirror().release}.amd64-{fx.TREE_TAG}-")
    stamp = image.name.rsplit("-", 1)[1]
    assert len(stamp) == 10 and stamp.isdigit()
    print(f"image {image.name} built in {image.build_seconds:.0f}s")


def test_mozagent_runs(image):
    result = image.chroot("mozagent", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("mozagent 0.1.0")
    link = image.path("/usr/local/bin/mozagent")
    assert link.is_symlink() and os.readlink(link) == "/opt/mozagent/venv/bin/mozagent"


def test_puppet_agent_daemon_is_disabled(image):
    """mozagent runs `puppet apply`; Debian's puppet.service would look for a server
    and race the agent's runs: it is masked, so nothing (not its SysV script) starts it."""
    result = run(["systemctl", f"--root={image.root}", "is-enabled", "puppet.service"])
    assert result.stdout.strip() == "masked", result.stdout + result.stderr


def test_unit_installed_and_enabled(image):
    unit = image.path("/etc/systemd/system/mozagent.service")
    assert unit.read_text() == (REPO / "systemd" / "mozagent.service").read_text()
    result = run(["systemctl", f"--root={image.root}", "is-enabled", "mozagent.service"])
    assert result.stdout.strip() == "enabled", result.stdout + result.stderr
    assert image.path("/etc/systemd/system/multi-user.target.wants/mozagent.service").is_symlink()


def test_unit_verifies(image):
    result = image.chroot("systemd-analyze", "verify", "/etc/systemd/system/mozagent.service")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mozagent.service" not in result.stderr, result.stderr


def test_puppet_git_and_both_resolvers_installed(image):
    for cmd in (
        ("puppet", "--version"),
        ("git", "--version"),
        ("librarian-puppet", "version"),
        ("r10k", "version"),
    ):
        result = image.chroot(*cmd)
        assert result.returncode == 0, f"{cmd}: {result.stderr}"


def test_puppet_tree_at_the_requested_ref(image):
    tree = image.path("/opt/mozpuppet")
    assert (tree / ".mozpuppet-ref").read_text().strip() == fx.TREE_TAG
    assert (tree / ".mozpuppet-commit").read_text().strip() == image.repos.tree_commit
    head = image.chroot("git", "-C", "/opt/mozpuppet", "rev-parse", "HEAD")
    assert head.stdout.strip() == image.repos.tree_commit, head.stderr
    assert "fail(" not in (tree / "manifests" / "site.pp").read_text()
    # The ref as a fact.
    facts = image.path("/etc/facter/facts.d/mozpuppet.txt").read_text()
    assert f"mozpuppet_ref={fx.TREE_TAG}\n" in facts


def test_puppetfile_resolved_by_librarian_puppet_at_the_pin(image):
    """The default resolver, librarian-puppet, put the backend module in the
    baked tree at its tag and version, and Puppetfile.lock records both."""
    tree = image.path("/opt/mozpuppet")
    log = image.build_log.read_text(errors="replace")
    assert "with librarian-puppet v" in log
    module = tree / "modules" / fx.MODULE_NAME
    assert (module / "manifests" / "init.pp").is_file()
    assert "fail(" not in (module / "manifests" / "init.pp").read_text()
    metadata = json.loads((module / "metadata.json").read_text())
    assert (metadata["name"], metadata["version"]) == (fx.MODULE_FULL_NAME, fx.MODULE_VERSION)
    mod_head = image.chroot(
        "git", "-C", f"/opt/mozpuppet/modules/{fx.MODULE_NAME}", "rev-parse", "HEAD"
    )
    assert mod_head.stdout.strip() == image.repos.module_commit, mod_head.stderr
    # The lock: the source, the ref asked for, the commit it was, the version.
    lock = (tree / "Puppetfile.lock").read_text()
    lines = [line.strip() for line in lock.splitlines()]
    assert f"ref: {fx.MODULE_TAG}" in lines, lock
    assert f"sha: {image.repos.module_commit}" in lines, lock
    assert f"{fx.MODULE_FULL_NAME} ({fx.MODULE_VERSION})" in lines, lock
    assert any(
        line.startswith("remote: git://127.0.0.1:") and line.endswith(f"/{fx.MODULE_NAME}.git")
        for line in lines
    ), lock
    # No build leftovers: librarian-puppet's cache and settings, r10k's cache,
    # the resolver's HOME; `git status` of the baked tree is about the tree.
    for leftover in (".tmp", ".librarian"):
        assert not (tree / leftover).exists(), leftover
    assert not image.path("/root/.r10k").exists()
    assert not list(image.path("/tmp").glob("mozagent-resolver.*"))
    status = image.chroot("git", "-C", "/opt/mozpuppet", "status", "--porcelain", "--ignored")
    assert status.returncode == 0, status.stderr
    assert sorted(status.stdout.splitlines()) == [
        "!! .mozpuppet-commit",
        "!! .mozpuppet-ref",
        "!! Puppetfile.lock",
        "!! modules/",
    ], status.stdout


PUPPET_PACKAGES = ("puppet-module-puppetlabs-apache", "puppet-module-puppetlabs-mysql")


def test_puppet_module_packages_installed(image):
    """DIB_MOZ_PUPPET_PACKAGES' default, and what they depend on: the
    packages the reference Puppetfile's :path sources come from."""
    log = image.build_log.read_text(errors="replace")
    assert f"mozagent: installing puppet module packages: {' '.join(PUPPET_PACKAGES)}" in log
    names = [f"puppet-module-{name}" for name, _ in fx.REFERENCE_MODULES.values()]
    result = image.chroot(
        "dpkg-query", "-W", "-f", "${db:Status-Status} ${binary:Package} ${Version}\n", *names
    )
    assert result.returncode == 0, result.stderr
    versions = {}
    for line in result.stdout.splitlines():
        status, package, version = line.split()
        assert status == "installed", line
        versions[package] = version
    for name, version in fx.REFERENCE_MODULES.values():
        assert versions[f"puppet-module-{name}"].startswith(f"{version}-"), versions
        assert image.path(f"{fx.MODULES_AVAILABLE}/{name}/metadata.json").is_file()


def test_reference_puppetfile_resolved_at_its_pins(image):
    """The reference tree's backend modules, from Debian's packages, in
    modules/ at the Puppetfile's versions (copies, not links into the
    packages), and Puppetfile.lock recording each with its source."""
    tree = image.path("/opt/mozpuppet")
    lock = (tree / "Puppetfile.lock").read_text()
    lines = [line.strip() for line in lock.splitlines()]
    for directory, (name, version) in fx.REFERENCE_MODULES.items():
        module = tree / "modules" / directory
        assert module.is_dir() and not module.is_symlink(), module
        metadata = json.loads((module / "metadata.json").read_text())
        assert (metadata["name"], metadata["version"]) == (name, version)
        assert f"remote: {fx.MODULES_AVAILABLE}/{name}" in lines, lock
        assert f"{name} ({version})" in lines, lock
        assert f"{name} (= {version})" in lines, lock  # the pin, under DEPENDENCIES
    # The baked tree is the reference one.
    for path in ("Puppetfile", "site/mozpuppet/metadata.json"):
        reference = (fx.REFERENCE_TREE / path).read_text().rstrip("\n")
        assert reference in (tree / path).read_text(), path
    assert sorted(p.name for p in (tree / "modules").iterdir()) == sorted(
        [*fx.REFERENCE_MODULES, fx.MODULE_NAME]
    )


def _front_end_manifests(image) -> list[str]:
    site = image.path("/opt/mozpuppet/site/mozpuppet/manifests")
    found = sorted("/" + str(p.relative_to(image.root)) for p in site.rglob("*.pp"))
    assert len(found) >= 4, found  # apache, apache/python_vhost, mysql, mysql/database
    return found


def test_front_ends_validate_in_the_image(image):
    """`puppet parser validate` of the baked front ends and root manifest,
    with the image's puppet."""
    manifests = [*_front_end_manifests(image), "/opt/mozpuppet/manifests/site.pp"]
    result = image.chroot("puppet", "parser", "validate", "--color=false", *manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Error" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_front_ends_compile_against_the_baked_modules(image):
    """A catalog of one of each front end, compiled (not applied) by the
    image's puppet with the baked modulepath: the front ends and the backend
    modules at their pinned versions work together."""
    manifest = image.path("/tmp/mozagent-test-front-ends.pp")
    vardir = image.path("/tmp/mozagent-test-compile")
    manifest.write_text(
        "mozpuppet::apache::python_vhost { 'webapp.example.test': app => 'webapp' }\n"
        "mozpuppet::mysql::database { 'webapp': user => 'webapp' }\n"
    )
    try:
        result = image.chroot(
            "puppet",
            "catalog",
            "find",
            "mozagent-test",
            "--terminus=compiler",
            "--render-as=json",
            "--color=false",
            "--modulepath=/opt/mozpuppet/site:/opt/mozpuppet/modules",
            "--manifest=/tmp/mozagent-test-front-ends.pp",
            "--vardir=/tmp/mozagent-test-compile",
            timeout=600,
        )
    finally:
        manifest.unlink(missing_ok=True)
        shutil.rmtree(vardir, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # A notice line ("Compiled catalog ...") comes before the JSON.
    text = result.stdout
    start = 0 if text.startswith("{") else text.index("\n{") + 1
    catalog = json.loads(text[start:])
    resources = {f"{r['type']}[{r['title']}]" for r in catalog["resources"]}
    for resource in (
        "Apache::Vhost[webapp.example.test]",
        "Class[Apache::Mod::Wsgi]",
        "Mysql_database[webapp]",
        "Mysql_user[webapp@localhost]",
        "Mysql_grant[webapp@localhost/webapp.*]",
        "Class[Mysql::Server]",
    ):
        assert resource in resources, sorted(resources)


def test_default_config_is_valid_for_the_agent(image):
    code = (
        "import json; from mozagent.config import load_config\n"
        "c = load_config('/etc/mozagent/mozagent.yaml')\n"
        "print(json.dumps({'manifests': list(c.puppet.manifests),"
        " 'modulepath': list(c.puppet.modulepath), 'ref': c.puppet.tree_ref_file,"
        " 'zk': c.zookeeper is not None}))"
    )
    result = image.chroot("/opt/mozagent/venv/bin/python", "-c", code)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["manifests"] == ["/opt/mozpuppet/manifests/site.pp"]
    assert config["modulepath"] == ["/opt/mozpuppet/site", "/opt/mozpuppet/modules"]
    assert config["ref"] == "/opt/mozpuppet/.mozpuppet-ref"
    assert config["zk"] is False
    assert image.path("/etc/mozagent/manifests/site.pp").is_file()


def test_plain_puppet_apply_with_the_baked_tree(image):
    """The element alone: the tree, its module, facts and Hiera work together."""
    image.path(fx.RESULT_FILE).unlink(missing_ok=True)
    result = image.chroot(
        "puppet",
        "apply",
        "--detailed-exitcodes",
        "--modulepath=/opt/mozpuppet/site:/opt/mozpuppet/modules",
        "/opt/mozpuppet/manifests/site.pp",
        timeout=600,
    )
    assert result.returncode in (0, 2), result.stdout + result.stderr
    text = image.path(fx.RESULT_FILE).read_text()
    assert f"tree_ref={fx.TREE_TAG}\n" in text
    assert f"message={fx.TREE_MESSAGE}\n" in text


def test_daemon_once_applies_the_manifest(image):
    image.path(fx.RESULT_FILE).unlink(missing_ok=True)
    result = image.chroot("mozagent", "daemon", "--once", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    text = image.path(fx.RESULT_FILE).read_text()
    assert f"tree_ref={fx.TREE_TAG}\n" in text
    assert f"message={fx.TREE_MESSAGE}\n" in text
    # The agent's own facts carry the baked ref too.
    assert f"agent_ref={fx.TREE_TAG}\n" in text
    status = image.chroot("mozagent", "status")
    assert status.returncode == 0, status.stderr
    assert fx.TREE_TAG in status.stdout


BOOT_TIMEOUT = 600  # seconds; about a minute under TCG here


def test_mozagent_starts_at_boot(image):
    """Boot the image (its kernel, initramfs and root filesystem) under qemu:
    systemd starts mozagent (READY=1 reached systemd: "Started"), and the
    agent applies the baked tree's manifest; the journal goes to the serial
    console.  TCG unless MOZAGENT_TEST_QEMU_ACCEL=kvm (nested KVM hangs here)."""
    if image.boot is None:
        pytest.skip("the boot test needs qemu-system-x86_64 (apt-get install qemu-system-x86)")
    disk, kernel, initrd = image.boot
    console = disk.parent / "console.log"
    text, done = fx.boot_until(
        disk,
        kernel,
        initrd,
        console,
        markers=["Started mozagent.service", "apply_finished"],
        timeout=BOOT_TIMEOUT,
        accel=os.environ.get("MOZAGENT_TEST_QEMU_ACCEL", "tcg"),
    )
    assert done, f"no mozagent start in {BOOT_TIMEOUT}s; console {console}:\n" + _tail(console)
    agent = [line for line in text.splitlines() if "mozagent[" in line]
    started = next(line for line in agent if '"event": "started"' in line)
    assert f'"puppet_ref": "{fx.TREE_TAG}"' in started
    finished = next(line for line in agent if "apply_finished" in line)
    assert '"ok": true' in finished, finished
    # Delegate=yes gave the agent its subtree: each run in a cgroup of its own.
    held = next(line for line in agent if '"event": "containment"' in line)
    assert "a cgroup per run under /sys/fs/cgroup/system.slice/mozagent.service" in held, held
    assert "(pids.max 4096)" in held, held  # the delegated pids controller caps each run
    assert "Failed to start mozagent.service" not in text
    assert "Started puppet.service" not in text
