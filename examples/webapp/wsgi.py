"""The sample app's WSGI entry point (mod_wsgi's ``WSGIScriptAlias``).

Its page shows what a platform operator wants to see working: a value from
the app's data in ZooKeeper (``GREETING``, which puppet renders into the
vhost's ``SetEnv``), the release serving it (written by ``bin/install``), and
the database its install script migrated.
"""

from __future__ import annotations

import html
import json
import os
import sys
from collections.abc import Callable, Iterable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from webapp import db  # noqa: E402  (the release dir is the app's path)


def _release() -> dict[str, str]:
    with open(os.path.join(HERE, "release.json"), encoding="utf-8") as fh:
        return json.load(fh)


def application(
    environ: dict[str, object], start_response: Callable[..., object]
) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    release = _release()
    greeting = str(environ.get("GREETING", "(no greeting in the app's data)"))
    with db.connect() as conn:
        visits = db.visit(conn)
        schema = db.schema_version(conn)
    doc = {
        "greeting": greeting,
        "release": release["ref"],
        "commit": release["commit"],
        "schema": schema,
        "visits": visits,
    }
    if "json" in str(environ.get("HTTP_ACCEPT", "")):
        body = json.dumps(doc).encode()
        kind = "application/json"
    else:
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in doc.items()
        )
        body = (
            "<!doctype html><title>webapp</title>"
            f"<h1>{html.escape(greeting)}</h1><table>{rows}</table>\n"
        ).encode()
        kind = "text/html; charset=utf-8"
    start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]
