"""The app's database: MariaDB over its Unix socket, as the app's OS user
(``unix_socket`` authentication: no password exists), and its migrations.

A migration is applied once, in order, and recorded in the same database, so
running them again (every install, the ``migrate`` order) does nothing new.
"""

from __future__ import annotations

import os
from typing import Any

import pymysql

SOCKET = os.environ.get("WEBAPP_DB_SOCKET", "/run/mysqld/mysqld.sock")
NAME = os.environ.get("WEBAPP_DB_NAME", "webapp")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        "CREATE TABLE visits (id INT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP"
        " DEFAULT CURRENT_TIMESTAMP)",
    ),
    (2, "CREATE TABLE cache (k VARCHAR(200) PRIMARY KEY, v TEXT)"),
]


def connect() -> Any:
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    return pymysql.connect(unix_socket=SOCKET, user=user, database=NAME, autocommit=True)


def migrate(conn: Any) -> list[int]:
    """Apply the migrations not applied yet; the ones applied now."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY)")
        cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        applied = []
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            cur.execute(sql)
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def schema_version(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(cur.fetchone()[0])


def visit(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO visits () VALUES ()")
        cur.execute("SELECT COUNT(*) FROM visits")
        return int(cur.fetchone()[0])


def clear_cache(conn: Any) -> int:
    with conn.cursor() as cur:
        return int(cur.execute("DELETE FROM cache"))
