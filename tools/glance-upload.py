#!/usr/bin/env python3
"""Upload a built image to Glance with openstacksdk, and check it landed.

Used by tools/build-image; runs with any Python 3 that can import
openstacksdk (the distribution's python3-openstacksdk or a virtualenv).
Credentials come from the environment as openstacksdk reads them: OS_CLOUD
(clouds.yaml) or the OS_* variables of a keystone rc file.

    glance-upload.py check --name NAME
        authenticate; exit 0 if no image is called NAME, 3 if one is.
    glance-upload.py upload --name NAME --file PATH --disk-format qcow2 \
            [--container-format bare] [--property KEY=VALUE ...]
        upload, wait for status "active", then compare Glance's checksum
        (md5), os_hash_value (os_hash_algo, sha512 by default) and size with
        the local file.  A mismatch deletes the image and exits 1.

Exit status: 0 ok, 1 failure, 2 usage or missing credentials/openstacksdk,
3 (check) the name is taken.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import NoReturn

EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_TAKEN = 3
CHUNK = 1024 * 1024


class UploadError(Exception):
    """The upload failed or the uploaded image does not match the file."""


def fail(message: str, status: int = EXIT_FAIL) -> NoReturn:
    print(f"glance-upload: error: {message}", file=sys.stderr)
    sys.exit(status)


def have_credentials(environ=os.environ) -> bool:
    return bool(environ.get("OS_CLOUD") or environ.get("OS_AUTH_URL"))


def connect():
    if not have_credentials():
        fail(
            "no OpenStack credentials: set OS_CLOUD or the OS_* variables "
            "(e.g. source a keystone rc file)",
            EXIT_USAGE,
        )
    try:
        import openstack
    except ImportError:
        fail(f"openstacksdk is not importable by {sys.executable}", EXIT_USAGE)
    try:
        conn = openstack.connect()
        conn.authorize()
    except Exception as exc:  # keystoneauth and sdk raise many kinds
        fail(f"cannot authenticate to OpenStack: {exc}")
    return conn


def file_digests(path: str, algos=("md5", "sha256", "sha512")) -> dict[str, str]:
    hashes = {name: hashlib.new(name) for name in algos}
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            for h in hashes.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashes.items()}


def attr(obj, name):
    try:
        return getattr(obj, name)
    except (AttributeError, KeyError):
        return None


def images_named(conn, name: str) -> list:
    return [img for img in conn.image.images(name=name) if attr(img, "name") == name]


def wait_active(conn, image, timeout: float, poll: float):
    deadline = time.monotonic() + timeout
    while True:
        image = conn.image.get_image(attr(image, "id"))
        status = attr(image, "status")
        if status == "active":
            return image
        if status in ("killed", "deleted", "deactivated"):
            raise UploadError(f"image {attr(image, 'id')} went to status {status!r}")
        if time.monotonic() >= deadline:
            raise UploadError(f"image {attr(image, 'id')} still {status!r} after {timeout:.0f}s")
        time.sleep(poll)


def verify(image, path: str, digests: dict[str, str]) -> list[str]:
    """What differs between the Glance image and the local file (empty: all good)."""
    problems = []
    if attr(image, "status") != "active":
        problems.append(f"status is {attr(image, 'status')!r}, not 'active'")
    size = os.path.getsize(path)
    if attr(image, "size") is not None and int(attr(image, "size")) != size:
        problems.append(f"size {attr(image, 'size')} != local {size}")
    checksum = attr(image, "checksum")
    algo = attr(image, "hash_algo")
    value = attr(image, "hash_value")
    if not checksum and not value:
        problems.append("Glance reports no checksum for the image")
    if checksum and checksum != digests["md5"]:
        problems.append(f"checksum {checksum} != local md5 {digests['md5']}")
    if algo and value:
        local = digests.get(algo)
        if local is None:
            local = file_digests(path, (algo,))[algo]
        if value != local:
            problems.append(f"os_hash_value {value} != local {algo} {local}")
    return problems


def parse_properties(items: list[str]) -> dict[str, str]:
    props = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--property needs KEY=VALUE, got {item!r}", EXIT_USAGE)
        props[key] = value
    return props


def cmd_check(args) -> int:
    conn = connect()
    taken = images_named(conn, args.name)
    if taken:
        ids = ", ".join(str(attr(i, "id")) for i in taken)
        print(f"glance-upload: image name {args.name!r} is taken ({ids})", file=sys.stderr)
        return EXIT_TAKEN
    return 0


def cmd_upload(args) -> int:
    if not os.path.isfile(args.file):
        fail(f"{args.file}: no such file", EXIT_USAGE)
    props = parse_properties(args.property)
    conn = connect()
    if images_named(conn, args.name):
        fail(f"an image called {args.name!r} already exists in Glance")
    digests = file_digests(args.file)
    print(f"glance-upload: uploading {args.file} as {args.name!r}", file=sys.stderr)
    image = None
    try:
        image = conn.image.create_image(
            name=args.name,
            filename=args.file,
            disk_format=args.disk_format,
            container_format=args.container_format,
            md5=digests["md5"],
            sha256=digests["sha256"],
            allow_duplicates=True,
            wait=True,
            timeout=args.timeout,
            **props,
        )
        if image is None:
            raise UploadError("openstacksdk returned no image")
        image = wait_active(conn, image, args.timeout, args.poll)
        problems = verify(image, args.file, digests)
        if problems:
            raise UploadError("; ".join(problems))
    except Exception as exc:
        if image is not None and attr(image, "id") and not args.keep_bad:
            try:
                conn.image.delete_image(attr(image, "id"), ignore_missing=True)
                print(f"glance-upload: deleted bad image {attr(image, 'id')}", file=sys.stderr)
            except Exception as del_exc:  # report both
                print(
                    f"glance-upload: could not delete {attr(image, 'id')}: {del_exc}",
                    file=sys.stderr,
                )
        fail(f"upload of {args.name!r} failed: {exc}")
    print(
        json.dumps(
            {
                "id": attr(image, "id"),
                "name": attr(image, "name"),
                "status": attr(image, "status"),
                "checksum": attr(image, "checksum"),
                "os_hash_algo": attr(image, "hash_algo"),
                "os_hash_value": attr(image, "hash_value"),
                "size": attr(image, "size"),
            }
        )
    )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="glance-upload.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="exit 3 if an image has this name")
    check.add_argument("--name", required=True)
    check.set_defaults(func=cmd_check)
    up = sub.add_parser("upload", help="upload and verify an image")
    up.add_argument("--name", required=True)
    up.add_argument("--file", required=True)
    up.add_argument("--disk-format", required=True)
    up.add_argument("--container-format", default="bare")
    up.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    up.add_argument("--timeout", type=float, default=3600.0)
    up.add_argument("--poll", type=float, default=5.0)
    up.add_argument(
        "--keep-bad",
        action="store_true",
        help="keep an image that fails verification (for inspection)",
    )
    up.set_defaults(func=cmd_upload)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
