"""The app's commands (``bin/commands.procfile``): what an operator runs on
its hosts with ``mozagent order``."""

from __future__ import annotations

import json
import os
import sys

from webapp import db

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str]) -> int:
    if argv == ["version"]:
        with open(os.path.join(HERE, "release.json"), encoding="utf-8") as fh:
            release = json.load(fh)
        with db.connect() as conn:
            print(
                f"release {release['ref']} ({release['commit'][:12]}),"
                f" schema {db.schema_version(conn)}"
            )
        return 0
    if argv == ["migrate"]:
        with db.connect() as conn:
            applied = db.migrate(conn)
            print(
                f"applied migrations {applied}" if applied else "no migration to apply",
                f"(schema {db.schema_version(conn)})",
            )
        return 0
    if argv == ["clear_cache"]:
        with db.connect() as conn:
            print(f"cleared {db.clear_cache(conn)} cache entries")
        return 0
    print("usage: manage.py version | migrate | clear_cache", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
