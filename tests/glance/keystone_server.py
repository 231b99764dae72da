"""Serve Keystone's public WSGI application with waitress on HOST PORT.

Run by Debian's /usr/bin/python3 (which has keystone and waitress), with
OS_KEYSTONE_CONFIG_FILES naming the keystone.conf to use.  waitress, not
uwsgi --http-socket: the latter drops keep-alive connections, which python
clients see as random "connection reset" failures.
"""

import sys

host, port = sys.argv[1], int(sys.argv[2])
# Keystone's application factory parses sys.argv with oslo.config.
sys.argv = sys.argv[:1]

import waitress  # noqa: E402
from keystone.server.wsgi import initialize_public_application  # noqa: E402

waitress.serve(initialize_public_application(), host=host, port=port, threads=4)
