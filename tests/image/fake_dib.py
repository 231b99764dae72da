"""A stand-in for ``disk-image-create``, for tests of tools/build-image that need
no real build: it reads ``-o``/``-t``/``-a`` as diskimage-builder does, then runs
the test's own ``body`` with ``$out``, ``$type`` and ``$args`` set."""

from __future__ import annotations

import stat
from pathlib import Path

HEADER = """#!/bin/bash
set -euo pipefail
out="" type=""
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out=$2; shift ;;
        -t) type=$2; shift ;;
        -a) shift ;;
    esac
    shift
done
"""


def write_fake_dib(path: Path, body: str) -> Path:
    path.write_text(HEADER + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path
