"""tools/build-image without building anything: environment and argument
handling, image naming, the element list, the lock, and the Glance upload
path (tools/glance-upload.py against a stand-in for openstacksdk).

No network, no root, no diskimage-builder: a fake disk-image-create records
how it was called and writes the image file.
"""

from __future__ import annotations

import calendar
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.image import fixtures as fx
from tests.image.fake_dib import write_fake_dib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD_IMAGE = REPO / "tools" / "build-image"
UPLOADER = REPO / "tools" / "glance-upload.py"
FAKE_OPENSTACK = HERE / "image" / "fake_openstack"
ELEMENT = REPO / "elements" / "mozagent"
UNIT = REPO / "systemd" / "mozagent.service"

# 2014-07-30 16:25 UTC, the blueprint's example build time.
BLUEPRINT_EPOCH = calendar.timegm((2014, 7, 30, 16, 25, 0))

# Records its arguments and environment, writes <-o>.<-t>.
FAKE_DIB_BODY = """python3 - "$FAKE_DIB_LOG" "${args[@]}" <<'PY'
import json, os, sys
log, args = sys.argv[1], sys.argv[2:]
keys = [k for k in os.environ if k.startswith(("DIB_", "ELEMENTS_PATH", "OS_"))]
with open(log, "a") as f:
    f.write(json.dumps({"args": args, "env": {k: os.environ[k] for k in keys}}) + "\\n")
PY
printf 'image data for %s\\n' "$(basename "$out")" > "$out.$type"
"""

RC_FILE = """\
# keystone rc file
export OS_AUTH_URL=https://keystone.example.invalid:5000/v3
export OS_USERNAME=builder
export OS_PASSWORD=secret
export OS_PROJECT_NAME=images
export OS_USER_DOMAIN_NAME=Default
export OS_PROJECT_DOMAIN_NAME=Default
"""


class Env:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.out = tmp_path / "out"
        self.dib_log = tmp_path / "dib.log"
        self.glance_state = tmp_path / "glance.json"
        self.lock = tmp_path / "build.lock"
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        write_fake_dib(bin_dir / "disk-image-create", FAKE_DIB_BODY)
        self.bin = bin_dir
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                (
                    "MOZ_",
                    "DIB_",
                    "OS_",
                    "SOURCE_DATE_EPOCH",
                    "ELEMENTS_PATH",
                    "FAKE_GLANCE",
                    "PYTHONPATH",
                )
            )
        }
        base.update(
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            MOZ_DIB_DISTRO="debian",
            MOZ_DIB_RELEASE="bookworm",
            DIB_MOZ_PUPPET_REF="0.1.0",
            DIB_MOZ_PUPPET_REMOTE="https://git.example.invalid/mozpuppet.git",
            MOZ_DIB_OUTPUT_DIR=str(self.out),
            MOZ_DIB_LOCK_FILE=str(self.lock),
            FAKE_DIB_LOG=str(self.dib_log),
            FAKE_GLANCE_STATE=str(self.glance_state),
            MOZ_GLANCE_PYTHON=sys.executable,
            SOURCE_DATE_EPOCH=str(BLUEPRINT_EPOCH),
        )
        self.base = base

    def run(self, *args: str, unset=(), **overrides) -> subprocess.CompletedProcess:
        env = dict(self.base)
        for key in unset:
            env.pop(key, None)
        env.update({k: str(v) for k, v in overrides.items()})
        return subprocess.run(
            [str(BUILD_IMAGE), *args], env=env, capture_output=True, text=True, timeout=60
        )

    def dib_calls(self) -> list[dict]:
        if not self.dib_log.exists():
            return []
        return [json.loads(line) for line in self.dib_log.read_text().splitlines()]

    def glance(self) -> dict:
        if not self.glance_state.exists():
            return {"images": [], "connects": [], "creates": [], "deletes": []}
        return json.loads(self.glance_state.read_text())

    def with_fake_sdk(self) -> dict:
        return {"PYTHONPATH": str(FAKE_OPENSTACK)}


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def dry(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    fields = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(": ")
        fields[key] = value
    return fields


# --- required settings ------------------------------------------------------------


@pytest.mark.parametrize("missing", ["MOZ_DIB_DISTRO", "MOZ_DIB_RELEASE"])
def test_distro_and_release_are_required(env, missing):
    result = env.run("--no-upload", unset=[missing])
    assert result.returncode == 2
    assert f"{missing} is not set" in result.stderr
    assert env.dib_calls() == []


def test_empty_distro_is_missing(env):
    result = env.run("--dry-run", "--no-upload", MOZ_DIB_DISTRO="")
    assert result.returncode == 2
    assert "MOZ_DIB_DISTRO is not set" in result.stderr


def test_puppet_remote_is_required(env):
    result = env.run("--no-upload", unset=["DIB_MOZ_PUPPET_REMOTE"])
    assert result.returncode == 2
    assert "DIB_MOZ_PUPPET_REMOTE is not set" in result.stderr


@pytest.mark.parametrize(
    "key,value",
    [
        ("MOZ_DIB_DISTRO", "ubu ntu"),
        ("MOZ_DIB_RELEASE", "../x"),
        ("MOZ_DIB_IMAGE_ARCH", "amd64;rm"),
        ("MOZ_DIB_IMAGE_TYPE", "iso"),
        ("SOURCE_DATE_EPOCH", "yesterday"),
    ],
)
def test_bad_values_are_refused(env, key, value):
    result = env.run("--dry-run", "--no-upload", **{key: value})
    assert result.returncode == 2
    assert key in result.stderr


def test_unknown_argument(env):
    result = env.run("--upload-twice")
    assert result.returncode == 2
    assert "unknown argument: --upload-twice" in result.stderr


def test_help(env):
    result = env.run("--help", unset=["MOZ_DIB_DISTRO", "MOZ_DIB_RELEASE"])
    assert result.returncode == 0
    for name in (
        "MOZ_DIB_DISTRO",
        "MOZ_DIB_RELEASE",
        "DIB_MOZ_PUPPET_REF",
        "DIB_MOZ_PUPPET_RESOLVER",
        "DIB_MOZ_PUPPET_PACKAGES",
        "MOZ_DIB_ELEMENTS",
        "MOZ_DIB_IMAGE_ARCH",
        "MOZ_DIB_IMAGE_TYPE",
        "MOZ_KEYSTONE_PROFILE_PATH",
        "--no-upload",
    ):
        assert name in result.stdout


# --- naming -------------------------------------------------------------------------


def test_blueprint_name(env):
    fields = dry(
        env.run("--dry-run", "--no-upload", MOZ_DIB_DISTRO="ubuntu", MOZ_DIB_RELEASE="trusty")
    )
    assert fields["name"] == "ubuntu-trusty.amd64-0.1.0-2014073016"
    assert fields["output"] == f"{env.out}/ubuntu-trusty.amd64-0.1.0-2014073016.qcow2"


def test_name_uses_utc_hour_of_now_by_default(env):
    fields = dry(env.run("--dry-run", "--no-upload", unset=["SOURCE_DATE_EPOCH"], TZ="Asia/Tokyo"))
    now = subprocess.run(["date", "-u", "+%Y%m%d%H"], capture_output=True, text=True).stdout.strip()
    before = fields["name"].rsplit("-", 1)[1]
    assert before <= now and len(before) == 10  # the hour may tick over in between


def test_name_with_arch_type_and_a_branch_ref(env):
    fields = dry(
        env.run(
            "--dry-run",
            "--no-upload",
            MOZ_DIB_IMAGE_ARCH="arm64",
            MOZ_DIB_IMAGE_TYPE="raw",
            DIB_MOZ_PUPPET_REF="release/1.2",
        )
    )
    assert fields["name"] == "debian-bookworm.arm64-release_1.2-2014073016"
    assert fields["output"].endswith(".raw")
    assert "-a arm64 -t raw " in fields["command"]


def test_default_ref_is_master(env):
    fields = dry(env.run("--dry-run", "--no-upload", unset=["DIB_MOZ_PUPPET_REF"]))
    assert fields["name"] == "debian-bookworm.amd64-master-2014073016"


def test_second_build_in_the_same_hour_does_not_overwrite(env):
    first = env.run("--no-upload")
    assert first.returncode == 0, first.stderr
    name = "debian-bookworm.amd64-0.1.0-2014073016"
    image = env.out / f"{name}.qcow2"
    assert first.stdout.split() == [name, str(image)]
    image.write_text("the first build\n")

    second = env.run("--no-upload", SOURCE_DATE_EPOCH=BLUEPRINT_EPOCH + 1800)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[0] == f"{name}-2"
    assert image.read_text() == "the first build\n"
    assert (env.out / f"{name}-2.qcow2").is_file()

    third = env.run("--no-upload")
    assert third.stdout.split()[0] == f"{name}-3"
    # dry-run sees the same
    assert dry(env.run("--dry-run", "--no-upload"))["name"] == f"{name}-4"
    assert [c["args"][5] for c in env.dib_calls()] == [
        f"{env.out}/{name}",
        f"{env.out}/{name}-2",
        f"{env.out}/{name}-3",
    ]


def test_next_hour_starts_over(env):
    assert env.run("--no-upload").returncode == 0
    result = env.run("--no-upload", SOURCE_DATE_EPOCH=BLUEPRINT_EPOCH + 3600)
    assert result.stdout.split()[0] == "debian-bookworm.amd64-0.1.0-2014073017"


# --- elements -------------------------------------------------------------------------


def test_default_elements_for_a_disk_image(env):
    fields = dry(env.run("--dry-run", "--no-upload"))
    assert fields["elements"] == "debian-minimal cloud-init cloud-init-datasources vm mozagent"


def test_extra_elements_are_added_once_in_order(env):
    fields = dry(
        env.run(
            "--dry-run",
            "--no-upload",
            MOZ_DIB_DISTRO="ubuntu",
            MOZ_DIB_RELEASE="noble",
            MOZ_DIB_ELEMENTS="openssh-server,growroot  vm mozagent my-element",
        )
    )
    assert fields["elements"] == (
        "ubuntu-minimal cloud-init cloud-init-datasources vm mozagent "
        "openssh-server growroot my-element"
    )


def test_tar_image_has_no_vm_element(env):
    fields = dry(env.run("--dry-run", "--no-upload", MOZ_DIB_IMAGE_TYPE="tar"))
    assert fields["elements"] == "debian-minimal cloud-init cloud-init-datasources mozagent"


def test_distro_and_heat_elements_can_be_overridden(env):
    fields = dry(
        env.run(
            "--dry-run", "--no-upload", MOZ_DIB_DISTRO_ELEMENT="debian", MOZ_DIB_HEAT_ELEMENTS=""
        )
    )
    assert fields["elements"] == "debian vm mozagent"
    fields = dry(
        env.run("--dry-run", "--no-upload", MOZ_DIB_DISTRO="centos", MOZ_DIB_RELEASE="9-stream")
    )
    assert fields["elements"].split()[0] == "centos"


# --- the build ------------------------------------------------------------------------


def test_build_without_upload_needs_no_credentials(env):
    result = env.run("--no-upload", **env.with_fake_sdk())
    assert result.returncode == 0, result.stderr
    [call] = env.dib_calls()
    name = "debian-bookworm.amd64-0.1.0-2014073016"
    assert call["args"] == [
        "-a",
        "amd64",
        "-t",
        "qcow2",
        "-o",
        f"{env.out}/{name}",
        "debian-minimal",
        "cloud-init",
        "cloud-init-datasources",
        "vm",
        "mozagent",
    ]
    dib_env = call["env"]
    assert dib_env["DIB_RELEASE"] == "bookworm"
    assert dib_env["DIB_MOZ_PUPPET_REF"] == "0.1.0"
    assert dib_env["DIB_MOZ_PUPPET_REMOTE"] == "https://git.example.invalid/mozpuppet.git"
    assert dib_env["DIB_MOZAGENT_SOURCE"] == str(REPO)
    assert dib_env["ELEMENTS_PATH"].split(":")[0] == str(REPO / "elements")
    assert dib_env["DIB_CLOUD_INIT_DATASOURCES"] == "ConfigDrive, OpenStack"
    assert dib_env["DIB_MOZ_PUPPET_RESOLVER"] == "librarian-puppet"
    assert dib_env["DIB_MOZ_PUPPET_PACKAGES"] == (
        "puppet-module-puppetlabs-apache puppet-module-puppetlabs-mysql"
    )
    assert not any(k.startswith("OS_") for k in dib_env)
    assert env.glance() == {"images": [], "connects": [], "creates": [], "deletes": []}


def test_dib_settings_pass_through(env):
    result = env.run(
        "--no-upload",
        ELEMENTS_PATH="/srv/elements",
        DIB_DISTRIBUTION_MIRROR="http://mirror.example.invalid/debian",
        DIB_MOZAGENT_WHEEL="/tmp/mozagent-0.1.0-py3-none-any.whl",
    )
    assert result.returncode == 0, result.stderr
    [call] = env.dib_calls()
    assert call["env"]["ELEMENTS_PATH"] == f"{REPO / 'elements'}:/srv/elements"
    assert call["env"]["DIB_DISTRIBUTION_MIRROR"] == "http://mirror.example.invalid/debian"
    assert call["env"]["DIB_MOZAGENT_WHEEL"] == "/tmp/mozagent-0.1.0-py3-none-any.whl"


def test_failed_build(env, tmp_path):
    failing = tmp_path / "bin" / "disk-image-create"
    failing.write_text("#!/bin/sh\necho 'debootstrap failed' >&2\nexit 1\n")
    result = env.run("--no-upload")
    assert result.returncode == 1
    assert "diskimage-builder failed" in result.stderr


def test_relative_output_dir(env, tmp_path):
    result = subprocess.run(
        [str(BUILD_IMAGE), "--no-upload", "--output-dir", "images"],
        env=env.base,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    name = "debian-bookworm.amd64-0.1.0-2014073016"
    assert result.stdout.split() == [name, f"{tmp_path}/images/{name}.qcow2"]
    assert env.dib_calls()[0]["args"][5] == f"{tmp_path}/images/{name}"


def test_missing_diskimage_builder(env):
    result = env.run("--no-upload", MOZ_DIB_DISK_IMAGE_CREATE="no-such-disk-image-create")
    assert result.returncode == 2
    assert "pip install diskimage-builder" in result.stderr


def test_one_build_at_a_time(env):
    with open(env.lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = env.run("--no-upload")
    assert result.returncode == 75
    assert "another image build holds" in result.stderr
    assert env.dib_calls() == []
    assert env.run("--no-upload").returncode == 0  # released


# --- the Puppetfile resolver --------------------------------------------------------

ELEMENT_ENV = ELEMENT / "environment.d" / "90-mozagent.bash"


def element_env(**settings) -> subprocess.CompletedProcess:
    """The element's environment.d sourced as diskimage-builder does (bash),
    in an environment of ``settings`` only; prints the resolver it chose."""
    env = {"PATH": os.environ["PATH"], "DIB_MOZ_PUPPET_REMOTE": "file:///srv/mozpuppet"}
    env.update({k: str(v) for k, v in settings.items()})
    return subprocess.run(
        ["bash", "-c", '. "$1" && printf "%s\\n" "$DIB_MOZ_PUPPET_RESOLVER"', "env", ELEMENT_ENV],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "settings,resolver,warning",
    [
        ({}, "librarian-puppet", None),
        ({"DIB_MOZ_PUPPET_RESOLVER": "librarian-puppet"}, "librarian-puppet", None),
        ({"DIB_MOZ_PUPPET_RESOLVER": "r10k"}, "r10k", None),
        ({"DIB_MOZ_PUPPET_RESOLVER": "none"}, "none", None),
        # The deprecated alias, when the resolver is not set.
        ({"DIB_MOZ_PUPPET_R10K": "0"}, "none", "DIB_MOZ_PUPPET_R10K is deprecated"),
        ({"DIB_MOZ_PUPPET_R10K": "1"}, "r10k", "DIB_MOZ_PUPPET_R10K is deprecated"),
        ({"DIB_MOZ_PUPPET_R10K": ""}, "librarian-puppet", None),
        # Both set: the resolver wins, a contradiction is said.
        ({"DIB_MOZ_PUPPET_RESOLVER": "none", "DIB_MOZ_PUPPET_R10K": "0"}, "none", None),
        ({"DIB_MOZ_PUPPET_RESOLVER": "r10k", "DIB_MOZ_PUPPET_R10K": "1"}, "r10k", None),
        (
            {"DIB_MOZ_PUPPET_RESOLVER": "librarian-puppet", "DIB_MOZ_PUPPET_R10K": "0"},
            "librarian-puppet",
            "DIB_MOZ_PUPPET_R10K=0 (deprecated) is ignored",
        ),
    ],
)
def test_element_chooses_the_resolver(settings, resolver, warning):
    result = element_env(**settings)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [resolver]
    if warning:
        assert warning in result.stderr
    else:
        assert result.stderr == ""
    # Sourced again (diskimage-builder does, with what the first one
    # exported): the same choice, and the alias's warning not repeated.
    again = element_env(**{**settings, "DIB_MOZ_PUPPET_RESOLVER": resolver})
    assert again.stdout.splitlines() == [resolver]
    assert again.stderr == (result.stderr if "DIB_MOZ_PUPPET_RESOLVER" in settings else "")


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            {"DIB_MOZ_PUPPET_RESOLVER": "librarian"},
            "DIB_MOZ_PUPPET_RESOLVER=librarian is not one of librarian-puppet, r10k, none",
        ),
        (
            {"DIB_MOZ_PUPPET_RESOLVER": "R10K"},
            "DIB_MOZ_PUPPET_RESOLVER=R10K is not one of librarian-puppet, r10k, none",
        ),
        ({"DIB_MOZ_PUPPET_R10K": "yes"}, "DIB_MOZ_PUPPET_R10K=yes is neither 0 nor 1"),
    ],
)
def test_element_refuses_an_unknown_resolver(settings, message):
    result = element_env(**settings)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "ERROR: mozagent element:" in result.stderr and message in result.stderr


def test_build_refuses_an_unknown_resolver_before_building(env):
    result = env.run("--no-upload", DIB_MOZ_PUPPET_RESOLVER="librarian")
    assert result.returncode == 2
    assert "DIB_MOZ_PUPPET_RESOLVER=librarian is not one of" in result.stderr
    assert "the mozagent element refused its settings" in result.stderr
    assert env.dib_calls() == []
    dry_run = env.run("--dry-run", "--no-upload", DIB_MOZ_PUPPET_R10K="2")
    assert dry_run.returncode == 2 and "DIB_MOZ_PUPPET_R10K=2" in dry_run.stderr


@pytest.mark.parametrize(
    "settings,resolver",
    [
        ({}, "librarian-puppet"),
        ({"DIB_MOZ_PUPPET_RESOLVER": "r10k"}, "r10k"),
        ({"DIB_MOZ_PUPPET_R10K": "0"}, "none"),
        ({"DIB_MOZ_PUPPET_R10K": "1"}, "r10k"),
    ],
)
def test_build_passes_the_resolver_it_chose(env, settings, resolver):
    fields = dry(env.run("--dry-run", "--no-upload", **settings))
    assert fields["puppet resolver"] == resolver
    assert f"DIB_MOZ_PUPPET_RESOLVER={resolver} " in fields["env"]
    result = env.run("--no-upload", **settings)
    assert result.returncode == 0, result.stderr
    [call] = env.dib_calls()
    assert call["env"]["DIB_MOZ_PUPPET_RESOLVER"] == resolver
    if "DIB_MOZ_PUPPET_R10K" in settings:
        assert "deprecated" in result.stderr


@pytest.mark.parametrize(
    "resolver,command,reference",
    [
        ("librarian-puppet", ["librarian-puppet", "install", "--path", "modules"], True),
        ("librarian-puppet", ["librarian-puppet", "install", "--path", "modules"], False),
        (
            "r10k",
            ["r10k", "puppetfile", "install", "--puppetfile=Puppetfile", "--moduledir=modules"],
            False,
        ),
    ],
    ids=["librarian-puppet-reference-tree", "librarian-puppet-git-only", "r10k-git-only"],
)
def test_resolvers_read_the_image_test_puppetfile(tmp_path, resolver, command, reference):
    """The real image build's fixture Puppetfile (tests/image/fixtures.py),
    resolved here as the element would: the reference tree's (Debian's
    packaged backend modules at their pins, and the test module from git) by
    librarian-puppet, which the build itself runs; the git-only one by both
    resolvers the element offers (r10k reads no `exclusion` nor `:path`).
    The test module at its tag, not the later commit."""
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed")
    if reference:
        missing = [
            name
            for name, _ in fx.REFERENCE_MODULES.values()
            if not (Path(fx.MODULES_AVAILABLE) / name / "metadata.json").is_file()
        ]
        if missing:
            pytest.skip(
                f"the reference Puppetfile needs {', '.join(missing)} in "
                f"{fx.MODULES_AVAILABLE} (apt-get install puppet-module-puppetlabs-apache "
                "puppet-module-puppetlabs-mysql)"
            )
    port = fx.free_port()
    repos = fx.make_puppet_repos(tmp_path / "repos", port, reference=reference)
    tree = tmp_path / "tree"
    fx.git(tmp_path, "clone", "-q", "--branch", fx.TREE_TAG, str(repos.tree), str(tree))
    home = tmp_path / "home"
    home.mkdir()
    run_env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    with fx.git_daemon(repos.git_root, port, tmp_path / "git-daemon.log"):
        result = subprocess.run(
            command, cwd=tree, env=run_env, capture_output=True, text=True, timeout=240
        )
    assert result.returncode == 0, result.stdout + result.stderr
    module = tree / "modules" / fx.MODULE_NAME
    assert "fail(" not in (module / "manifests" / "init.pp").read_text()
    assert json.loads((module / "metadata.json").read_text())["version"] == fx.MODULE_VERSION
    head = fx.git(module, "rev-parse", "HEAD")
    assert head == repos.module_commit
    if resolver == "librarian-puppet":
        lock = [line.strip() for line in (tree / "Puppetfile.lock").read_text().splitlines()]
        assert f"sha: {repos.module_commit}" in lock
        assert f"{fx.MODULE_FULL_NAME} ({fx.MODULE_VERSION})" in lock
    if reference:
        for directory, (name, version) in fx.REFERENCE_MODULES.items():
            metadata = json.loads((tree / "modules" / directory / "metadata.json").read_text())
            assert (metadata["name"], metadata["version"]) == (name, version)
            assert f"{name} ({version})" in lock
            assert f"remote: {fx.MODULES_AVAILABLE}/{name}" in lock
        # The tree is the reference one: its front ends and manifest.
        assert (tree / "site" / "mozpuppet" / "manifests" / "apache" / "python_vhost.pp").is_file()
        site_pp = (tree / "manifests" / "site.pp").read_text()
        assert (fx.REFERENCE_TREE / "manifests" / "site.pp").read_text() in site_pp
        assert site_pp.rstrip().endswith(f"include {fx.MODULE_NAME}")


# --- the puppet module packages -----------------------------------------------------

DEFAULT_PUPPET_PACKAGES = "puppet-module-puppetlabs-apache puppet-module-puppetlabs-mysql"
PACKAGES_HOOK = ELEMENT / "install.d" / "54-mozagent-puppet-packages"


def element_packages(**settings) -> subprocess.CompletedProcess:
    """environment.d sourced under ``set -euo pipefail`` (as diskimage-builder
    does) with ``settings`` only; prints DIB_MOZ_PUPPET_PACKAGES in brackets."""
    env = {"PATH": os.environ["PATH"], "DIB_MOZ_PUPPET_REMOTE": "file:///srv/mozpuppet"}
    env.update({k: str(v) for k, v in settings.items()})
    script = 'set -euo pipefail; . "$1"; printf "[%s]\\n" "$DIB_MOZ_PUPPET_PACKAGES"'
    return subprocess.run(
        ["bash", "-c", script, "env", ELEMENT_ENV],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "settings,packages",
    [
        ({}, DEFAULT_PUPPET_PACKAGES),
        # Set but empty (or blank): none.
        ({"DIB_MOZ_PUPPET_PACKAGES": ""}, ""),
        ({"DIB_MOZ_PUPPET_PACKAGES": " \t\n "}, ""),
        (
            {"DIB_MOZ_PUPPET_PACKAGES": "puppet-module-puppetlabs-apache"},
            "puppet-module-puppetlabs-apache",
        ),
        # Any whitespace between names, newlines included; one space after.
        (
            {"DIB_MOZ_PUPPET_PACKAGES": "  puppet-module-puppetlabs-ntp\n\tlibstdc++6 g++-12 0ad "},
            "puppet-module-puppetlabs-ntp libstdc++6 g++-12 0ad",
        ),
    ],
    ids=["default", "empty", "blank", "one", "whitespace"],
)
def test_element_takes_the_puppet_packages(settings, packages):
    result = element_packages(**settings)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"[{packages}]\n"
    assert result.stderr == ""
    # Sourced again with what the first one exported: the same.
    again = element_packages(DIB_MOZ_PUPPET_PACKAGES=packages)
    assert again.stdout == result.stdout


@pytest.mark.parametrize(
    "value,bad",
    [
        ("Puppet-Module-Puppetlabs-Apache", "Puppet-Module-Puppetlabs-Apache"),
        ("puppet-module-puppetlabs-apache x", "x"),  # one character
        ("-o", "-o"),  # an apt option
        ("--allow-unauthenticated puppet", "--allow-unauthenticated"),
        ("puppet-module-puppetlabs-apache=5.5.0-2", "puppet-module-puppetlabs-apache=5.5.0-2"),
        ("puppet-module-puppetlabs-apache/bookworm", "puppet-module-puppetlabs-apache/bookworm"),
        ("puppet-module-puppetlabs-apache:amd64", "puppet-module-puppetlabs-apache:amd64"),
        ("puppet,r10k", "puppet,r10k"),
        ("puppet;reboot", "puppet;reboot"),
        ("$(reboot)", "$(reboot)"),
        ("puppet*", "puppet*"),
        (".hidden", ".hidden"),
        ("puppet_module", "puppet_module"),
    ],
)
def test_element_refuses_a_bad_package_name(value, bad):
    result = element_packages(DIB_MOZ_PUPPET_PACKAGES=value)
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        f"ERROR: mozagent element: DIB_MOZ_PUPPET_PACKAGES: '{bad}' is not a Debian package name"
        in result.stderr
    ), result.stderr


def test_build_refuses_a_bad_package_name_before_building(env):
    result = env.run("--no-upload", DIB_MOZ_PUPPET_PACKAGES="puppet-module-puppetlabs-apache Bad")
    assert result.returncode == 2
    assert "DIB_MOZ_PUPPET_PACKAGES: 'Bad' is not a Debian package name" in result.stderr
    assert "the mozagent element refused its settings" in result.stderr
    assert env.dib_calls() == []
    dry_run = env.run("--dry-run", "--no-upload", DIB_MOZ_PUPPET_PACKAGES="-y")
    assert dry_run.returncode == 2 and "'-y' is not a Debian package name" in dry_run.stderr


@pytest.mark.parametrize(
    "settings,packages",
    [
        ({}, DEFAULT_PUPPET_PACKAGES),
        ({"DIB_MOZ_PUPPET_PACKAGES": ""}, ""),
        (
            {"DIB_MOZ_PUPPET_PACKAGES": "puppet-module-puppetlabs-ntp\n  r10k"},
            "puppet-module-puppetlabs-ntp r10k",
        ),
    ],
    ids=["default", "none", "chosen"],
)
def test_build_passes_the_puppet_packages(env, settings, packages):
    fields = dry(env.run("--dry-run", "--no-upload", **settings))
    assert fields["puppet packages"] == packages
    result = env.run("--no-upload", **settings)
    assert result.returncode == 0, result.stderr
    [call] = env.dib_calls()
    assert call["env"]["DIB_MOZ_PUPPET_PACKAGES"] == packages
    # And diskimage-builder's own sourcing of environment.d keeps it.
    assert element_packages(DIB_MOZ_PUPPET_PACKAGES=packages).stdout == f"[{packages}]\n"


def _run_packages_hook(tmp_path: Path, packages: str) -> tuple[subprocess.CompletedProcess, Path]:
    """install.d/54 with stand-ins for diskimage-builder's install-packages
    and dpkg-query; what install-packages was called with goes to the log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "install-packages.log"
    (bin_dir / "install-packages").write_text(
        f'#!/bin/sh\n{{ printf "[%s]" "$@"; echo; }} >> {log}\n'
    )
    (bin_dir / "dpkg-query").write_text(
        "#!/bin/sh\n"
        "echo 'installed puppet-module-puppetlabs-stdlib 8.5.0-1'\n"
        "echo 'not-installed puppet-module-puppetlabs-ntp '\n"
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DIB_MOZ_PUPPET_PACKAGES": packages}
    result = subprocess.run(
        [str(PACKAGES_HOOK)], env=env, capture_output=True, text=True, timeout=60
    )
    return result, log


def test_packages_hook_installs_the_packages(tmp_path):
    result, log = _run_packages_hook(tmp_path, DEFAULT_PUPPET_PACKAGES)
    assert result.returncode == 0, result.stderr
    # One install-packages call, each name a word of its own.
    assert log.read_text() == (
        "[puppet-module-puppetlabs-apache][puppet-module-puppetlabs-mysql]\n"
    )
    assert "    puppet-module-puppetlabs-stdlib 8.5.0-1\n" in result.stdout
    assert "puppetlabs-ntp" not in result.stdout  # not installed


def test_packages_hook_without_packages_installs_nothing(tmp_path):
    result, log = _run_packages_hook(tmp_path, "")
    assert result.returncode == 0, result.stderr
    assert not log.exists()
    assert "no puppet module packages to install" in result.stdout


def test_packages_are_installed_before_the_puppetfile_is_resolved():
    """install.d runs in name order: package-installs' own 01, the agent's
    venv, the module packages, then the tree whose Puppetfile needs them."""
    hooks = sorted(p.name for p in (ELEMENT / "install.d").iterdir())
    assert hooks.index(PACKAGES_HOOK.name) + 1 == hooks.index("55-mozagent-puppet-tree")
    assert PACKAGES_HOOK.name > "01-package-installs"
    assert 'install-packages "${packages[@]}"' in PACKAGES_HOOK.read_text()


# --- upload -----------------------------------------------------------------------------


def test_upload_refuses_without_credentials(env):
    result = env.run(**env.with_fake_sdk())
    assert result.returncode == 2
    assert "no OpenStack credentials" in result.stderr
    for hint in ("OS_CLOUD", "MOZ_KEYSTONE_PROFILE_PATH", "--no-upload"):
        assert hint in result.stderr
    assert env.dib_calls() == []  # refused before building


def test_upload_refuses_an_unreadable_profile(env, tmp_path):
    result = env.run(MOZ_KEYSTONE_PROFILE_PATH=tmp_path / "no-such-rc", **env.with_fake_sdk())
    assert result.returncode == 2
    assert "MOZ_KEYSTONE_PROFILE_PATH" in result.stderr and "not a readable file" in result.stderr
    assert env.dib_calls() == []


def test_upload_refuses_a_profile_without_credentials(env, tmp_path):
    rc = tmp_path / "rc"
    rc.write_text("export OS_REGION_NAME=RegionOne\n")
    result = env.run(MOZ_KEYSTONE_PROFILE_PATH=rc, **env.with_fake_sdk())
    assert result.returncode == 2
    assert "no OpenStack credentials" in result.stderr


def test_upload_needs_openstacksdk(env, tmp_path):
    no_sdk = tmp_path / "no_sdk"
    no_sdk.mkdir()
    (no_sdk / "openstack.py").write_text("raise ImportError('openstacksdk is not here')\n")
    result = env.run(OS_CLOUD="mycloud", PYTHONPATH=no_sdk)
    assert result.returncode == 2
    assert "openstacksdk is not importable" in result.stderr
    assert env.dib_calls() == []


def test_tar_images_are_not_uploaded(env):
    result = env.run(OS_CLOUD="mycloud", MOZ_DIB_IMAGE_TYPE="tar", **env.with_fake_sdk())
    assert result.returncode == 2
    assert "cannot be uploaded to Glance" in result.stderr


def test_upload_with_keystone_profile(env, tmp_path):
    rc = tmp_path / "keystone_my_user"
    rc.write_text(RC_FILE)
    result = env.run(MOZ_KEYSTONE_PROFILE_PATH=rc, **env.with_fake_sdk())
    assert result.returncode == 0, result.stderr
    name = "debian-bookworm.amd64-0.1.0-2014073016"
    glance = env.glance()
    [image] = glance["images"]
    assert image["name"] == name
    assert image["status"] == "active"
    assert image["disk_format"] == "qcow2" and image["container_format"] == "bare"
    assert image["properties"] == {
        "os_distro": "debian",
        "os_release": "bookworm",
        "architecture": "x86_64",
        "mozpuppet_ref": "0.1.0",
    }
    # The rc file's credentials were used, and only for the upload.
    assert {c["OS_AUTH_URL"] for c in glance["connects"]} == {
        "https://keystone.example.invalid:5000/v3"
    }
    assert not any(k.startswith("OS_") for k in env.dib_calls()[0]["env"])
    # Checksums were computed and sent.
    [create] = glance["creates"]
    assert create["md5"] == image["checksum"] and create["wait"] is True
    assert "uploaded" in result.stderr


def test_upload_with_environment_credentials(env):
    result = env.run(OS_CLOUD="mycloud", **env.with_fake_sdk())
    assert result.returncode == 0, result.stderr
    assert env.glance()["connects"][0]["OS_CLOUD"] == "mycloud"


def test_name_taken_in_glance_is_not_reused(env):
    assert env.run(OS_CLOUD="mycloud", **env.with_fake_sdk()).returncode == 0
    shutil.rmtree(env.out)  # another build machine made the first one
    result = env.run(OS_CLOUD="mycloud", **env.with_fake_sdk())
    assert result.returncode == 0, result.stderr
    names = [i["name"] for i in env.glance()["images"]]
    assert names == [
        "debian-bookworm.amd64-0.1.0-2014073016",
        "debian-bookworm.amd64-0.1.0-2014073016-2",
    ]


def test_checksum_mismatch_fails_and_deletes_the_image(env):
    result = env.run(OS_CLOUD="mycloud", FAKE_GLANCE_CORRUPT="1", **env.with_fake_sdk())
    assert result.returncode == 1
    assert "checksum" in result.stderr and "upload of" in result.stderr
    glance = env.glance()
    assert glance["images"] == [] and len(glance["deletes"]) == 1
    assert (env.out / "debian-bookworm.amd64-0.1.0-2014073016.qcow2").is_file()


def test_image_that_does_not_become_active_fails(env):
    result = env.run(OS_CLOUD="mycloud", FAKE_GLANCE_STATUS="killed", **env.with_fake_sdk())
    assert result.returncode == 1
    assert "killed" in result.stderr
    assert env.glance()["images"] == []


def test_bad_credentials_fail_before_building(env):
    result = env.run(
        OS_AUTH_URL="https://keystone.example.invalid/v3",
        OS_PASSWORD="wrong",
        **env.with_fake_sdk(),
    )
    assert result.returncode == 1
    assert "cannot authenticate" in result.stderr
    assert env.dib_calls() == []


# --- the uploader on its own -------------------------------------------------------------


def uploader(env: Env, *args: str, **overrides) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in env.base.items() if k != "PYTHONPATH"}
    run_env.update(PYTHONPATH=str(FAKE_OPENSTACK), OS_CLOUD="mycloud")
    run_env.update({k: str(v) for k, v in overrides.items()})
    return subprocess.run(
        [sys.executable, str(UPLOADER), *args],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def upload(env: Env, image: Path, *extra: str, **overrides) -> subprocess.CompletedProcess:
    """glance-upload.py upload of ``image`` as "x", qcow2."""
    args = ("upload", "--name", "x", "--file", str(image), "--disk-format", "qcow2", *extra)
    return uploader(env, *args, **overrides)


def test_uploader_check_and_upload(env, tmp_path):
    image = tmp_path / "x.qcow2"
    image.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    assert uploader(env, "check", "--name", "x").returncode == 0
    result = upload(env, image, "--property", "a=b=c", "--poll", "0.01")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "active" and summary["name"] == "x"
    assert env.glance()["images"][0]["properties"] == {"a": "b=c"}
    taken = uploader(env, "check", "--name", "x")
    assert taken.returncode == 3 and "taken" in taken.stderr
    again = upload(env, image)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_uploader_without_credentials(env, tmp_path):
    image = tmp_path / "x.qcow2"
    image.write_bytes(b"x")
    result = upload(env, image, OS_CLOUD="")
    assert result.returncode == 2
    assert "no OpenStack credentials" in result.stderr
    assert env.glance()["connects"] == []


def test_uploader_keeps_a_bad_image_on_request(env, tmp_path):
    image = tmp_path / "x.qcow2"
    image.write_bytes(b"payload")
    result = upload(env, image, "--keep-bad", FAKE_GLANCE_CORRUPT="1")
    assert result.returncode == 1
    assert "os_hash_value" in result.stderr
    assert len(env.glance()["images"]) == 1


# --- element and unit, statically -------------------------------------------------------


def test_element_layout():
    assert (ELEMENT / "README.rst").is_file()
    assert "package-installs" in (ELEMENT / "element-deps").read_text().split()
    packages = yaml.safe_load((ELEMENT / "package-installs.yaml").read_text())
    for package in ("puppet", "git", "librarian-puppet", "r10k", "python3-venv"):
        assert package in packages
    hooks = [
        p for d in ("extra-data.d", "install.d", "post-install.d") for p in (ELEMENT / d).iterdir()
    ]
    assert hooks
    for hook in hooks:
        assert os.access(hook, os.X_OK), f"{hook} is not executable"
        assert hook.read_text().startswith("#!/bin/bash\n")
        assert "set -euo pipefail" in hook.read_text()


def _unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit():
    unit = _unit_sections(UNIT.read_text())
    svc, deps, install = unit["Service"], unit["Unit"], unit["Install"]
    assert svc["Type"] == ["notify"]
    assert svc["NotifyAccess"] == ["main"]
    assert svc["WatchdogSec"] == ["120s"]
    assert svc["Restart"] == ["on-failure"]
    assert svc["RestartSec"] and svc["RestartSec"][0] != "0"
    assert svc["ExecStart"] == ["/usr/local/bin/mozagent daemon"]
    assert "MOZAGENT_CONFIG=/etc/mozagent/mozagent.yaml" in svc["Environment"]
    assert svc["StandardOutput"] == ["journal"]
    after = " ".join(deps["After"]).split()
    assert {"network-online.target", "cloud-init.service", "cloud-config.service"} <= set(after)
    # cloud-final is ordered after multi-user.target: ordering on it would be a cycle.
    assert "cloud-final.service" not in after
    assert "network-online.target" in " ".join(deps["Wants"])
    assert install["WantedBy"] == ["multi-user.target"]
    # Hardening that would stop puppet from configuring the host is absent.
    for option in (
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "NoNewPrivileges",
        "ReadOnlyPaths",
        "CapabilityBoundingSet",
        "PrivateDevices",
    ):
        assert option not in svc


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    # Only the agent's binary may be missing on a machine without mozagent installed.
    problems = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "/usr/local/bin/mozagent" not in line
    ]
    assert problems == [], result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean():
    hooks = sorted(
        p
        for d in ("extra-data.d", "install.d", "post-install.d", "environment.d")
        for p in (ELEMENT / d).iterdir()
    )
    scripts = [BUILD_IMAGE, *hooks]
    result = subprocess.run(
        ["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout
