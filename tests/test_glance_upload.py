"""tools/glance-upload.py and tools/build-image's upload against a real
Keystone and a real Glance (Debian bookworm's packages) on 127.0.0.1.

The servers run from the system's packages with sqlite and a file store in
a temp dir (tests/glance/cloud.py); the uploader runs with Debian's
/usr/bin/python3 and its python3-openstacksdk.  What landed in Glance is
checked over Glance's own API (download and hash), not through openstacksdk.
Only diskimage-builder is replaced, by a script that writes the image file
(tools/build-image's MOZ_DIB_DISK_IMAGE_CREATE).

Needs root and: apt-get install python3-keystone python3-glance
python3-openstacksdk python3-waitress (qemu-utils for a qcow2 image; raw
otherwise).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.glance.cloud import PACKAGES, PYTHON, CloudError, LocalCloud, free_port, missing
from tests.image.fake_dib import write_fake_dib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
UPLOADER = REPO / "tools" / "glance-upload.py"
BUILD_IMAGE = REPO / "tools" / "build-image"
MIB = 1024 * 1024
EPOCH = calendar.timegm((2014, 7, 30, 16, 25, 0))
BASE_NAME = "debian-bookworm.amd64-0.1.0-2014073016"

# The per-test timeout covers the module fixture's start (about 10-20 s) too.
pytestmark = [pytest.mark.glance, pytest.mark.timeout(600)]

# Writes <-o>.<-t> from $FAKE_DIB_SOURCE, in place of a real build.
FAKE_DIB_BODY = """echo "$out" >> "$FAKE_DIB_LOG"
if [ "$type" = raw ]; then
    cp "$FAKE_DIB_SOURCE" "$out.raw"
else
    qemu-img convert -f raw -O "$type" "$FAKE_DIB_SOURCE" "$out.$type"
fi
"""


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> Iterator[LocalCloud]:
    if os.geteuid() != 0:
        pytest.skip("the Keystone + Glance test needs root (keystone-manage key setup as root)")
    lacking = missing()
    if lacking:
        pytest.fail(
            f"missing {', '.join(lacking)}: apt-get install {' '.join(PACKAGES)} "
            "(tools/install-deps --test)"
        )
    cloud = LocalCloud(tmp_path_factory.mktemp("cloud"))
    try:
        cloud.start()
    except CloudError as exc:
        pytest.fail(f"Keystone/Glance did not start: {exc}")
    yield cloud
    cloud.stop()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any credentials or settings of the caller."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("OS_", "MOZ_", "DIB_", "PYTHON", "VIRTUAL_ENV", "SOURCE_DATE_EPOCH", "ELEMENTS_PATH")
        )
    }
    env.update(extra)
    return env


def uploader(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(UPLOADER), *args], env=env, capture_output=True, text=True, timeout=180
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def digests(data: bytes) -> dict[str, str]:
    return {
        "md5": hashlib.md5(data).hexdigest(),
        "sha512": hashlib.sha512(data).hexdigest(),
    }


def assert_landed(cloud: LocalCloud, name: str, path: Path, disk_format: str) -> dict:
    """The one image called name is active and holds exactly path's bytes."""
    images = cloud.images_named(name)
    assert len(images) == 1, images
    image = cloud.image(images[0]["id"])
    data = path.read_bytes()
    want = digests(data)
    assert image["status"] == "active"
    assert image["disk_format"] == disk_format
    assert image["container_format"] == "bare"
    assert image["size"] == len(data)
    assert image["checksum"] == want["md5"]
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == want["sha512"]
    assert cloud.image_data(image["id"]) == data
    return image


# --- glance-upload.py ------------------------------------------------------------------


def test_upload_lands_active_with_the_right_checksum(cloud, tmp_path):
    image_file = random_file(tmp_path / "disk.raw", 4 * MIB)
    name = unique("upload")
    result = uploader(
        "upload",
        "--name",
        name,
        "--file",
        str(image_file),
        "--disk-format",
        "raw",
        "--property",
        "mozpuppet_ref=v9",
        "--poll",
        "0.5",
        "--timeout",
        "120",
        env=clean_env(**cloud.credentials()),
    )
    assert result.returncode == 0, result.stderr
    reported = json.loads(result.stdout)
    image = assert_landed(cloud, name, image_file, "raw")
    assert reported["id"] == image["id"]
    assert reported["status"] == "active"
    assert reported["size"] == 4 * MIB
    assert reported["checksum"] == image["checksum"]
    assert reported["os_hash_value"] == image["os_hash_value"]
    assert image["mozpuppet_ref"] == "v9"


def test_upload_refuses_a_taken_name(cloud, tmp_path):
    first = random_file(tmp_path / "first.raw", MIB)
    second = random_file(tmp_path / "second.raw", MIB)
    name = unique("taken")
    env = clean_env(**cloud.credentials())
    args = ("--disk-format", "raw", "--poll", "0.5", "--timeout", "120")
    assert uploader("upload", "--name", name, "--file", str(first), *args, env=env).returncode == 0
    result = uploader("upload", "--name", name, "--file", str(second), *args, env=env)
    assert result.returncode == 1
    assert f"an image called '{name}' already exists" in result.stderr
    assert_landed(cloud, name, first, "raw")


def test_check_name(cloud, tmp_path):
    name = unique("check")
    env = clean_env(**cloud.credentials())
    free = uploader("check", "--name", name, env=env)
    assert free.returncode == 0, free.stderr
    image_file = random_file(tmp_path / "disk.raw", MIB)
    up = uploader(
        "upload", "--name", name, "--file", str(image_file), "--disk-format", "raw", env=env
    )
    assert up.returncode == 0, up.stderr
    taken = uploader("check", "--name", name, env=env)
    assert taken.returncode == 3, taken.stderr
    image_id = cloud.images_named(name)[0]["id"]
    assert f"image name '{name}' is taken ({image_id})" in taken.stderr
    # A name that only starts like a taken one is free.
    assert uploader("check", "--name", name + "-2", env=env).returncode == 0


def test_rc_file_credentials(cloud, tmp_path):
    """The OS_* variables of a sourced keystone rc file are all it needs."""
    rc = cloud.rc_file(tmp_path / "admin-openrc")
    name = unique("rc")
    image_file = random_file(tmp_path / "disk.raw", MIB)
    script = (
        f'. "$1" && "$2" "$3" upload --name {name} --file "$4" --disk-format raw --poll 0.5 && '
        f'"$2" "$3" check --name {name}'
    )
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(rc), PYTHON, str(UPLOADER), str(image_file)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 3, result.stderr
    assert_landed(cloud, name, image_file, "raw")


@pytest.mark.parametrize(
    "override",
    [{"OS_PASSWORD": "wrong"}, {"OS_USERNAME": "nobody"}, {"OS_PROJECT_NAME": "no-such-project"}],
    ids=["password", "user", "project"],
)
def test_wrong_credentials_fail_clearly(cloud, tmp_path, override):
    env = clean_env(**cloud.credentials(**override))
    check = uploader("check", "--name", unique("any"), env=env)
    assert check.returncode == 1
    assert "glance-upload: error: cannot authenticate to OpenStack" in check.stderr
    assert "Traceback" not in check.stderr
    name = unique("refused")
    image_file = random_file(tmp_path / "disk.raw", MIB)
    up = uploader(
        "upload", "--name", name, "--file", str(image_file), "--disk-format", "raw", env=env
    )
    assert up.returncode == 1
    assert "cannot authenticate to OpenStack" in up.stderr
    assert cloud.images_named(name) == []


def test_unreachable_keystone_fails_clearly(cloud):
    env = clean_env(**cloud.credentials(OS_AUTH_URL=f"http://127.0.0.1:{free_port()}/v3"))
    result = uploader("check", "--name", unique("any"), env=env)
    assert result.returncode == 1
    assert "glance-upload: error: cannot authenticate to OpenStack" in result.stderr


def test_no_credentials_is_a_usage_error():
    result = uploader("check", "--name", "anything", env=clean_env())
    assert result.returncode == 2
    assert "no OpenStack credentials" in result.stderr


# --- tools/build-image ---------------------------------------------------------------------


class Build:
    """tools/build-image with a stand-in diskimage-builder and the real cloud."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.dib_log = tmp / "dib.log"
        fake = write_fake_dib(tmp / "disk-image-create", FAKE_DIB_BODY)
        self.image_type = "qcow2" if shutil.which("qemu-img") else "raw"
        self.source = random_file(tmp / "source.raw", 3 * MIB)
        self.base = clean_env(
            MOZ_DIB_DISTRO="debian",
            MOZ_DIB_RELEASE="bookworm",
            MOZ_DIB_IMAGE_TYPE=self.image_type,
            DIB_MOZ_PUPPET_REF="0.1.0",
            DIB_MOZ_PUPPET_REMOTE="https://git.example.invalid/mozpuppet.git",
            MOZ_DIB_DISK_IMAGE_CREATE=str(fake),
            MOZ_DIB_LOCK_FILE=str(tmp / "build.lock"),
            MOZ_GLANCE_PYTHON=PYTHON,
            SOURCE_DATE_EPOCH=str(EPOCH),
            FAKE_DIB_LOG=str(self.dib_log),
            FAKE_DIB_SOURCE=str(self.source),
        )

    def run(self, output_dir: Path, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BUILD_IMAGE), "--output-dir", str(output_dir)],
            env={**self.base, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    def dib_runs(self) -> list[str]:
        if not self.dib_log.exists():
            return []
        return self.dib_log.read_text().splitlines()


def test_build_image_uploads_with_a_keystone_profile(cloud, tmp_path):
    build = Build(tmp_path)
    profile = cloud.rc_file(tmp_path / "admin-openrc")
    first = build.run(tmp_path / "out1", MOZ_KEYSTONE_PROFILE_PATH=str(profile))
    assert first.returncode == 0, first.stderr
    # The last line is "<name> <path>" (the uploader's JSON report comes before it).
    name, path = first.stdout.splitlines()[-1].split()
    assert name == BASE_NAME
    assert path == str(tmp_path / "out1" / f"{BASE_NAME}.{build.image_type}")
    assert "uploaded" in first.stderr
    image = assert_landed(cloud, name, Path(path), build.image_type)
    assert image["os_distro"] == "debian"
    assert image["os_release"] == "bookworm"
    assert image["architecture"] == "x86_64"
    assert image["mozpuppet_ref"] == "0.1.0"

    # Same hour, empty output dir: the name is taken in Glance, so -2.
    second = build.run(tmp_path / "out2", MOZ_KEYSTONE_PROFILE_PATH=str(profile))
    assert second.returncode == 0, second.stderr
    name2, path2 = second.stdout.splitlines()[-1].split()
    assert name2 == f"{BASE_NAME}-2"
    assert_landed(cloud, name2, Path(path2), build.image_type)
    assert len(build.dib_runs()) == 2


def test_build_image_with_wrong_credentials_builds_nothing(cloud, tmp_path):
    build = Build(tmp_path)
    profile = cloud.rc_file(tmp_path / "bad-openrc", OS_PASSWORD="wrong")
    result = build.run(tmp_path / "out", MOZ_KEYSTONE_PROFILE_PATH=str(profile))
    assert result.returncode == 1
    assert "glance-upload: error: cannot authenticate to OpenStack" in result.stderr
    assert "build-image: error: cannot check Glance for the name" in result.stderr
    assert build.dib_runs() == []
